"""Continuous batching whose decode step is one CUDA graph: the running rows live in fixed slots of key/value
buffers allocated once (rows x columns, per layer), so every step of a batch of n rows has the same shapes --
those of its bucket, the next power of two of n -- and replays the graph recorded for that bucket instead of
launching each layer's kernels from Python (transformers' forward costs ~37 ms a step at batch 1 on an H100).

All rows write their new token's key and value into one column, the same for every row, that moves right each
step; a joining row's prompt (prefilled as in twin/continuous.py) is copied into the columns just before it, and
each row's mask shows its own columns only. When the columns run out, everything moves left by the columns no
running row uses; the buffers hold twice the longest row a request can need, so that always makes room. Buckets
past the running rows hold dummy rows that attend to a spare last column only (never to nothing: a row that
attends to nothing computes NaN). Without a GPU the same steps run without graphs (what the tests check: every
request's text equals the plain decoder's)."""

from __future__ import annotations

import sys

import torch

from usertwin.twin.continuous import Decoder, first_real


class SlotDecoder(Decoder):
    """Decoder (twin/continuous.py) with static slots and a CUDA graph per bucket of rows (`graphs`, default: on
    a GPU)."""

    def __init__(self, engine, graphs: bool | None = None):
        super().__init__(engine, static_ok=True)
        self.graphs = engine.device.type == "cuda" if graphs is None else graphs
        self.slots: _Slots | None = None
        self.starts: list[int] = []  # each row's first column

    def _step_logits(self):
        try:
            logits = self.slots.step(self.model, self.cache_kw, self.last, self.graphs)
        except RuntimeError as e:  # a model whose step cannot be recorded still decodes, without graphs
            if not self.graphs:
                raise
            self.graphs = False
            print(f"usertwin: warning: the decode step could not be recorded as a CUDA graph ({str(e)[:200]}); "
                  "decoding without graphs", file=sys.stderr)
            logits = self.slots.step(self.model, self.cache_kw, self.last, False)
        return logits[:len(self.rows)]

    def _merge(self, rows: list, cache, mask) -> None:
        """The joining rows' prompts copied into free slots, in the columns just before the next one."""
        width = mask.shape[1]
        rest = [r.gen.max_new_tokens - len(r.ids) for r in self.rows] + [r.gen.max_new_tokens for r in rows]
        spans = [self.slots.column - s for s in self.starts] if self.slots else []
        front = max(spans + [width])  # the next column, once everything has moved as far left as it can
        if self.slots is None or not self.slots.fits(len(self.rows) + len(rows), front + max(rest)):
            self.slots = _Slots.grown(self.slots, cache, len(self.rows) + len(rows), 2 * (front + max(rest)))
        if not self.rows:  # nothing to move: the next column is simply set
            self.slots.column = front
        elif self.slots.column < width or self.slots.column + max(rest) > self.slots.width:
            shift = front - self.slots.column
            self.slots.shift(shift)
            self.starts = [s + shift for s in self.starts]
        lengths = (width - first_real(mask)).tolist()  # from a row's first token (gaps included) to the end
        self.slots.admit(len(self.rows), cache, mask)
        self.starts += [self.slots.column - n for n in lengths]
        self.rows += rows
        self.last += [0] * len(rows)

    def _keep(self, keep: list[int]) -> list[int]:
        """The last running rows move into the slots of rows that left (only they are copied)."""
        m = len(keep)
        kept = set(keep)
        holes = [k for k in range(m) if k not in kept]
        movers = [k for k in keep if k >= m]
        self.slots.move(movers, holes, m)
        order = list(range(m))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        self.starts = [self.starts[k] for k in order]
        return order

    def _empty(self) -> None:
        self.rows, self.last, self.starts = [], [], []
        if self.slots is not None:
            self.slots.clear()


