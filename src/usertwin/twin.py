"""A trained twin: loaded from its run directory alone, it builds prompts exactly as training renders them,
scores continuations and generates.

    twin = Twin.load("runs/quickstart", records="data/records.jsonl")   # records: to look users up by id
    twin.predict(user="12", item="Heat (1995) (Action, Crime, Thriller): ")
    twin.generate(user="12", item="Heat (1995) (Action, Crime, Thriller): ", num_samples=4, temperature=0.8, seed=1)
    twin.rating_distributions([{"user": "12", "item": "..."}, {"profile": {}, "history": [], "item": "..."}])
    twin.rating_distribution(profile={"age": 25}, history=[{"continuation_prefix": "...", "continuation": "4.0"}],
                             item="Heat (1995) (Action, Crime, Thriller): ")

What a twin needs from its training data beyond the run's config, tokenizer and weights (the rating scale
as the data writes it, the task text, the language) is saved at training time in RUN/twin.json
(`write_twin_facts`), so a twin never re-reads or re-prepares the data it was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from usertwin.atomic import recover_dir, write_json
from usertwin.config import AUTO, MAX_SAMPLES, Config, GenerateSettings, from_mapping, generate_settings_from
from usertwin.data import choices, crowd, records
from usertwin.data.prepare import fit_sample, trim_long_contexts
from usertwin.data.timeline import (
    Sample,
    Timeline,
    assign_splits,
    build_timelines,
    select_history,
)
from usertwin.errors import UsertwinError
from usertwin.rundir import RunDir
from usertwin.text.render import Renderer
from usertwin.text.tokens import ItemLengths, SequenceEncoder, load_tokenizer, measure
from usertwin.train.model import causal_lm, load_model


class PromptTooLong(UsertwinError):
    """The prompt plus the room asked for does not fit the twin's max_length, even without history."""


MAX_SCALE = 40  # more distinct numbers than this is free text that happens to be numeric, not a scale


# ---------------------------------------------------------------- what a twin keeps from its data


def rating_scale(timelines) -> list[str] | None:
    """The allowed ratings as they are written in the data (e.g. "0.5" ... "5.0"), if the data has ratings."""
    values = {}
    for tl in timelines:
        for it in tl.items:
            if it.is_rating:
                try:
                    values.setdefault(float(it.continuation), it.continuation)
                except ValueError:
                    return None
    if not values or len(values) > MAX_SCALE:
        return None
    return [values[v] for v in sorted(values)]


def _the_one(values: set):
    """The value every timeline shares, else None (then a caller must say it)."""
    return next(iter(values)) if len(values) == 1 else None


def twin_facts(prep_or_timelines) -> dict:
    """What a twin needs from the data it was trained on (a Prepared, or its timelines)."""
    timelines = getattr(prep_or_timelines, "timelines", prep_or_timelines)
    return {"rating_scale": rating_scale(timelines),
            "task": _the_one({tl.task for tl in timelines}),
            "language": _the_one({tl.language for tl in timelines}),
            "role": _the_one({tl.role for tl in timelines}) or "user",
            "collections": sorted({it.collection for tl in timelines for it in tl.items})}


def write_twin_facts(run_dir, prep) -> Path:
    """RUN/twin.json, written by training so that the run alone is a usable twin; with crowd context also
    RUN/crowd.json: the other users' ratings a twin loaded without records counts (train + val: what the test
    split's baselines are fit on)."""
    run = RunDir(run_dir)
    write_json(run.twin_facts, twin_facts(prep))
    if prep.config.crowd_context != "none":
        write_json(run.crowd, crowd.Pools.of(prep.timelines, prep.splits).train_val.to_json())
    return run.twin_facts


