"""The engine of a twin: its model and tokenizer with the training renderer -- prompts exactly as training
renders them, likelihoods of continuations (each as if alone after its prompt), and generation. Loaded from a
run directory by `load_engine`; used through twin/api.py (Twin) and twin/targets.py, never from outside twin/."""

from __future__ import annotations

import dataclasses

import torch

from usertwin.atomic import recover_dir
from usertwin.config import AUTO, DECODES, PREFILLS, Config, GenerateSettings
from usertwin.data import choices
from usertwin.data.facts import rating_distribution
from usertwin.errors import UsertwinError
from usertwin.model.load import causal_lm, load_model
from usertwin.rundir import RunDir
from usertwin.sequences.fit import Prompt, build_prompt
from usertwin.text.render import Renderer
from usertwin.text.tokens import ItemLengths, SequenceEncoder, load_tokenizer
from usertwin.twin import prefix
from usertwin.twin.prefix import shared_groups
from usertwin.twin.sampling import GiveUp, RepetitionPenalty, SeededSampler, until_end
from usertwin.twin.stream import Tap


def load_twin_model(cfg: Config, run_dir=None, merge: bool = True, device: str | None = None,
                    progress: bool = True):
    """The run's best weights (adapter on its base model, or full weights), else the base model. An adapter
    is merged into the weights (`merge`): inference then runs the base model's own layers, with no LoRA
    matmuls beside every projection. `device`: default the GPU when there is one. `progress`: transformers'
    loading bars."""
    from usertwin import quiet

    with quiet.loading_bars(progress):
        return _load_twin_model(cfg, run_dir, merge, device)


def _load_twin_model(cfg: Config, run_dir, merge: bool, device: str | None):
    best = recover_dir(RunDir(run_dir).best) if run_dir else None
    # sdpa: scoring passes its own block masks, which flash kernels do not take
    load = dict(attention="sdpa", trust_remote_code=cfg.trust_remote_code)
    if best is not None and (best / "adapter_config.json").is_file():
        from peft import PeftModel

        from usertwin import quiet

        with quiet.warning_hidden(FutureWarning, quiet.GRADIENT_CHECKPOINTING_DEPRECATED):
            model = PeftModel.from_pretrained(load_model(cfg.model, cfg.dtype, **load), str(best))
        if merge:
            model = model.merge_and_unload()
    elif best is not None and (best / "config.json").is_file():
        model = load_model(str(best), cfg.dtype, **load)
    elif run_dir:
        raise UsertwinError(f"{best} holds no weights: the run has not finished an evaluation yet")
    else:
        model = load_model(cfg.model, cfg.dtype, **load)
    model.eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device)


def load_engine(run_dir=None, cfg: Config | None = None, *, merge: bool = True, device: str | None = None,
                progress: bool = True, decode: str = "auto", prefill: str = "shared") -> Engine:
    """The one way a twin's model is loaded (Twin.load, predict, scenario, simulate, serve, export): the
    tokenizer the run trained with (best/ keeps it) and its best weights; without a run, the base model of
    `cfg`. `cfg`: default the run's config.yaml (a caller passes its own to override settings). `decode`: how
    generation decodes (Engine.static); `prefill`: whether scoring shares prompts' beginnings (score_many)."""
    check_choice("decode", decode, DECODES)  # before the model loads
    check_choice("prefill", prefill, PREFILLS)
    if cfg is None:
        cfg = RunDir(run_dir).load_config()
    source = RunDir(run_dir).tokenizer_source(cfg.model) if run_dir else cfg.model
    tokenizer = load_tokenizer(source, cfg.trust_remote_code)
    return Engine(cfg, load_twin_model(cfg, run_dir, merge, device, progress), tokenizer, decode=decode,
                  prefill=prefill)


