"""Batches: packed rows (position ids restart per sequence, no padding inside) and dynamically padded rows,
with labels -100 on every padding token."""

from __future__ import annotations

from helpers import rating_timeline

from usertwin.config import RenderSettings
from usertwin.sequences.batching import pack, packed_batch, padded_batch, padded_groups
from usertwin.text.render import Renderer
from usertwin.text.tokens import IGNORE, Encoded, SequenceEncoder


def _seq(ids: list[int], target_from: int) -> Encoded:
    """A sequence whose tokens from `target_from` on are one target (at timeline position 0)."""
    labels = [IGNORE] * target_from + ids[target_from:]
    return Encoded(list(ids), labels, [(0, target_from, len(ids))])


def _lengths(*ns: int) -> list[Encoded]:
    return [_seq(list(range(1, n + 1)), n - 1) for n in ns]


def test_pack_fills_rows_in_order_up_to_the_budget():
    assert pack(_lengths(3, 4, 2, 6, 1), budget=7) == [[0, 1], [2], [3, 4]]
    assert pack(_lengths(2, 10, 2), budget=5) == [[0], [1], [2]]  # too long for the budget: a row of its own
    assert pack([], budget=5) == []


def test_packed_batch_is_one_row_with_positions_restarting_per_sequence():
    a, b = _seq([11, 12, 13], 2), _seq([21, 22, 23, 24], 1)
    batch = packed_batch([a, b])
    assert batch.input_ids == [[11, 12, 13, 21, 22, 23, 24]]
    assert batch.labels == [[IGNORE, IGNORE, 13, IGNORE, 22, 23, 24]]
    assert batch.position_ids == [[0, 1, 2, 0, 1, 2, 3]]
    assert batch.attention_mask is None
    assert (batch.n_tokens, batch.n_target_tokens, batch.n_targets, batch.seq_lens) == (7, 4, 2, [3, 4])


def test_packed_padding_is_one_more_sequence_without_loss():
    a, b = _seq([11, 12, 13], 2), _seq([21, 22], 1)
    batch = packed_batch([a, b], pad_to=8, pad_id=99)
    assert batch.input_ids == [[11, 12, 13, 21, 22, 99, 99, 99]]
    assert batch.labels == [[IGNORE, IGNORE, 13, IGNORE, 22, IGNORE, IGNORE, IGNORE]]
    assert batch.position_ids == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert (batch.n_tokens, batch.n_target_tokens, batch.n_targets, batch.seq_lens) == (5, 2, 2, [3, 2, 3])
    assert packed_batch([a, b], pad_to=4).input_ids == [[11, 12, 13, 21, 22]]  # already longer: no padding


def test_padded_batch_pads_each_row_to_the_longest():
    a, b = _seq([11, 12, 13], 2), _seq([21, 22, 23, 24, 25], 3)
    batch = padded_batch([a, b], pad_id=99)
    assert batch.input_ids == [[11, 12, 13, 99, 99], [21, 22, 23, 24, 25]]
    assert batch.labels == [[IGNORE, IGNORE, 13, IGNORE, IGNORE], [IGNORE, IGNORE, IGNORE, 24, 25]]
    assert batch.position_ids == [[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]
    assert batch.attention_mask == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert (batch.n_tokens, batch.n_target_tokens, batch.n_targets, batch.seq_lens) == (8, 3, 2, None)


def test_padded_groups_keep_rows_times_longest_within_the_budget():
    seqs = _lengths(3, 4, 2, 6, 1)
    groups = padded_groups(seqs, budget=12)
    assert groups == [[0, 1, 2], [3, 4]]
    for g in groups:
        assert len(g) * max(len(seqs[i]) for i in g) <= 12
    assert padded_groups(_lengths(3, 4, 2, 6, 1), budget=10) == [[0, 1], [2], [3], [4]]
    assert padded_groups(_lengths(2, 20, 2), budget=8) == [[0], [1], [2]]  # too long: a group of its own
    assert padded_groups([], budget=8) == []


def test_encoded_sequences_pack_and_pad_to_the_same_tokens(tokenizer):
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    encs = [encoder.encode(rating_timeline(n, user=f"u{n}"), list(range(n)), list(range(1, n))) for n in (3, 5)]
    packed, padded = packed_batch(encs, pad_id=tokenizer.pad_token_id), padded_batch(encs, tokenizer.pad_token_id)
    assert packed.input_ids[0] == encs[0].input_ids + encs[1].input_ids
    assert packed.labels[0] == encs[0].labels + encs[1].labels
    real = [[x for x, m in zip(row, mask) if m] for row, mask in zip(padded.input_ids, padded.attention_mask)]
    assert real == [e.input_ids for e in encs]
    assert packed.n_target_tokens == padded.n_target_tokens == sum(e.n_target_tokens for e in encs)
    assert packed.n_targets == padded.n_targets == 2 + 4