def read_crowd_pools(run_dir) -> crowd.Pools:
    path = RunDir(run_dir).crowd
    if not path.is_file():
        raise UsertwinError(f"{path} is missing: this twin shows crowd context; pass Twin.load(RUN, records=PATH) "
                            "to count other users' ratings from a records file")
    try:
        return crowd.Pools.saved(crowd.Pool.from_json(json.loads(path.read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsertwinError(f"{path} is unreadable ({e}); pass Twin.load(RUN, records=PATH) instead") from None


def read_twin_facts(run_dir) -> dict | None:
    path = RunDir(run_dir).twin_facts
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsertwinError(f"{path} is unreadable ({e}); delete it and pass records=PATH to Twin.load") from None
    if not isinstance(facts, dict):
        raise UsertwinError(f"{path} must hold a JSON object; delete it and pass records=PATH to Twin.load")
    return facts


# ---------------------------------------------------------------- loading


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


def load_tokenizer_and_model(cfg: Config, run_dir=None, progress: bool = True):
    """The tokenizer the run trained with (best/ keeps it) and its weights; without a run, the base model's."""
    source = RunDir(run_dir).tokenizer_source(cfg.model) if run_dir else cfg.model
    return load_tokenizer(source, cfg.trust_remote_code), load_twin_model(cfg, run_dir, progress=progress)


# ---------------------------------------------------------------- the prompt of a target


@dataclass
class Prompt:
    sample: Sample  # the history that fitted
    ids: list  # token ids up to where the target starts


def target_sample(cfg: Config, renderer, tokenizer, tl, target: int, room: int = 0,
                  lengths: ItemLengths | None = None) -> Sample:
    """History as in training (the run's strategy), oldest dropped first until the prompt and `room` tokens
    of generation fit max_length. `lengths`: the prepared ones when at hand, else the timeline is measured
    (the same numbers: each text is tokenized alone)."""
    hist = select_history(tl, target, cfg, cfg.sample_seed)
    sample = Sample(tl.user_id, target, hist, "predict")
    if room:
        cfg = from_mapping({"max_length": max(1, cfg.max_length - room)}, "predict", cfg)
    ln = lengths if lengths is not None else measure(renderer, tokenizer, tl)
    fitted = fit_sample(cfg, renderer, tl, ln, sample, tokenizer)
    # a target too long even alone keeps its whole prompt: the model sees it cut on the left, not nothing
    return fitted[0] if fitted else Sample(tl.user_id, target, [], "predict")


def build_prompt(cfg: Config, encoder: SequenceEncoder, tl, target: int, room: int = 0,
                 lengths: ItemLengths | None = None) -> Prompt:
    """The one way a target's prompt is built (predict, Twin): rendered and tokenized as training does."""
    sample = target_sample(cfg, encoder.renderer, encoder.tokenizer, tl, target, room, lengths)
    enc = encoder.encode(tl, list(sample.history) + [sample.target], [sample.target])
    return Prompt(sample, enc.input_ids[:enc.targets[-1][1]])


# ---------------------------------------------------------------- the engine

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


class Engine:
    """A model + the training renderer: prompts, likelihoods of continuations, generation."""

    def __init__(self, cfg: Config, model, tokenizer, scale: list[str] | None = None):
        self.cfg, self.model, self.tokenizer, self.scale = cfg, model, tokenizer, scale
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

    def sized(self, gen: GenerateSettings, width: int | None = None) -> GenerateSettings:
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

    def prompt(self, tl, target: int, room: int = 0, lengths: ItemLengths | None = None) -> Prompt:
        return build_prompt(self.cfg, self.encoder, tl, target, room, lengths)

    def ids_of(self, text: str) -> list[int]:
        """A continuation's tokens as training sees them: the text, then the end-of-turn."""
        return self.tokenizer(text + self.renderer.fmt.eot, add_special_tokens=False)["input_ids"]

    def score(self, prompt_ids: list[int], candidates: list[list[int]]) -> list[tuple[float, int]]:
        """(sum of log-probabilities, token count) of each candidate continuation after one prompt."""
        return self.score_many([prompt_ids], [candidates])[0]

    def score_many(self, prompts: list[list[int]], candidates: list[list[list[int]]]) -> list[list[tuple]]:
        """Score several prompts' candidate continuations, as if each candidate ran alone after its prompt: a
        prompt is a window whose candidates all start at its end (score_windows)."""
        groups = [[(len(p), cands)] for p, cands in zip(prompts, candidates)]
        return [per[0] for per in self.score_windows(prompts, groups)]

    @torch.no_grad()
    def score_windows(self, windows: list[list[int]], groups: list[list[tuple[int, list[list[int]]]]]
                      ) -> list[list[list[tuple]]]:
        """Score candidates at points of each window in two forwards, as if each candidate ran alone after its
        window's first `start` tokens: `groups[i]` holds (start, candidates) pairs of window i. First the
        windows, right padded: plain causal attention needs no mask, so sdpa takes its fast kernels and no
        rows x T x T tensor is built. Then every candidate's tokens at once against the windows' cache: a small
        (rows x candidate tokens x T) mask lets each see its window up to its start (never the true continuation
        after it) and its own earlier tokens, with positions continuing from its start."""
        lm = causal_lm(self.model)
        backbone, dev = getattr(lm, lm.base_model_prefix), self.device
        lens = [len(w) for w in windows]
        ids = torch.full((len(windows), max(lens)), self.pad_id, dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, :len(w)] = torch.tensor(w)
        first = backbone(input_ids=ids.to(dev), use_cache=True)
        spans, starts = [], []
        for g in groups:  # one candidate block per window; each candidate keeps its own start
            flat = [(start, c) for start, cands in g for c in cands]
            spans.append(_candidate_spans([c for _, c in flat]))
            starts.append([start for start, _ in flat])
        cids, cpos, mask = _candidate_rows(spans, lens, self.pad_id, lm.get_output_embeddings().weight.dtype,
                                           starts)
        second = backbone(input_ids=cids.to(dev), position_ids=cpos.to(dev), attention_mask=mask.to(dev),
                          use_cache=True, **_cache_arg(backbone, first))
        t, width = ids.shape[1], cids.shape[1]
        # token j of a candidate is predicted one position before it: its window's token before the start for
        # j = 0 (first forward), else the candidate's own previous token (second forward)
        where = [(0, i * t + start - 1, tok) if j == 0 else (1, i * width + at + j - 1, tok)
                 for i, (row, st) in enumerate(zip(spans, starts)) for (at, c), start in zip(row, st)
                 for j, tok in enumerate(c)]
        picked = self._log_probs(lm, (first.last_hidden_state, second.last_hidden_state), where)
        out = []
        for g, scores in zip(groups, _sums_per_candidate(picked, spans)):
            k, per = 0, []
            for _, cands in g:
                per.append(scores[k:k + len(cands)])
                k += len(cands)
            out.append(per)
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
        scores = [s for s, _ in self.score(prompt_ids, [self.ids_of(t) for t in self.scale])]
        return self.distribution(scores)

    def distribution(self, scores: list[float]) -> dict:
        """Normalised probabilities of the allowed ratings from their log-likelihoods."""
        top = max(scores)
        probs = [math.exp(s - top) for s in scores]
        z = sum(probs)
        probs = [p / z for p in probs]
        values = [float(t) for t in self.scale]
        return {"scale": values, "probs": [round(p, 6) for p in probs],
                "most_likely": values[max(range(len(probs)), key=probs.__getitem__)],
                "expected": round(sum(v * p for v, p in zip(values, probs)), 6)}

    def rating_distributions(self, prompts: list[list[int]]) -> list[dict]:
        """The allowed ratings' probabilities after each prompt, all prompts in one forward."""
        scale = [self.ids_of(t) for t in self.scale]
        return [self.distribution([s for s, _ in row]) for row in self.score_many(prompts, [scale] * len(prompts))]

    def choice_distributions(self, prompts: list[list[int]], items: list) -> list[dict]:
        """Each prompt's choice item (`choices.Choice`): every option's continuation log-likelihood, all
        prompts and options in one forward, normalised to probabilities summing to 1 (`choices.distribution`)."""
        scored = self.score_many(prompts, [[self.ids_of(o) for o in c.options] for c in items])
        return [choices.distribution(c, [s for s, _ in row]) for c, row in zip(items, scored)]

    def generate(self, prompts: list[list[int]], gen: GenerateSettings, seeds: list[int] | None = None
                 ) -> list[list[str]]:
        """`gen.num_samples` texts per prompt (see generate_ids), decoded without the end-of-turn."""
        return [[self.decode(ids) for ids in row] for row in self.generate_ids(prompts, gen, seeds)]

    def decode(self, ids: list[int]) -> str:
        ends = {self.eot_id, self.pad_id}
        cut = next((i for i, t in enumerate(ids) if t in ends), len(ids))
        return self.tokenizer.decode(ids[:cut], skip_special_tokens=False).strip()

    @torch.no_grad()
    def generate_ids(self, prompts: list[list[int]], gen: GenerateSettings, seeds: list[int] | None = None
                     ) -> list[list[list[int]]]:
        """The generated tokens of `gen.num_samples` samples per prompt, all rows decoded together with the KV
        cache (transformers' generate); each ends with the end-of-turn unless max_new_tokens cut it. Sample i of
        prompt j draws its tokens from seed `seeds[j] + i` alone, so it is the same in any batch and after a
        resume; without seeds, every prompt's from `gen.seed`, else from torch's global generator
        (torch.manual_seed reproduces them).
        Greedy decoding (temperature 0) generates each prompt once and repeats it; an unset temperature is
        greedy for one sample and samples for several (GenerateSettings.resolved)."""
        gen = gen.resolved()
        n = gen.num_samples if gen.temperature > 0 else 1
        rows = [p for p in prompts for _ in range(n)]
        width = len(max(prompts, key=len))
        processors = []
        if gen.repetition_penalty != 1.0:
            processors.append(_RepetitionPenalty(gen.repetition_penalty, [len(p) for p in rows], width))
        if gen.temperature > 0:
            if seeds is None:
                seeds = ([gen.seed] * len(prompts) if gen.seed is not None
                         else torch.randint(0, 2**62, (len(prompts),)).tolist())
            row_seeds = [s + i for s in seeds for i in range(n)]
            processors.append(_SeededSampler(row_seeds, gen, width))
        out = self._generate_rows(rows, gen.max_new_tokens, processors)
        per = [out[j * n:(j + 1) * n] for j in range(len(prompts))]
        return [row * (gen.num_samples // n) for row in per]

    def _generate_rows(self, rows: list[list[int]], max_new_tokens: int, processors) -> list[list[int]]:
        from transformers import LogitsProcessorList

        width = max(len(p) for p in rows)
        ids = torch.full((len(rows), width), self.pad_id, device=self.device)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(rows):  # left padding: generation continues every row at its end
            ids[i, width - len(p):] = torch.tensor(p, device=self.device)
            mask[i, width - len(p):] = 1
        # greedy over the sampler's one allowed token: sampling is ours (seeded per row), the loop and the KV
        # cache are transformers'; the model's own sampling defaults (top_k, ...) never apply
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, use_cache=True, temperature=None, top_p=None,
                                  top_k=None, logits_processor=LogitsProcessorList(processors or []),
                                  eos_token_id=self.eot_id, pad_token_id=self.pad_id)
        return [_until_end(row, self.eot_id, self.pad_id) for row in out[:, width:].tolist()]


def _until_end(ids: list[int], eot: int, pad: int) -> list[int]:
    """A row's generated tokens up to and with its end-of-turn (the padding after it dropped)."""
    for i, t in enumerate(ids):
        if t == eot:
            return ids[:i + 1]
        if t == pad:
            return ids[:i]
    return ids


class _RepetitionPenalty:
    """A logits processor with vLLM's (and the seeds' scripts') repetition penalty: the logit of every token that
    occurs in the row's own prompt or generation is divided by `penalty` when positive, multiplied when negative.
    The left padding of a row is not its prompt: it is never counted, so a row is penalised the same in any
    batch (transformers' own processor counts the padding, which may be the end-of-turn token)."""

    def __init__(self, penalty: float, prompt_lengths: list[int], prompt_width: int):
        self.penalty = penalty
        self.pad = torch.tensor([prompt_width - n for n in prompt_lengths])[:, None]

    def __call__(self, input_ids, scores):
        if self.pad.device != input_ids.device:
            self.pad = self.pad.to(input_ids.device)
        at = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        # padding positions repeat the row's last token, which is counted anyway
        ids = torch.where(at >= self.pad, input_ids, input_ids[:, -1:])
        seen = scores.gather(1, ids)
        seen = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return scores.scatter(1, ids, seen)


class _SeededSampler:
    """A logits processor that draws each row's next token by inverse-CDF sampling from temperature-, top-k-
    and top-p-shaped probabilities (top-k first, then top-p on what it keeps, as vLLM and transformers do),
    with one uniform number per row and step taken from the row's own generator, and leaves only that token
    possible. Rows never share random numbers, so a row's text depends on its seed and its prompt only, not on
    the batch it ran in."""

    def __init__(self, seeds: list[int], gen: GenerateSettings, prompt_width: int):
        self.temperature, self.top_p, self.top_k, self.width = gen.temperature, gen.top_p, gen.top_k, prompt_width
        # 1 - rand: in (0, 1], so a token of probability 0 at the start of the order is never drawn
        draws = [1 - torch.rand(gen.max_new_tokens, generator=torch.Generator().manual_seed(int(s) % 2**63),
                                dtype=torch.float64) for s in seeds]
        self.uniform = torch.stack(draws)

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.width
        scores = scores.float()
        if 0 < self.top_k < scores.shape[-1]:  # the k likeliest tokens; ties at the k-th all stay, as in vLLM
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores / self.temperature, dim=-1)
        order = None
        if self.top_p < 1.0:  # the smallest set of likeliest tokens whose mass reaches top_p
            probs, order = probs.sort(dim=-1, descending=True)
            before = probs.cumsum(-1) - probs
            probs = probs.masked_fill(before >= self.top_p, 0.0)
        cdf = probs.double().cumsum(-1)
        if self.uniform.device != cdf.device:  # once: no host-to-device copy per step
            self.uniform = self.uniform.to(cdf.device)
        u = self.uniform[:, step, None] * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).clamp_(max=cdf.shape[-1] - 1)
        if order is not None:
            pick = order.gather(1, pick)
        return torch.full_like(scores, float("-inf")).scatter_(1, pick, 0.0)


def _candidate_spans(cands: list) -> list[tuple[int, list]]:
    """(start, tokens) of each candidate, one after another in the candidate block."""
    at, row = 0, []
    for c in cands:
        row.append((at, c))
        at += len(c)
    return row


def _cache_arg(backbone, out) -> dict:
    """The first forward's key/value cache as the next forward's argument: transformers renamed
    past_key_values to cache (5.2x); both spellings are in use on our machines."""
    import inspect

    if "cache" in inspect.signature(backbone.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


def _candidate_rows(spans: list, lens: list, pad_id: int, dtype, starts: list):
    """The second forward's input ids, position ids and additive mask (rows x 1 x C x (window width + C)):
    candidate k of row i sees the first starts[i][k] tokens of its row's window and its own earlier tokens;
    padding sees the first window token only (a row of -inf would give NaN)."""
    n, width = len(spans), max(lens)
    c = max(1, max((row[-1][0] + len(row[-1][1]) for row in spans if row), default=1))
    ids = torch.full((n, c), pad_id, dtype=torch.long)
    pos = torch.zeros((n, c), dtype=torch.long)
    allowed = torch.zeros((n, c, width + c), dtype=torch.bool)
    allowed[:, :, 0] = True
    for i, row in enumerate(spans):
        for (start, cand), seen in zip(row, starts[i]):
            k = len(cand)
            ids[i, start:start + k] = torch.tensor(cand)
            pos[i, start:start + k] = torch.arange(seen, seen + k)
            allowed[i, start:start + k, :seen] = True
            allowed[i, start:start + k, width + start:width + start + k] = torch.ones(k, k, dtype=torch.bool).tril()
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids, pos, mask[:, None]


def _sums_per_candidate(picked: list, spans: list) -> list[list[tuple[float, int]]]:
    out, k = [], 0
    for row in spans:
        scores = []
        for _, c in row:
            scores.append((sum(picked[k:k + len(c)]), len(c)))
            k += len(c)
        out.append(scores)
    return out


# ---------------------------------------------------------------- the Python API


REQUEST_KEYS = ("user", "item", "context", "profile", "history", "target", "continuation", "seed")


class Twin:
    """A trained twin for code that embeds it. A user is looked up by id in the records file given to
    `load`, or described by `profile=` and `history=` (items in the records format; an item may name its
    collection with "type"). `item` is the new situation (a continuation prefix) and `context` the turns
    before it (each {"role" or "source", "content"}), placed after the whole history; `target=` instead names
    an existing item of a looked-up user (its earlier items are history).

    Every single-request method has a list form that runs its requests in batches (`generate_many`,
    `rating_distributions`, `scores`): a request is a dict of the single method's arguments."""

    def __init__(self, engine: Engine, facts: dict, timelines: list | None = None, records_path=None):
        self.engine, self.facts, self.records_path = engine, facts, records_path
        self._by_user = {tl.user_id: tl for tl in timelines} if timelines is not None else None

    @classmethod
    def load(cls, run_dir, records=None) -> Twin:
        """From the run directory alone (config, tokenizer, best weights, twin.json); `records`: a records
        file to look users up by id (and, for runs without twin.json, to read the rating scale from)."""
        run = RunDir(run_dir)
        cfg = run.load_config()
        facts = read_twin_facts(run.path)
        if facts is None and records is None:
            raise UsertwinError(f"{run.twin_facts} is missing (the run was trained before twins kept it): pass "
                                f"Twin.load({str(run.path)!r}, records=PATH) with the records file it trained on "
                                f"(its config names {cfg.data!r})")
        tok, model = load_tokenizer_and_model(cfg, run.path)
        engine = Engine(cfg, model, tok)
        timelines = _timelines_of(records, engine) if records is not None else None
        if records is None and cfg.crowd_context != "none":
            engine.crowd = read_crowd_pools(run.path)
        facts = facts if facts is not None else twin_facts(timelines)
        engine.scale = facts.get("rating_scale")
        return cls(engine, facts, timelines, records)

    @property
    def cfg(self) -> Config:
        return self.engine.cfg

    @property
    def users(self) -> list[str]:
        """The ids of the records given at load, in file order."""
        return list(self._by_user or {})

    def timeline(self, user) -> Timeline:
        """A user of the records file given at load, by id (an int id is read as its text)."""
        if isinstance(user, Timeline):
            return user
        if user is None:
            raise UsertwinError("name the user (user=ID) or describe one with profile= and history=")
        if not isinstance(user, (str, int)) or isinstance(user, bool):
            raise UsertwinError(f"user= takes a user id (a string or an int), got {type(user).__name__}")
        if self._by_user is None:
            raise UsertwinError(f"user {user!r}: this twin was loaded without records; pass Twin.load(RUN, "
                                "records=PATH) to look users up by id, or describe the user with profile= and "
                                "history=")
        found = self._by_user.get(str(user))
        if found is None:
            some = ", ".join(repr(u) for u in list(self._by_user)[:3])
            raise UsertwinError(f"user {user!r} is not in {self.records_path} ({len(self._by_user)} users, "
                                f"e.g. {some})")
        return found

    # -- single requests

    def prompt(self, user=None, item: str | None = None, context=None, *, target: int | None = None,
               profile: dict | None = None, history: list | None = None, room: int = 0) -> list[int]:
        """The token ids the model sees before it writes; `room` tokens are kept free for generation."""
        tl, pos = self._situation(user, item, context, target, profile, history)
        return self.prompt_at(tl, pos, room)

    def prompt_at(self, tl: Timeline, pos: int, room: int = 0) -> list[int]:
        """The prompt of item `pos` of a timeline; refused when it cannot fit max_length even without history."""
        return self.fitted_prompt(tl, pos, room).ids

    def fitted_prompt(self, tl: Timeline, pos: int, room: int = 0, lengths: ItemLengths | None = None) -> Prompt:
        """`lengths`: the timeline's measured item lengths when at hand (measure_all over a batch of users
        tokenizes each distinct text once)."""
        prompt = self.engine.prompt(tl, pos, room, lengths)
        if len(prompt.ids) + room > self.cfg.max_length:
            raise PromptTooLong(
                f"user {tl.user_id!r}: the prompt of this item needs {len(prompt.ids)} tokens even without "
                f"history, and {room} more are kept for what follows it (the generation or a scored "
                f"continuation): more than the run's max_length {self.cfg.max_length}. Pass a shorter item or "
                "context, or fewer max_new_tokens")
        return prompt

    def predict(self, user=None, item: str = "", context=None, *, profile=None, history=None, seed=None,
                **gen) -> str:
        """The first generated text (greedy unless temperature > 0)."""
        return self.generate(user, item, context, profile=profile, history=history, seed=seed, **gen)[0]

    def generate(self, user=None, item: str = "", context=None, *, profile=None, history=None, seed=None,
                 **gen) -> list[str]:
        """`num_samples` texts (GenerateSettings: max_new_tokens, temperature, top_p, top_k, repetition_penalty,
        num_samples); when sampling, sample i draws with seed + i (unset: torch's global generator), so it is
        the same whether 1 or N samples are drawn."""
        request = dict(user=user, item=item, context=context, profile=profile, history=history, seed=seed)
        return self.generate_many([request], **gen)[0]

    def score(self, user=None, item: str = "", continuation: str = "", context=None, *, profile=None,
              history=None) -> float:
        """Log-likelihood of `continuation` (with its end-of-turn) as this user's next act."""
        request = dict(user=user, item=item, continuation=continuation, context=context, profile=profile,
                       history=history)
        return self.scores([request])[0]

    def rating_distribution(self, user=None, item: str = "", context=None, *, profile=None, history=None) -> dict:
        """The probability of every allowed rating as this user's next act, with the most likely and expected."""
        request = dict(user=user, item=item, context=context, profile=profile, history=history)
        return self.rating_distributions([request])[0]

    # -- lists of requests, in batches

    def generate_many(self, requests: list[dict], *, seed: int | None = None, **gen) -> list[list[str]]:
        """generate() for each request, `batch_size` prompts (x num_samples rows) decoding together. Sample i
        of request j draws with seed + j * MAX_SAMPLES + i, or with the request's own "seed" + i: the same
        whether 1 or N samples are drawn."""
        g = _settings(gen)
        prompts = self._prompts(requests, g.max_new_tokens)
        seeds = [_request_seed(r, seed, j * MAX_SAMPLES) for j, r in enumerate(requests)]
        out = []
        g = self.engine.sized(g)
        for start in range(0, len(prompts), g.batch_size):
            chunk = seeds[start:start + g.batch_size]
            out += self.engine.generate(prompts[start:start + g.batch_size], g,
                                        None if None in chunk else chunk)
        return out

    def rating_distributions(self, requests: list[dict], batch_size: int = 8) -> list[dict]:
        if not self.engine.scale:
            raise UsertwinError("this twin's data has no rating collection: there is no rating scale to score")
        prompts = self._prompts(requests, max(len(self.engine.ids_of(s)) for s in self.engine.scale))
        return [d for start in range(0, len(prompts), batch_size)
                for d in self.engine.rating_distributions(prompts[start:start + batch_size])]

    def scores(self, requests: list[dict], batch_size: int = 8) -> list[float]:
        """score() for each request (each with its "continuation"), `batch_size` prompts per forward."""
        conts = [[self.engine.ids_of(_text(r.get("continuation", ""), "continuation", j))]
                 for j, r in enumerate(requests)]
        prompts = self._prompts(requests, [len(c[0]) for c in conts])
        return [row[0][0] for start in range(0, len(prompts), batch_size)
                for row in self.engine.score_many(prompts[start:start + batch_size],
                                                  conts[start:start + batch_size])]

    def _prompts(self, requests, room: int | list = 0) -> list[list[int]]:
        """`room`: tokens kept free after each prompt (one number, or one per request): the generation, or the
        longest continuation scored after it, so that prompt and continuation fit max_length together."""
        if not isinstance(requests, (list, tuple)):
            raise UsertwinError(f"pass a list of requests (dicts of {', '.join(REQUEST_KEYS)}), "
                                f"got {type(requests).__name__}")
        out = []
        for j, r in enumerate(requests):
            r = _request(r, j)
            tl, pos = self._situation(r.get("user"), r.get("item"), r.get("context"), r.get("target"),
                                      r.get("profile"), r.get("history"))
            out.append(self.prompt_at(tl, pos, room[j] if isinstance(room, list) else room))
        return out

    # -- the timeline a prompt is rendered from

    def _situation(self, user, item, context, target, profile, history) -> tuple[Timeline, int]:
        _check_situation(item, context, profile, history)
        explicit = profile is not None or history is not None
        tl = self._described(user, profile, history or []) if explicit else self.timeline(user)
        if target is None:
            return self.with_new_item(tl, item or "", context), len(tl.items)
        if explicit or item is not None or context is not None:
            raise UsertwinError("target= names an item of a looked-up user: pass user= alone with it")
        if not isinstance(target, int) or not 0 <= target < len(tl.items):
            raise UsertwinError(f"user {tl.user_id!r} has items 0..{len(tl.items) - 1}, not target {target}")
        return tl, target

    def _described(self, user, profile, history: list) -> Timeline:
        """A timeline from a profile and items in the records format, read and ordered as training read them."""
        uid = "twin" if user is None else str(user)
        task, language = self.facts.get("task") or "", self.facts.get("language")
        # the renderer caches a language per user id; a described user is anyone's, so detect afresh
        self.engine.renderer._lang_cache.pop(uid, None)
        role = self.facts.get("role") or "user"
        if not history:
            return Timeline(uid, dict(profile or {}), task, language, [], role=role)
        raw = {"user_hash": uid, "user": {"profile": dict(profile or {})},
               "task": {"description": task, "language": language, "role": role,
                        "task_behavior_collections": [_collection(it, self._default_collection())
                                                      for it in history]}}
        (tl,), _ = build_timelines([_read_record(raw)])
        if self.engine.crowd is not None:
            # a described history is all past: each item counts every rating of the others, as a new item does
            self.engine.crowd.annotate_known([tl], self.cfg.crowd_context)
        trim_long_contexts([tl], self.engine.renderer, self.engine.tokenizer, self.cfg.max_length)
        return tl

    def _default_collection(self) -> str:
        kinds = self.facts.get("collections") or []
        return kinds[0] if len(kinds) == 1 else ""

    def kind_after(self, tl: Timeline) -> str:
        """The collection of a user's next item when the request does not name one: that of their last item."""
        return tl.items[-1].collection if tl.items else self._default_collection()

    def with_new_item(self, tl: Timeline, prefix: str, context=None, kind: str | None = None,
                      continuation: str = "") -> Timeline:
        """The user's timeline plus a new item at its end (history: every item of the user). Its context loses
        its oldest turns when the item cannot fit max_length alone, as training trims its items."""
        new = records.Item(continuation=continuation, prefix=prefix, context=list(context or []),
                           collection=kind or self.kind_after(tl), position=len(tl.items))
        if new.context:
            alone = dataclasses.replace(tl, items=[new], context_cut={})
            trim_long_contexts([alone], self.engine.renderer, self.engine.tokenizer, self.cfg.max_length)
            if not new.context:  # the turn being answered is never dropped: a reply to nothing is no reply
                raise PromptTooLong(f"user {tl.user_id!r}: the last turn of the context alone does not fit the "
                                    f"run's max_length {self.cfg.max_length}: shorten it")
        return self.with_item(tl, new)

    def with_item(self, tl: Timeline, item) -> Timeline:
        """The timeline plus `item` at its end, with its crowd statistics (every other user's rating counts)."""
        stats = self.engine.crowd.with_new(tl, item, self.cfg.crowd_context) if self.engine.crowd else dict(tl.crowd)
        return dataclasses.replace(tl, items=tl.items + [item], crowd=stats)

    def chat(self, messages: list, user=None, profile: dict | None = None, history: list | None = None,
             **generation) -> str:
        """The twin's next line in a conversation of OpenAI-style messages: its own earlier turns are
        `assistant`, the other speaker's `user` (a `name` is that speaker's name, as a dialogue's sources are);
        a `system` message may describe the user (JSON object: the profile; other text: a description).
        Rendered as training renders a dialogue item: the turns are its context, the reply is its target."""
        g = GenerateSettings(**generation)
        ids = chat_prompt(self, messages, user, profile, history, room=g.max_new_tokens)
        return self.engine.generate([ids], g)[0][0]


def _settings(gen: dict) -> GenerateSettings:
    return generate_settings_from(gen, "generation settings")


def _request(r, j: int) -> dict:
    if not isinstance(r, dict):
        raise UsertwinError(f"request {j}: a request is a dict of {', '.join(REQUEST_KEYS)}, got {type(r).__name__}")
    unknown = sorted(set(r) - set(REQUEST_KEYS))
    if unknown:
        raise UsertwinError(f"request {j}: unknown key(s) {', '.join(unknown)}; a request takes "
                            f"{', '.join(REQUEST_KEYS)}")
    return r


def _request_seed(r: dict, seed: int | None, offset: int) -> int | None:
    own = r.get("seed") if isinstance(r, dict) else None
    if own is not None:
        return own
    return None if seed is None else seed + offset


def _text(value, name: str, j: int | None = None) -> str:
    if not isinstance(value, str):
        at = f"request {j}: " if j is not None else ""
        raise UsertwinError(f"{at}{name}= takes a string, got {type(value).__name__}")
    return value


def _check_situation(item, context, profile, history) -> None:
    """Wrong types say which argument and what it takes (the renderer would fail far from the cause)."""
    if item is not None:
        _text(item, "item")
    if profile is not None and not isinstance(profile, dict):
        raise UsertwinError(f"profile= takes a dict (e.g. {{'age': 25}}), got {type(profile).__name__}")
    if history is not None and not isinstance(history, (list, tuple)):
        raise UsertwinError(f"history= takes a list of items in the records format, got {type(history).__name__}")
    if context is None:
        return
    if not isinstance(context, (list, tuple)):
        raise UsertwinError(f"context= takes a list of turns ({{'role' or 'source': ..., 'content': ...}}), "
                            f"got {type(context).__name__}")
    for k, turn in enumerate(context):
        if not (isinstance(turn, dict) and isinstance(turn.get("content"), str)
                and isinstance(turn.get("role", turn.get("source")), str)):
            raise UsertwinError(f"context[{k}] must be a turn {{'role' or 'source': str, 'content': str}}, "
                                f"got {turn!r}"[:300])


def _collection(item, default: str) -> dict:
    if not isinstance(item, dict):
        raise UsertwinError(f"a history item must be an object in the records format, got {type(item).__name__}")
    item = dict(item)
    return {"type": item.pop("type", default), "data": [item]}


def _read_record(raw: dict) -> records.Record:
    """Described items are checked and read exactly as a records file's items are; problems name the history."""
    try:
        json.dumps(raw)
    except (TypeError, ValueError) as e:
        raise UsertwinError(f"the profile and history passed to the twin must be JSON data: {e}") from None
    return records.from_raw(raw, "the history passed to the twin")


def _timelines_of(path, engine: Engine) -> list[Timeline]:
    """The records file's timelines, trimmed to max_length as prepare trims them. With crowd context, its items
    get their statistics by the split rule (so a target's prompt is the one predict used), and a new item asked
    about counts every rating of the file's other users (data/crowd.py)."""
    loaded = records.load(path, on_error=engine.cfg.on_error)
    timelines, _ = build_timelines(loaded.records)
    if engine.cfg.crowd_context != "none":
        engine.crowd = crowd.annotate_split(timelines, assign_splits(timelines, engine.cfg), engine.cfg.crowd_context)
    trim_long_contexts(timelines, engine.renderer, engine.tokenizer, engine.cfg.max_length)
    return timelines


# ---------------------------------------------------------------- conversations (Twin.chat, usertwin serve)

CHAT_KIND = "dialogue"  # a reply is a dialogue item, whatever the user's last item was


def chat_prompt(twin: Twin, messages: list, user=None, profile: dict | None = None, history: list | None = None,
                room: int = 0) -> list[int]:
    """The token ids before the twin's reply to `messages` (see Twin.chat)."""
    context, described = chat_context(messages)
    if described is not None:
        if user is not None or profile is not None:
            raise UsertwinError("a system message describes the user: send it, or name the user (user=) or "
                                "pass profile=, not both")
        profile = described
    tl, pos = twin._situation(user, "", context, None, profile, history)
    tl.items[pos] = dataclasses.replace(tl.items[pos], collection=CHAT_KIND)
    return twin.engine.prompt(tl, pos, room).ids


def chat_context(messages: list) -> tuple[list[dict], dict | None]:
    """(context turns in the records format, the profile a system message gives or None)."""
    if not isinstance(messages, list) or not messages:
        raise UsertwinError("messages must be a non-empty list of {role, content} objects")
    turns, profile = [], None
    for i, m in enumerate(messages):
        role, content = _message_parts(m, i)
        if role == "system":
            if profile is not None or turns:
                raise UsertwinError(f"messages[{i}]: one system message, before the conversation")
            profile = _system_profile(content)
        elif role == "assistant":
            turns.append({"role": "assistant", "content": content})
        else:  # the other speaker, under its name when the data named speakers
            name = m.get("name")
            turns.append({"source": str(name), "content": content} if name else {"role": "user", "content": content})
    return turns, profile


def _message_parts(m, i: int) -> tuple[str, str]:
    if not isinstance(m, dict):
        raise UsertwinError(f"messages[{i}] must be an object with role and content")
    role, content = m.get("role"), m.get("content")
    if role not in ("system", "user", "assistant"):
        raise UsertwinError(f"messages[{i}].role must be system, user or assistant, not {role!r}")
    if isinstance(content, list):  # OpenAI's content parts: only text parts mean anything to a twin
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise UsertwinError(f"messages[{i}].content: only text parts are supported")
        content = "".join(str(p.get("text", "")) for p in content)
    if not isinstance(content, str):
        raise UsertwinError(f"messages[{i}].content must be text")
    return role, content


def _system_profile(text: str) -> dict:
    """A JSON object is the profile itself; any other text describes the user in words."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    return {"description": text.strip()} if text.strip() else {}


def known_users(twin: Twin) -> list[str]:
    """The user ids of the records file the twin was loaded with (none without one), in file order."""
    return list(twin._by_user or {})