def check_choice(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise UsertwinError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


@dataclasses.dataclass(frozen=True)
class Segment:
    """Tokens of a scoring forward's second part (Engine.score_blocks): they see their window's first `seen`
    tokens, the whole of segment `after` of the same block (a prompt's own tail, its candidates after it) and
    their own earlier tokens. `scored`: their log-likelihood is wanted (a candidate), not only their cache."""

    tokens: list
    seen: int
    after: int | None = None
    scored: bool = True


BLOCK_TOKENS = 1024  # shared prefill: a group's tails and candidates in one row at most this long (or a prompt's)
MIN_WIDTH = 64  # static decoding: prompt widths and batch sizes rounded up to a bucket (_bucket), widths to >= this
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_BATCH = 8  # batch_size auto on a CPU
MAX_AUTO_BATCH = 256  # past this, bigger batches no longer speed a GPU up (and one batch is lost to a kill)


def bytes_per_token(config, width: int) -> int:
    """Inference memory a token of a batch row takes: its key/value cache in every layer, a layer's
    activations at once (hidden states, attention output, the MLP's widest part), and its row of the padding
    mask (width bytes). Weights are already on the device."""
    text = getattr(config, "text_config", None) or config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    mlp = getattr(text, "moe_intermediate_size", None) or getattr(text, "intermediate_size", None) or 4 * hidden
    mlp *= getattr(text, "num_experts_per_tok", None) or 1
    element = 2 if str(getattr(text, "dtype", "bfloat16")).endswith(("16", "bfloat16")) else 4
    cache = text.num_hidden_layers * 2 * kv * head_dim * element
    return cache + (8 * hidden + 3 * mlp) * element + width


STATIC_ROWS = 64  # --decode auto: static decoding at most at this many rows a batch (plan_decode)
STATIC_STEPS = 2000  # ... and for jobs of at least this many decode steps


class Engine:
    """A model + the training renderer: prompts, likelihoods of continuations, generation."""

    def __init__(self, cfg: Config, model, tokenizer, scale: list[str] | None = None, decode: str = "auto",
                 prefill: str = "shared"):
        check_choice("decode", decode, DECODES)
        check_choice("prefill", prefill, PREFILLS)
        self.cfg, self.model, self.tokenizer, self.scale, self.decoding = cfg, model, tokenizer, scale, decode
        self.prefill = prefill  # shared: prompts that begin alike read that beginning once (score_many)
        self.last_beginning = prefix.LastBeginning()  # generation: the last user's history, read once
        self.auto_static = False  # --decode auto: whether plan_decode chose static for the job at hand
        self.vllm = None  # twin/vllm.py's VllmGeneration when generation runs on vLLM (--engine vllm)
        self.renderer = Renderer(cfg, tokenizer)
        self.encoder = SequenceEncoder(self.renderer, tokenizer)
        self.crowd = None  # crowd.Pools: other users' ratings, for crowd context (data/crowd.py)
        eot = self.renderer.fmt.eot
        ids = tokenizer(eot, add_special_tokens=False)["input_ids"] if eot else []
        self.eot_id = ids[0] if len(ids) == 1 else tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eot_id

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def static(self) -> bool:
        """Decode with a static KV cache (compiled into CUDA graphs on a GPU): --decode static, or auto where
        plan_decode found that it pays."""
        return self.decoding == "static" or (self.decoding == "auto" and self.auto_static)

    def plan_decode(self, prompts: int, gen: GenerateSettings) -> str:
        """--decode auto for a job of `prompts` prompts generated `gen.batch_size` at a time: static where it pays
        -- on a GPU, at most STATIC_ROWS rows a batch (on an H100 static decoding was 7-10x faster at batch 1,
        1.7-3x at 32, 0.91x at 256: benchmarks/results/simulate_speed_decode*_h100.md) and at least STATIC_STEPS
        decode steps in all (compiling takes 35-56 s; a step saves about 25 ms). Returns the decoding used."""
        if self.decoding != "auto":
            return self.decoding
        gen = gen.resolved()
        rows = min(prompts, gen.batch_size) * (gen.num_samples if gen.temperature > 0 else 1)
        steps = -(-prompts // gen.batch_size) * gen.max_new_tokens
        self.auto_static = self.device.type == "cuda" and rows <= STATIC_ROWS and steps >= STATIC_STEPS
        return "static" if self.auto_static else "dynamic"

    def with_batch_size(self, gen: GenerateSettings, width: int | None = None) -> GenerateSettings:
        """`gen` with a number for batch_size: auto is 8 on a CPU; on a GPU, as many prompts (each with its
        num_samples rows of `width` tokens, default max_length + max_new_tokens) as half its free memory holds."""
        if gen.batch_size != AUTO:
            return gen
        if self.device.type != "cuda":
            return dataclasses.replace(gen, batch_size=CPU_BATCH)
        width = width or self.cfg.max_length + gen.max_new_tokens
        free, _ = torch.cuda.mem_get_info(self.device)
        rows = int(0.5 * free // (width * bytes_per_token(causal_lm(self.model).config, width)))
        return dataclasses.replace(gen, batch_size=max(1, min(MAX_AUTO_BATCH, rows // gen.num_samples)))

    def target_prompt(self, tl, target: int, room: int = 0, lengths: ItemLengths | None = None) -> Prompt:
        return build_prompt(self.cfg, self.encoder, tl, target, room, lengths)

    def continuation_ids(self, text: str) -> list[int]:
        """A continuation's tokens as training sees them: the text, then the end-of-turn."""
        return self.tokenizer(text + self.renderer.fmt.eot, add_special_tokens=False)["input_ids"]

    def score(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[tuple[float, int]]:
        """(sum of log-probabilities, token count) of each candidate continuation after one prompt."""
        return self.score_many([prompt_ids], [candidates])[0]

    def score_many(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[list[tuple]]:
        """Score several prompts' candidate continuations, as if each candidate ran alone after its prompt.
        Prompts that share a beginning (one user's history asked about many items) share its forward
        (`shared_groups`): the shared tokens are a window read once, and each prompt's own tail runs in the second
        forward, its candidates after it. `Engine.prefill = "each"` gives every prompt its own window."""
        groups = (shared_groups(prompts, candidates, max(BLOCK_TOKENS, max(map(len, prompts))))
                  if self.prefill == "shared" else [(len(p), [k]) for k, p in enumerate(prompts)])
        windows, blocks = [], []
        for shared, members in groups:
            windows.append(prompts[members[0]][:shared])
            block = []
            for k in members:
                tail, after = prompts[k][shared:], None
                if tail:  # not scored itself: the prompt's own tokens that its candidates see
                    after = len(block)
                    block.append(Segment(tail, shared, scored=False))
                block += [Segment(c, shared, after) for c in candidates[k]]
            blocks.append(block)
        out = [None] * len(prompts)
        for (_, members), scores in zip(groups, self.score_blocks(windows, blocks)):
            at = 0
            for k in members:
                out[k] = scores[at:at + len(candidates[k])]
                at += len(candidates[k])
        return out

    def score_windows(self, windows: list[list[int]], groups: list[list[tuple[int, list[list[int]]]]]
                      ) -> list[list[list[tuple]]]:
        """Score candidates at points of each window, as if each candidate ran alone after its window's first
        `start` tokens: `groups[i]` holds (start, candidates) pairs of window i (score_blocks)."""
        blocks = [[Segment(c, start) for start, cands in g for c in cands] for g in groups]
        out = []
        for g, scores in zip(groups, self.score_blocks(windows, blocks)):
            k, per = 0, []
            for _, cands in g:
                per.append(scores[k:k + len(cands)])
                k += len(cands)
            out.append(per)
        return out

    @torch.no_grad()
    def score_blocks(self, windows: list[list[int]], blocks: list[list[Segment]]) -> list[list[tuple]]:
        """(sum of log-probabilities, token count) of every scored segment of each window's block, in two
        forwards. First the windows, right padded: plain causal attention needs no mask, so sdpa takes its fast
        kernels and no rows x T x T tensor is built. Then every block at once against the windows' cache: a
        small (rows x block tokens x T) mask lets each segment see its window up to `seen` (never what follows
        there), the segment it comes `after` and its own earlier tokens, with positions continuing from there."""
        lm = causal_lm(self.model)
        backbone, dev = getattr(lm, lm.base_model_prefix), self.device
        lens = [len(w) for w in windows]
        ids = torch.full((len(windows), max(lens)), self.pad_id, dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, :len(w)] = torch.tensor(w)
        first = backbone(input_ids=ids.to(dev), use_cache=True)
        starts = [_offsets(block) for block in blocks]
        cids, cpos, mask = _block_rows(blocks, starts, max(lens), self.pad_id,
                                       lm.get_output_embeddings().weight.dtype)
        second = backbone(input_ids=cids.to(dev), position_ids=cpos.to(dev), attention_mask=mask.to(dev),
                          use_cache=True, **_cache_arg(backbone, first))
        t, width = ids.shape[1], cids.shape[1]
        where = [_predictor(i, t, width, block, at, k, j) + (tok,)
                 for i, (block, at) in enumerate(zip(blocks, starts))
                 for k, seg in enumerate(block) if seg.scored for j, tok in enumerate(seg.tokens)]
        picked = self._log_probs(lm, (first.last_hidden_state, second.last_hidden_state), where)
        out, k = [], 0
        for block in blocks:
            row = []
            for seg in block:
                if seg.scored:
                    row.append((sum(picked[k:k + len(seg.tokens)]), len(seg.tokens)))
                    k += len(seg.tokens)
            out.append(row)
        return out

    @staticmethod
    def _log_probs(lm, states: tuple, where: list) -> list[float]:
        """log p(token) for each (forward, flat position, token) of `where`: only those hidden states go through
        the output head."""
        flat = [h.reshape(-1, h.shape[-1]) for h in states]
        dev = flat[0].device
        order = sorted(range(len(where)), key=lambda k: where[k][0])
        hidden = torch.cat([flat[src][torch.tensor([where[k][1] for k in order if where[k][0] == src],
                                                   dtype=torch.long, device=dev)] for src in range(len(flat))])
        toks = torch.tensor([where[k][2] for k in order], device=dev)
        logits = lm.get_output_embeddings()(hidden).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        got = torch.log_softmax(logits, dim=-1).gather(1, toks[:, None])[:, 0].double().cpu().tolist()
        picked = [0.0] * len(where)
        for k, value in zip(order, got):
            picked[k] = value
        return picked

    def rating_distribution(self, prompt_ids: list[int]) -> dict:
        scores = [s for s, _ in self.score(prompt_ids, [self.continuation_ids(t) for t in self.scale])]
        return self.distribution(scores)

    def distribution(self, scores: list[float]) -> dict:
        """Normalised probabilities of the allowed ratings from their log-likelihoods."""
        return rating_distribution(self.scale, scores)

    def rating_distributions(self, prompts: list[list[int]]) -> list[dict]:
        """The allowed ratings' probabilities after each prompt, all prompts in one forward."""
        scale = [self.continuation_ids(t) for t in self.scale]
        return [self.distribution([s for s, _ in row]) for row in self.score_many(prompts, [scale] * len(prompts))]

    def choice_distributions(self, prompts: list[list[int]], items: list) -> list[dict]:
        """Each prompt's choice item (`choices.Choice`): every option's continuation log-likelihood, all
        prompts and options in one forward, normalised to probabilities summing to 1 (`choices.distribution`)."""
        scored = self.score_many(prompts, [[self.continuation_ids(o) for o in c.options] for c in items])
        return [choices.distribution(c, [s for s, _ in row]) for c, row in zip(items, scored)]

    def generate_texts(self, prompts: list[list[int]], gen: GenerateSettings, seeds: list[int] | None = None,
                       stream: list | None = None, gone: list | None = None,
                       running: int | None = None) -> list[list[str]]:
        """`gen.num_samples` texts per prompt (see generate_ids), decoded without the end-of-turn. vLLM batches
        continuously by itself (`running` is for usertwin's engine)."""
        if self.vllm is not None:
            return self.vllm.generate_texts(prompts, gen, seeds, stream)
        return [[self.decode(ids) for ids in row]
                for row in self.generate_ids(prompts, gen, seeds, stream, gone, running)]

    def save_pretrained(self, tmp, dtype: str = "auto") -> torch.dtype:
        """The model and tokenizer as a plain transformers folder in `dtype` (auto: what the base model
        declares), its generation stopping where the twin's turn ends, as usertwin's own generation does.
        `tmp`: a temporary folder the caller renames when complete. Returns the dtype written."""
        target = _save_dtype(self.model, dtype)
        self.model.to(target)
        tok = self.tokenizer
        ends = [self.eot_id] + ([tok.eos_token_id] if tok.eos_token_id not in (None, self.eot_id) else [])
        self.model.generation_config.eos_token_id = ends if len(ends) > 1 else ends[0]
        self.model.generation_config.pad_token_id = self.pad_id
        self.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return target

    def decode(self, ids: list[int]) -> str:
        """The text of generated ids up to the end of turn. A text that max_new_tokens cut may end inside a
        character (byte-level tokens): those last bytes are dropped, never written as U+FFFD."""
        ends = {self.eot_id, self.pad_id}
        cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
        text = self.tokenizer.decode(ids[:cut], skip_special_tokens=False)
        for k in range(1, min(cut, 4) + 1):  # a character is at most 4 bytes, so at most 4 tokens
            if cut < len(ids) or not text.endswith("\ufffd"):
                break
            text = self.tokenizer.decode(ids[:cut - k], skip_special_tokens=False)
        return text.strip()

    def decoder(self):
        """A continuous-batching decoder over the model (twin/continuous.py); with a static cache its rows live
        in fixed slots and each decode step is a CUDA graph on a GPU (twin/slots.py)."""
        from usertwin.twin.continuous import Decoder
        from usertwin.twin.slots import SlotDecoder

        return SlotDecoder(self) if self.static else Decoder(self)

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], gen: GenerateSettings, seeds: list[int] | None = None,
                     stream: list | None = None, gone: list | None = None,
                     running: int | None = None) -> list[list[list[int]]]:
        """The generated tokens of `gen.num_samples` samples per prompt, all rows decoded together with the KV
        cache (transformers' generate); each ends with the end-of-turn unless max_new_tokens cut it. Sample i of
        prompt j draws its tokens from seed `seeds[j] + i` alone, so it is the same in any batch and after a
        resume; without seeds, every prompt's from `gen.seed`, else from torch's global generator
        (torch.manual_seed reproduces them).
        Greedy decoding (temperature 0) generates each prompt once and repeats it; an unset temperature is
        greedy for one sample and samples for several (GenerateSettings.resolved).
        `stream`: one callable or None per sample (prompt j's sample i at j * num_samples + i), called with each
        new piece of that sample's text as it is generated (twin/stream.py); the pieces add up to its text.
        `gone`: one callable per prompt, true once nobody waits for its texts: its rows stop at the next step
        (what they generated so far is returned) and generation ends when every prompt's is.
        `running`: decode continuously, at most this many prompts' rows at once, each prompt joining when rows
        have finished (twin/continuous.py: decode_all); the same texts."""
        if running is not None:
            from usertwin.twin.continuous import decode_all

            g = gen.resolved()
            return decode_all(self.decoder(), prompts, gen, running * (g.num_samples if g.temperature > 0 else 1),
                              seeds, stream, gone)
        gen = gen.resolved()
        n = gen.num_samples if gen.temperature > 0 else 1
        rows = [p for p in prompts for _ in range(n)]
        real = len(rows)
        width = len(max(prompts, key=len))
        if self.static:  # graphs are recorded per shape: few shapes, so they are reused
            rows, width = rows + [rows[0]] * (_bucket(real) - real), max(MIN_WIDTH, _bucket(width, step=None))
        ids, mask, cache = self.laid_out(rows, width)
        width = ids.shape[1]
        processors = []
        if gen.repetition_penalty != 1.0:
            processors.append(RepetitionPenalty(gen.repetition_penalty, mask.bool()))
        if gen.temperature > 0:
            if seeds is None:
                seeds = ([gen.seed] * len(prompts) if gen.seed is not None
                         else torch.randint(0, 2**62, (len(prompts),)).tolist())
            row_seeds = [s + i for s in seeds for i in range(n)]
            row_seeds += row_seeds[:1] * (len(rows) - real)  # (the filler rows of a bucket)
            processors.append(SeededSampler(row_seeds, gen, width))
        streamer = Tap(self, stream, gen.num_samples, n) if stream and any(stream) else None
        stop = GiveUp([gone[r // n] for r in range(real)], len(rows)) if gone else None
        out = self._generate_rows(ids, mask, cache, gen.max_new_tokens, processors, streamer, stop)[:real]
        per = [out[j * n:(j + 1) * n] for j in range(len(prompts))]
        return [row * (gen.num_samples // n) for row in per]

    def laid_out(self, rows: list[list[int]], width: int, by_generate: bool = True) -> tuple:
        """(ids, attention mask, cache argument) of `rows` for generate: left padded to `width` -- or, with
        --prefill shared where rows begin alike, laid out around their groups' beginnings, read once into a
        cache (twin/prefix.py). generate's static cache is its own: it never starts from ours (`by_generate`:
        the rows go to generate, not to a continuous decoder's prefill)."""
        layout = None
        if self.prefill == "shared" and not (self.static and by_generate):
            layout = self.last_beginning.layout(rows) or (prefix.plan(rows) if len(rows) > 1 else None)
        if layout is None:
            laid = [([self.pad_id] * (width - len(p)) + p, [0] * (width - len(p)) + [1] * len(p)) for p in rows]
            cache = {}
        else:
            laid = [layout.row(k, p, self.pad_id) for k, p in enumerate(rows)]
            keyword, past = self.last_beginning.cached(self.model, layout, self.pad_id, self.device)
            cache = {keyword: past}
        ids = torch.tensor([i for i, _ in laid], device=self.device)
        return ids, torch.tensor([m for _, m in laid], device=self.device), cache

    def _generate_rows(self, ids, mask, cache: dict, max_new_tokens: int, processors, streamer=None,
                       stop=None) -> list[list[int]]:
        """Laid-out rows (laid_out) generated together; each row's new tokens up to its end of turn."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        # greedy over the sampler's one allowed token: sampling is ours (seeded per row), the loop and the KV
        # cache are transformers'; the model's own sampling defaults (top_k, ...) never apply
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, use_cache=True, temperature=None, top_p=None,
                                  top_k=None, logits_processor=LogitsProcessorList(processors or []),
                                  eos_token_id=self.eot_id, pad_token_id=self.pad_id, **cache,
                                  **({"cache_implementation": "static"} if self.static else {}),
                                  **({"streamer": streamer} if streamer is not None else {}),
                                  **({"stopping_criteria": StoppingCriteriaList([stop])} if stop else {}))
        return [until_end(row, self.eot_id, self.pad_id) for row in out[:, ids.shape[1]:].tolist()]


def _bucket(n: int, step: int | None = 64) -> int:
    """The batch size (step 64) or prompt width (step None) a static decode runs `n` at: the next power of two,
    past `step` the next multiple of it -- few shapes, so each compiled graph serves many calls; a wider static
    cache than needed costs reading its padding, at most as much again."""
    return 1 << max(0, n - 1).bit_length() if step is None or n <= step else -(-n // step) * step


def _save_dtype(model, dtype: str) -> torch.dtype:
    """auto: the dtype the base model declares (float32 when it declares none, e.g. a dequantized GGUF)."""
    if dtype != "auto":
        if dtype not in SAVE_DTYPES:
            raise UsertwinError(f"--dtype must be auto, {', '.join(SAVE_DTYPES)}; got {dtype!r}")
        return SAVE_DTYPES[dtype]
    declared = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = SAVE_DTYPES.get(declared)
    return declared if declared in SAVE_DTYPES.values() else torch.float32


def _cache_arg(backbone, out) -> dict:
    """The first forward's key/value cache as the next forward's argument: transformers renamed
    past_key_values to cache (5.2x); both spellings are in use on our machines."""
    import inspect

    if "cache" in inspect.signature(backbone.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def _offsets(block: list[Segment]) -> list[int]:
    """Where each segment starts in its block."""
    at, out = 0, []
    for seg in block:
        out.append(at)
        at += len(seg.tokens)
    return out


def _predictor(i: int, t: int, width: int, block: list[Segment], at: list[int], k: int, j: int) -> tuple:
    """(forward, flat position) of the hidden state that predicts token j of segment k of block i: for j > 0
    the segment's previous token (second forward); for j = 0 the last token of the segment it comes after, or
    without one its window's token before `seen` (first forward)."""
    if j:
        return 1, i * width + at[k] + j - 1
    seg = block[k]
    if seg.after is not None:
        return 1, i * width + at[seg.after] + len(block[seg.after].tokens) - 1
    return 0, i * t + seg.seen - 1


def _block_rows(blocks: list, starts: list, t: int, pad_id: int, dtype):
    """The second forward's input ids, position ids and additive mask (rows x 1 x C x (t + C)), t the windows'
    width: each segment sees its window's first `seen` tokens, the segment it comes after and its own earlier
    tokens; padding sees the first window token only (a row of -inf would give NaN)."""
    n = len(blocks)
    c = max(1, max((at[-1] + len(b[-1].tokens) for b, at in zip(blocks, starts) if b), default=1))
    ids = torch.full((n, c), pad_id, dtype=torch.long)
    pos = torch.zeros((n, c), dtype=torch.long)
    allowed = torch.zeros((n, c, t + c), dtype=torch.bool)
    allowed[:, :, 0] = True
    for i, (block, at) in enumerate(zip(blocks, starts)):
        for seg, a in zip(block, at):
            k, rows = len(seg.tokens), slice(a, a + len(seg.tokens))
            first = seg.seen
            if seg.after is not None:
                b, m = at[seg.after], len(block[seg.after].tokens)
                allowed[i, rows, t + b:t + b + m] = True
                first += m
            ids[i, rows] = torch.tensor(seg.tokens)
            pos[i, rows] = torch.arange(first, first + k)
            allowed[i, rows, :seg.seen] = True
            allowed[i, rows, t + a:t + a + k] = torch.ones(k, k, dtype=torch.bool).tril()
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, pos, mask[:, None]
