"""Continuous batching: a running batch of generated rows whose membership changes between decode steps. New
prompts are prefilled together and join the running rows; a row that ends its turn, reaches its max_new_tokens
or whose request is gone leaves at once. The model's forward and its key/value cache are transformers' own
(DynamicCache): rows are left padded to one width, a joining group's cache is padded to the running one's and
concatenated, leaving rows are dropped with the cache's batch_select_indices, and columns no row needs any more
are cut off the left. Each row's position ids count its own tokens only, so a row's logits are those it gets in
transformers' generate; its next token is drawn by the same rule (sampling.draw, penalise) with its own seed's
numbers, so a request's texts do not depend on the rows it ran beside (Engine.generate_ids gives the same)."""

from __future__ import annotations

import dataclasses
import inspect
from collections import deque
from collections.abc import Callable

import torch

from usertwin.config import GenerateSettings
from usertwin.errors import UsertwinError
from usertwin.model.load import causal_lm
from usertwin.twin.sampling import draw, penalise, uniforms, until_end
from usertwin.twin.stream import RowText


@dataclasses.dataclass
class Request:
    """One prompt's generation: `done` is called (in the decoding thread) with each sample's token ids, as
    Engine.generate_ids returns them, once all its rows have finished. `seed`: sample i draws with seed + i
    (default gen.seed; unset: a random one). `stream`: one callable or None per sample, called with each new piece
    of its text (twin/stream.py). `gone`: true once nobody waits: its rows leave at the next step."""

    prompt: list[int]
    gen: GenerateSettings
    done: Callable[[list[list[int]]], None]
    seed: int | None = None
    stream: list | None = None
    gone: Callable[[], bool] | None = None


class _Row:
    def __init__(self, request: Request, gen: GenerateSettings, u: list[float] | None, text: RowText | None):
        self.request, self.gen, self.u, self.text = request, gen, u, text
        self.ids: list[int] = []
        self.sample = 0  # which of its request's rows
        self.finished = False
        self.tokens = None  # prompt + generation, for the repetition penalty only

    def key(self) -> tuple:  # rows drawn alike are drawn together
        g = self.gen
        return g.temperature, g.top_p, g.top_k, g.repetition_penalty


