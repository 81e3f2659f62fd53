"""Encoded sequences -> batches: packed rows (padding-free) or dynamically padded rows."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

from usertwin.text.tokens import IGNORE, Encoded


@dataclass
class Batch:
    """Either one packed row (several sequences, position_ids restart per sequence, no padding) or a padded
    batch (one sequence per row, attention_mask)."""

    input_ids: list  # rows
    labels: list
    position_ids: list
    attention_mask: list | None
    n_target_tokens: int
    n_tokens: int  # real (non-padding) tokens
    n_targets: int
    seq_lens: list | None = None  # packed row: the lengths of its sequences (padding counts as one more)
    # --rating_loss_weight: [(row, column of a rating's decision token, true rating)]; None: the loss is off
    ratings: list | None = None


def pack(encoded: list[Encoded], budget: int) -> list[list[int]]:
    """Group sequence indices into rows of at most `budget` tokens, keeping the given order (first fit on the
    open row; a sequence longer than the budget gets a row of its own)."""
    rows, row, used = [], [], 0
    for i, e in enumerate(encoded):
        n = len(e)
        if row and used + n > budget:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def packed_batch(seqs: list[Encoded], pad_to: int | None = None, pad_id: int = 0) -> Batch:
    ids, labels, pos = [], [], []
    for e in seqs:
        ids.extend(e.input_ids)
        labels.extend(e.labels)
        pos.extend(range(len(e)))
    n_tokens = len(ids)
    seq_lens = [len(e) for e in seqs]
    if pad_to and len(ids) < pad_to:
        # padding as one more "sequence" (positions restart at 0) that carries no loss
        extra = pad_to - len(ids)
        ids.extend([pad_id] * extra)
        labels.extend([IGNORE] * extra)
        pos.extend(range(extra))
        seq_lens.append(extra)
    return Batch([ids], [labels], [pos], None, sum(e.n_target_tokens for e in seqs), n_tokens,
                 sum(len(e.targets) for e in seqs), seq_lens,
                 _ratings(seqs, [0] * len(seqs), [0, *accumulate(seq_lens)]))


def padded_batch(seqs: list[Encoded], pad_id: int = 0) -> Batch:
    width = max(len(e) for e in seqs)
    ids, labels, pos, mask = [], [], [], []
    for e in seqs:
        extra = width - len(e)
        ids.append(e.input_ids + [pad_id] * extra)
        labels.append(e.labels + [IGNORE] * extra)
        pos.append(list(range(len(e))) + [0] * extra)
        mask.append([1] * len(e) + [0] * extra)
    return Batch(ids, labels, pos, mask, sum(e.n_target_tokens for e in seqs), sum(len(e) for e in seqs),
                 sum(len(e.targets) for e in seqs), ratings=_ratings(seqs, range(len(seqs)), [0] * len(seqs)))


def _ratings(seqs: list, rows, starts) -> list | None:
    """The batch's rating marks, from sequences that carry them (train/ratingloss.Rated), else None."""
    if not seqs or getattr(seqs[0], "ratings", None) is None:
        return None
    return [(r, start + col, value) for e, r, start in zip(seqs, rows, starts) for col, value in e.ratings]


def padded_groups(encoded: list[Encoded], budget: int) -> list[list[int]]:
    """Dynamic padding: consecutive sequences while (rows x longest) stays within the token budget."""
    groups, group, longest = [], [], 0
    for i, e in enumerate(encoded):
        width = max(longest, len(e))
        if group and width * (len(group) + 1) > budget:
            groups.append(group)
            group, width = [], len(e)
        group.append(i)
        longest = width
    if group:
        groups.append(group)
    return groups