class _Slots:
    """Key/value buffers of `rows` slots x `width` columns (+ one spare) per layer, the rows' masks, and the
    static inputs and recorded graph of each bucket."""

    def __init__(self, like, rows: int, width: int):
        layers = like.layers
        k0 = layers[0].keys
        self.rows, self.width, self.column, self.n = rows, width, 0, 0
        shape = lambda layer: (rows, layer.keys.shape[1], width + 1, layer.keys.shape[3])  # noqa: E731
        self.keys = [torch.zeros(shape(x), dtype=x.keys.dtype, device=k0.device) for x in layers]
        self.values = [torch.zeros(shape(x), dtype=x.values.dtype, device=k0.device) for x in layers]
        self.mask = torch.zeros((rows, width + 1), dtype=torch.bool, device=k0.device)
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=k0.device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=k0.device)
        self.at = torch.zeros(1, dtype=torch.long, device=k0.device)  # the column this step writes
        self.recorded: dict[int, tuple] = {}  # bucket -> (graph, its logits)
        self.pool = None

    @classmethod
    def grown(cls, old: _Slots | None, like, rows: int, width: int) -> _Slots:
        """Buffers for at least `rows` slots (a power of two) and `width` columns, holding `old`'s contents."""
        rows = _pow2(rows)
        if old is not None:
            rows, width = max(rows, old.rows), max(width, old.width)
        new = cls(like, rows, width)
        if old is not None:
            n, w = old.n, old.width
            for mine, theirs in zip(new.keys + new.values, old.keys + old.values):
                mine[:n, :, :w] = theirs[:n, :, :w]
            new.mask[:n, :w] = old.mask[:n, :w]
            new.column, new.n = old.column, n
        return new

    def fits(self, rows: int, width: int) -> bool:
        return rows <= self.rows and width <= self.width

    def admit(self, at: int, cache, mask) -> None:
        """A prefilled group (its left-padded cache and mask) into slots at.. in the columns before the next."""
        j, w, c = mask.shape[0], mask.shape[1], self.column
        real = mask.bool()[:, None, :, None]  # padding's keys and values as zeros: a masked NaN still spreads
        for layer, keys, values in zip(cache.layers, self.keys, self.values):
            keys[at:at + j, :, c - w:c] = torch.where(real, layer.keys, 0)
            values[at:at + j, :, c - w:c] = torch.where(real, layer.values, 0)
        self.mask[at:at + j] = False
        self.mask[at:at + j, c - w:c] = mask.bool()
        self.n = at + j

    def move(self, movers: list[int], holes: list[int], n: int) -> None:
        """Slots `movers` copied into slots `holes`; n slots left running."""
        if movers:
            src, dst = (torch.tensor(x, device=self.mask.device) for x in (movers, holes))
            for buf in self.keys + self.values + [self.mask]:
                buf[dst] = buf[src]
        self.n = n

    def clear(self) -> None:
        self.n, self.column = 0, 0
        self.mask.zero_()

    def shift(self, by: int) -> None:
        """Every column's contents `by` columns right (left if negative); the spare column stays."""
        if not by:
            return
        for buf in self.keys + self.values:
            buf[:, :, :self.width] = torch.roll(buf[:, :, :self.width], by, dims=2)
        self.mask[:, :self.width] = torch.roll(self.mask[:, :self.width], by, dims=1)
        self.column += by

    def step(self, model, cache_kw: str, last: list[int], graphs: bool):
        """Logits of every slot of the running rows' bucket after their newest tokens."""
        n = self.n
        b = min(_pow2(n), self.rows)
        c = self.column
        self.mask[:n, c] = True  # the new token sees itself, as generate's step does
        self.mask[n:b] = False
        self.mask[n:b, self.width] = True  # dummy rows see the spare column only
        self.ids[:n, 0] = torch.tensor(last, device=self.ids.device)
        self.positions[:b, 0] = (self.mask[:b, :self.width].sum(-1) - 1).clamp(min=0)
        self.at.fill_(c)
        logits = self._replay(b, model, cache_kw) if graphs else self._forward(b, model, cache_kw)
        self.column += 1
        return logits

    def _forward(self, b: int, model, cache_kw: str):
        cache = _SlotCache([k[:b] for k in self.keys], [v[:b] for v in self.values], self.at)
        out = model(input_ids=self.ids[:b], attention_mask=self.mask[:b, None, None, :],
                    position_ids=self.positions[:b], use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        return out.logits[:, -1, :]

    def _replay(self, b: int, model, cache_kw: str):
        if b not in self.recorded:
            self.recorded[b] = self._record(b, model, cache_kw)
        graph, logits = self.recorded[b]
        graph.replay()
        return logits

    def _record(self, b: int, model, cache_kw: str) -> tuple:
        """The bucket's step recorded as a CUDA graph, after two warm-up runs that write the spare column only."""
        c = self.column
        self.at.fill_(self.width)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(b, model, cache_kw)
        torch.cuda.current_stream().wait_stream(side)
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._forward(b, model, cache_kw)
        self.at.fill_(c)
        return graph, logits


class _SlotCache:
    """What transformers' attention layers ask of a cache, over the slots' buffers: each layer's new key and value
    go into the step's column, and the layer attends over all columns (the mask picks each row's)."""

    def __init__(self, keys: list, values: list, at):
        self.keys, self.values, self.at = keys, values, at

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        self.keys[layer_idx].index_copy_(2, self.at, key_states)
        self.values[layer_idx].index_copy_(2, self.at, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2]


def _pow2(n: int) -> int:
    """The bucket of n rows: the next power of two (few buckets, so few graphs)."""
    return 1 << max(0, n - 1).bit_length()