class Decoder:
    """The running batch of one model. Not thread-safe: one thread joins and steps it."""

    def __init__(self, engine, static_ok: bool = False):
        if engine.vllm is not None or (engine.static and not static_ok):
            raise UsertwinError("continuous batching decodes with transformers' dynamic cache: not with --engine "
                                "vllm or --decode static (use --batching static with those)")
        self.engine, self.model = engine, engine.model
        _check_full_attention(self.model.config)
        # transformers renamed past_key_values to cache (5.2x); both are in use on our machines
        params = inspect.signature(causal_lm(self.model).forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.ended: dict[int, list[_Row]] = {}  # rows that finished, by request, until all of its have
        self.rows: list[_Row] = []
        self.cache = self.mask = None  # mask: rows x cached columns (1: a real token of the row)
        self.last: list[int] = []  # each row's newest token, not yet in the cache
        self.steps = self.most_rows = self.row_steps = 0  # what it achieved (usertwin serve's GET /v1/twin)
        self.on_step: Callable[[], None] | None = None  # tests: called before each decode step

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def join(self, requests: list[Request]) -> None:
        """Prefills `requests` together and adds their rows to the running batch, each with its first token."""
        rows, prompts = [], []
        for r in requests:
            gen = r.gen.resolved()
            n = gen.num_samples if gen.temperature > 0 else 1  # greedy: one row, its text repeated
            seed = r.seed if r.seed is not None else gen.seed
            if gen.temperature > 0 and seed is None:
                seed = int(torch.randint(0, 2**62, (1,)))
            for i in range(n):
                u = uniforms(seed + i, gen.max_new_tokens).tolist() if gen.temperature > 0 else None
                emits = [e for e in (r.stream or [])[i::n] if e]
                rows.append(_Row(r, gen, u, RowText(self.engine, emits) if emits else None))
                rows[-1].sample = i
                prompts.append(r.prompt)
        if not rows:
            return
        dev, width = self.engine.device, max(map(len, prompts))
        # left padded -- or, with --prefill shared where prompts begin alike, each group's beginning read once
        # (twin/prefix.py): the mask then has a gap between a row's beginning and its own tail
        ids, mask, cached = self.engine.laid_out(prompts, width, by_generate=False)
        for k, p in enumerate(prompts):
            if rows[k].gen.repetition_penalty != 1.0:
                rows[k].tokens = torch.tensor(p, device=dev)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)  # each row's own count of tokens, as generate counts
        past = next(iter(cached.values()), None)
        start = past.get_seq_length() if past is not None else 0
        out = self._forward(ids[:, start:], mask, positions[:, start:], past)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        _check_layers(cache)
        self._merge(rows, cache, mask)
        self._advance(rows, self._choose(rows, out.logits[:, -1, :]))

    @torch.no_grad()
    def step(self) -> None:
        """One token for every running row; rows that finish leave."""
        if not self.rows:
            return
        if self.on_step:
            self.on_step()
        self.steps, self.most_rows = self.steps + 1, max(self.most_rows, len(self.rows))
        self.row_steps += len(self.rows)
        self._advance(self.rows, self._choose(self.rows, self._step_logits()))

    def abandon(self) -> list[Request]:
        """Empties the batch (after a failed forward): the requests that were running."""
        running = list({id(r.request): r.request for r in self.rows}.values())
        self._empty()
        self.ended = {}
        return running

    def _empty(self) -> None:
        self.rows, self.cache, self.mask, self.last = [], None, None, []

    # -- parts

    def _step_logits(self):
        """Every running row's logits after its newest token (which joins the cache)."""
        dev = self.mask.device
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=dev)], 1)
        positions = self.mask.sum(-1, keepdim=True) - 1  # the row's own count of tokens: padding is no position
        out = self._forward(torch.tensor(self.last, device=dev)[:, None], self.mask, positions, self.cache)
        return out.logits[:, -1, :]

    def _forward(self, ids, mask, positions, cache):
        """Only the last position's logits: as generate asks for them."""
        past = {self.cache_kw: cache} if cache is not None else {}  # a prefill: the model makes a new cache
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=1, **past)

    def _merge(self, rows: list[_Row], cache, mask) -> None:
        """The joining rows' cache (and mask) padded on the left to the running width, or the running to theirs,
        and concatenated below the running rows."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers):
                old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
                old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
            self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)])
        self.rows += rows
        self.last += [0] * len(rows)

    def _choose(self, rows: list[_Row], logits) -> list[int]:
        """Each row's next token: greedy, or drawn with its own uniform number of this step; rows of one setting
        together (generate applies the same processors to float32 logits, then takes the argmax)."""
        logits = logits.float()
        picked = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[tuple, list[int]] = {}
        for k, row in enumerate(rows):
            groups.setdefault(row.key(), []).append(k)
        for (temperature, top_p, top_k, penalty), members in groups.items():
            at = torch.tensor(members, device=logits.device)
            scores = logits[at]
            if penalty != 1.0:
                scores = torch.cat([penalise(scores[j:j + 1], rows[k].tokens[None], penalty)
                                    for j, k in enumerate(members)])
            if temperature > 0:
                u = torch.tensor([[rows[k].u[len(rows[k].ids)]] for k in members], dtype=torch.float64,
                                 device=logits.device)
                picked[at] = draw(scores, u, temperature, top_p, top_k)[:, 0]
            else:
                picked[at] = scores.argmax(-1)
        return picked.tolist()

    def _advance(self, rows: list[_Row], tokens: list[int]) -> None:
        """Each row takes its token (streamed); rows that ended leave; requests whose rows all ended are done."""
        ends = (self.engine.eot_id, self.engine.pad_id)  # generation's text ends at either (until_end)
        base = len(self.rows) - len(rows)  # `rows` are the last rows of the batch
        for k, (row, tok) in enumerate(zip(rows, tokens)):
            row.ids.append(tok)
            self.last[base + k] = tok
            if row.tokens is not None:
                row.tokens = torch.cat([row.tokens, row.tokens.new_tensor([tok])])
            if row.text:
                row.text.add(tok)
            gone = row.request.gone
            row.finished = tok in ends or len(row.ids) >= row.gen.max_new_tokens or bool(gone and gone())
        if any(r.finished for r in rows):
            self._leave()

    def _leave(self) -> None:
        keep = [k for k, r in enumerate(self.rows) if not r.finished]
        ended = [r for r in self.rows if r.finished]
        if keep:
            order = self._keep(keep)
            self.rows, self.last = [self.rows[k] for k in order], [self.last[k] for k in order]
        else:
            self._empty()
        for row in ended:
            if row.text:
                row.text.end()
        for request in {id(r.request): r.request for r in ended}.values():
            self._maybe_done(request, ended)

    def _keep(self, keep: list[int]) -> list[int]:
        """The cache and mask of rows `keep` only, less the columns every one of them has as padding; returns the
        kept rows' new order (here: as they were)."""
        at = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(at)
        self.mask = self.mask[at]
        lead = int(first_real(self.mask).min())
        if lead:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self.mask = self.mask[:, lead:]
        return keep

    def _maybe_done(self, request: Request, ended: list[_Row]) -> None:
        mine = self.ended.setdefault(id(request), [])
        mine += [r for r in ended if r.request is request]
        if any(r.request is request for r in self.rows):
            return  # a sample of it still decodes
        del self.ended[id(request)]
        gen = mine[0].gen
        ids = [until_end(r.ids, self.engine.eot_id, self.engine.pad_id) for r in sorted(mine, key=lambda r: r.sample)]
        request.done(ids * (gen.num_samples // len(ids)))


# a waiting prompt joins once this share of the running rows is free: each join is a prefill forward and a copy
# of the running cache, so newcomers come in groups rather than one by one
JOIN_WHEN_FREE = 0.25


def decode_all(decoder: Decoder, prompts: list[list[int]], gen: GenerateSettings, running: int,
               seeds: list[int] | None = None, stream: list | None = None, gone: list | None = None) -> list:
    """Engine.generate_ids's result for `prompts` (the same arguments and texts), decoded continuously: at most
    `running` rows at once, a prompt joining as soon as enough rows have finished, in the given order -- so no
    row decodes padding after its end while a longer one goes on, as in a batch generated together."""
    gen = gen.resolved()
    n = gen.num_samples if gen.temperature > 0 else 1
    running = max(running, n)
    if gen.temperature > 0 and seeds is None and gen.seed is None:  # as generate_ids draws them
        seeds = torch.randint(0, 2**62, (len(prompts),)).tolist()
    out: list = [None] * len(prompts)
    waiting = deque(range(len(prompts)))

    def request(j: int) -> Request:
        def done(ids, j=j):
            out[j] = ids
        return Request(prompts[j], gen, done, seed=seeds[j] if seeds else None,
                       stream=stream[j * gen.num_samples:(j + 1) * gen.num_samples] if stream else None,
                       gone=gone[j] if gone else None)

    while waiting or len(decoder):
        free = running - len(decoder)
        if waiting and free >= n and (not len(decoder) or free >= running * JOIN_WHEN_FREE):
            decoder.join([request(waiting.popleft()) for _ in range(min(len(waiting), free // n))])
        else:
            decoder.step()
    return out


def first_real(mask) -> torch.Tensor:
    """Each row's first column holding one of its tokens (a shared prefill's rows have gaps after it)."""
    return mask.to(torch.int8).argmax(-1)


def _pad_left(t, width: int, dim: int = 2):
    """`t` with zeros before its columns along `dim` (a cache's sequence axis, or a mask's) up to `width`."""
    short = width - t.shape[dim]
    if not short:
        return t
    shape = list(t.shape)
    shape[dim] = short
    return torch.cat([t.new_zeros(shape), t], dim)


def _check_full_attention(config) -> None:
    """Left-padding merges need every layer's cache to hold all its tokens: no sliding windows."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None) or []
    sliding = any("sliding" in str(t) or "linear" in str(t) for t in types) or (
        not types and getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True))
    if sliding:
        raise UsertwinError(f"continuous batching needs full attention in every layer; {text.model_type} has "
                            "sliding-window or linear-attention layers: use --batching static")


def _check_layers(cache) -> None:
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", [None])}
    if kinds != {"DynamicLayer"}:
        raise UsertwinError(f"continuous batching merges plain dynamic caches; this model's has {sorted(kinds)}: "
                            "use --batching static")
