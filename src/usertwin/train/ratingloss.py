"""The optional loss on the rating itself (--rating_loss_weight): the squared error of the expected rating.

Scheme (the simplest one that is exact in one forward pass). Every value of the rating scale is tokenized as
training renders its target (the value's text, then the end of turn). The *decision position* is the first
token position k at which the values' token sequences all differ, provided they share every token before k:
"1" ... "5" and "1.0" ... "5.0" under SmolLM2's one-digit tokens decide at k = 0. There, teacher forcing gives
the model's distribution after exactly the prefix every value shares, so the probabilities of the values'
tokens at k, renormalised over the scale, are the scale's distribution that one forward can give without
approximation; the expected rating is sum(p_v * v). What follows the decision token (".0", the end of turn)
is left to the language-model loss.

A scale whose values share a first token but differ later at different places (half stars "0.5" ... "5.0":
"4.0" and "4.5" share "4", "4.0" and "5.0" differ at once) has no such position: teacher forcing sees the
second digit only after the *true* first digit, so the other values' full likelihoods would need a forward
of their own. Such a scale is refused with a message rather than approximated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from usertwin.errors import UsertwinError
from usertwin.text.tokens import Encoded, encode_many


@dataclass(frozen=True)
class ScaleTokens:
    """A rating scale as the loss reads it: at `offset` tokens into a rating's target, token `tokens[i]`
    means value `values[i]`; every value's target starts with `prefix`."""

    texts: tuple
    values: tuple
    prefix: tuple
    offset: int
    tokens: tuple

    def value_of_token(self, token: int) -> float | None:
        return dict(zip(self.tokens, self.values)).get(token)


@dataclass
class Rated(Encoded):
    """An encoded sequence with its rating targets: [(index of the decision token in the sequence, true value)]."""

    ratings: list = None


def scale_tokens(scale: list[str] | None, tokenizer, eot: str) -> ScaleTokens:
    """The scale's decision position and tokens, or a UsertwinError that says why the loss cannot apply."""
    if not scale or len(scale) < 2:
        raise UsertwinError(f"--rating_loss_weight needs a numeric rating scale of at least two values in the "
                            f"data (ratings written as numbers, at most 40 distinct); found {scale!r}")
    seqs = encode_many(tokenizer, [t + eot for t in scale])
    for k in range(min(len(s) for s in seqs)):
        if any(s[:k] != seqs[0][:k] for s in seqs):
            break
        at = [s[k] for s in seqs]
        if len(set(at)) == len(at):
            return ScaleTokens(tuple(scale), tuple(float(t) for t in scale), tuple(seqs[0][:k]), k, tuple(at))
    shown = "; ".join(f"{t!r}: {tokenizer.convert_ids_to_tokens(s)}" for t, s in zip(scale, seqs))
    raise UsertwinError("--rating_loss_weight: the rating scale has no token position where every value differs "
                        f"after a prefix they all share ({shown}); the loss needs such a scale (e.g. whole "
                        "numbers 1 ... 5); leave --rating_loss_weight 0 for this data")


def rated(encoded: Encoded, tl, scale: ScaleTokens) -> Rated:
    """`encoded` (a window of timeline `tl`) with the decision token and the true value of each rating target."""
    marks = []
    for pos, start, end in encoded.targets:
        item = tl.items[pos]
        if not item.is_rating:
            continue
        tokens = encoded.input_ids[start:end]
        k = scale.offset
        value = scale.value_of_token(tokens[k]) if len(tokens) > k and tuple(tokens[:k]) == scale.prefix else None
        if value is None or value != float(item.continuation):
            raise UsertwinError(f"--rating_loss_weight: user {tl.user_id!r}, item {pos} ({item.collection}): the "
                                f"rating {item.continuation!r} is not written as the scale writes it "
                                f"({', '.join(scale.texts)})")
        marks.append((start + k, value))
    return Rated(encoded.input_ids, encoded.labels, encoded.targets, marks)


def squared_errors(logits: torch.Tensor, values: torch.Tensor, scale: ScaleTokens) -> torch.Tensor:
    """(expected rating - true rating)^2 per rating target; logits: the decision tokens' rows (n x vocab)."""
    return (expected_ratings(logits, scale) - values) ** 2


def expected_ratings(logits: torch.Tensor, scale: ScaleTokens) -> torch.Tensor:
    """sum(p_v * v), p: the softmax of the logits over the scale's decision tokens (renormalised on the scale)."""
    tokens = torch.tensor(scale.tokens, device=logits.device)
    probs = torch.softmax(logits.float().index_select(1, tokens), dim=-1)
    return probs @ torch.tensor(scale.values, dtype=probs.dtype, device=logits.device)
