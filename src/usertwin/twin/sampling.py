"""How a twin draws its tokens: logits processors that make a row's text depend on its own seed and prompt
only (never on the batch it ran in), with vLLM's repetition penalty, temperature, top-k and top-p; and a
stopping criterion for rows nobody waits for."""

from __future__ import annotations

import torch

from usertwin.config import GenerateSettings


def until_end(ids: list[int], eot: int, pad: int) -> list[int]:
    """A row's generated tokens up to and with its end-of-turn (the padding after it dropped)."""
    for i, t in enumerate(ids):
        if t == eot:
            return ids[:i + 1]
        if t == pad:
            return ids[:i]
    return ids


class RepetitionPenalty:
    """A logits processor with vLLM's (and the seeds' scripts') repetition penalty: the logit of every token that
    occurs in the row's own prompt or generation is divided by `penalty` when positive, multiplied when negative.
    A row's padding (left, or between a shared beginning and its tail: twin/prefix.py) is not its prompt: it is
    never counted, so a row is penalised the same in any batch (transformers' own processor counts the padding,
    which may be the end-of-turn token). `real`: rows x prompt width, true at the row's own tokens."""

    def __init__(self, penalty: float, real):
        self.penalty, self.real = penalty, torch.as_tensor(real, dtype=torch.bool)

    def __call__(self, input_ids, scores):
        if self.real.device != input_ids.device:
            self.real = self.real.to(input_ids.device)
        new = input_ids.shape[1] - self.real.shape[1]
        own = torch.cat([self.real, self.real.new_ones(self.real.shape[0], new)], dim=1)
        # padding positions repeat the row's last token, which is counted anyway
        return penalise(scores, torch.where(own, input_ids, input_ids[:, -1:]), self.penalty)


def penalise(scores, ids, penalty: float):
    """`scores` with the logit of every token of `ids` (rows x tokens, repeats allowed) divided by `penalty` when
    positive, multiplied when negative: one rule for generate's processor and the continuous decoder."""
    seen = scores.gather(1, ids)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return scores.scatter(1, ids, seen)


class SeededSampler:
    """A logits processor that draws each row's next token by inverse-CDF sampling from temperature-, top-k-
    and top-p-shaped probabilities (top-k first, then top-p on what it keeps, as vLLM and transformers do),
    with one uniform number per row and step taken from the row's own generator, and leaves only that token
    possible. Rows never share random numbers, so a row's text depends on its seed and its prompt only, not on
    the batch it ran in."""

    def __init__(self, seeds: list[int], gen: GenerateSettings, prompt_width: int):
        self.temperature, self.top_p, self.top_k, self.width = gen.temperature, gen.top_p, gen.top_k, prompt_width
        self.uniform = torch.stack([uniforms(s, gen.max_new_tokens) for s in seeds])

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.width
        if self.uniform.device != scores.device:  # once: no host-to-device copy per step
            self.uniform = self.uniform.to(scores.device)
        pick = draw(scores, self.uniform[:, step, None], self.temperature, self.top_p, self.top_k)
        return torch.full_like(scores, float("-inf"), dtype=torch.float32).scatter_(1, pick, 0.0)


def uniforms(seed: int, steps: int):
    """A row's uniform numbers, one per step, from its own generator."""
    # 1 - rand: in (0, 1], so a token of probability 0 at the start of the order is never drawn
    return 1 - torch.rand(steps, generator=torch.Generator().manual_seed(int(seed) % 2**63), dtype=torch.float64)


def draw(scores, u, temperature: float, top_p: float, top_k: int):
    """Each row's token (rows x 1) drawn by inverse CDF with its uniform number `u` (rows x 1): one rule for
    generate's processor (SeededSampler) and the continuous decoder, so both draw the same tokens."""
    scores = scores.float()
    if 0 < top_k < scores.shape[-1]:  # the k likeliest tokens; ties at the k-th all stay, as in vLLM
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores / temperature, dim=-1)
    order = None
    if top_p < 1.0:  # the smallest set of likeliest tokens whose mass reaches top_p
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.double().cumsum(-1)
    pick = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=cdf.shape[-1] - 1)
    return order.gather(1, pick) if order is not None else pick


class GiveUp:
    """A stopping criterion (transformers calls it after every step): a row whose request nobody waits for any
    more is finished, so it stops costing steps, and generate ends when every row is. Filler rows (a static
    cache's bucket) give up with the last real row."""

    def __init__(self, gone: list, rows: int):
        self.gone, self.fill = gone, rows - len(gone)

    def __call__(self, input_ids, scores, **kwargs):
        done = [g() for g in self.gone]
        return torch.tensor(done + [all(done)] * self.fill, device=input_ids.device)
