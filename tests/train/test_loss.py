"""The target-only loss: a target's loss inside a multi-target sequence equals its loss as a sample of its
own with the same earlier items as history; packed rows keep their sequences apart. (Labels only on targets:
test_tokens.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from helpers import conversation_timeline, dialogue_timeline, rating_timeline

from usertwin.config import Config, RenderSettings
from usertwin.data.timeline import build_windows
from usertwin.sequences.batching import packed_batch, padded_batch
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder, measure
from usertwin.train.trainable import TargetLoss, batch_tensors


def _per_target(loss_model, batch, encs):
    """Per-target mean loss from one batch of encoded sequences (packed or padded)."""
    with torch.no_grad():
        losses = loss_model(**batch_tensors(batch, "cpu"))
    out, k = {}, 0
    for e in encs:
        for pos, start, end in e.targets:
            n = end - start
            out[pos] = losses[k:k + n].mean().item()
            k += n
    assert k == len(losses)
    return out


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
@pytest.mark.parametrize("make_tl", [rating_timeline, dialogue_timeline])
def test_timeline_loss_equals_sample_loss(kind, make_tl, tokenizer):
    """Each target's loss in one multi-target sequence == its loss as its own sample with the same earlier
    items as history (float32, relative difference <= 1e-4)."""
    tl = make_tl(8)
    model = TargetLoss(tiny_model(kind, len(tokenizer))).eval()
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    window = encoder.encode(tl, list(range(8)), [3, 4, 5, 6, 7])
    multi = _per_target(model, packed_batch([window]), [window])
    for k in range(3, 8):
        sample = encoder.encode(tl, list(range(k + 1)), [k])
        single = _per_target(model, packed_batch([sample]), [sample])[k]
        assert abs(multi[k] - single) / abs(single) <= 1e-4, (k, multi[k], single)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_dialogue_window_loss_equals_sample_loss(kind, tokenizer):
    """Dialogue windows render each turn of a conversation once: a line's loss there == its loss as its own
    sample (its conversation's turns then the line, the same earlier items as history). Windows as prepare
    builds them (conversations cut at turn boundaries, max_context_turns 4), packed into one row."""
    tl = conversation_timeline((5, 7, 6), lead=3)
    renderer = Renderer(Config(max_context_turns=4), tokenizer)
    encoder = SequenceEncoder(renderer, tokenizer)
    ln = measure(renderer, tokenizer, tl)
    labels = ["val"] * 2 + ["train"] * (len(tl.items) - 2)  # the first lines are history only
    windows = build_windows(tl, labels, "train", ln.blocks(), ln.header, ln.join, 300, follow=ln.follow_blocks())
    assert len(windows) >= 3 and any(tl.conversations.start[w.items[0]] < w.items[0] for w in windows)
    encs = [encoder.encode(tl, w.items, w.targets) for w in windows]
    samples = [encoder.encode(tl, w.items[:w.items.index(t) + 1], [t]) for w in windows for t in w.targets]
    starts = [e.input_ids for e, w in zip(encs, windows) for _ in w.targets]
    assert all(w[:len(s.input_ids)] == s.input_ids for w, s in zip(starts, samples))  # token-identical prefixes
    model = TargetLoss(tiny_model(kind, len(tokenizer))).eval()
    multi = _per_target(model, packed_batch(encs), encs)
    single = _per_target(model, packed_batch(samples), samples)
    assert sorted(multi) == sorted(single) == list(range(2, len(tl.items)))
    for k, loss in single.items():
        assert abs(multi[k] - loss) / abs(loss) <= 1e-4, (k, multi[k], loss)


def test_packed_rows_isolate_sequences(tokenizer):
    """Packing several sequences into one row gives the same per-target losses as running them padded
    (one per row, attention mask) -- so attention does not leak across packed sequences."""
    model = TargetLoss(tiny_model("qwen3", len(tokenizer))).eval()
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    encs = [encoder.encode(rating_timeline(n, user=f"u{n}"), list(range(n)), list(range(1, n)))
            for n in (3, 6, 4)]
    flat_packed = _per_target_list(model, packed_batch(encs), encs)
    flat_alone = [v for e in encs for v in _per_target_list(model, packed_batch([e]), [e])]
    flat_padded = _per_target_list(model, padded_batch(encs), encs)
    assert len(flat_packed) == len(flat_alone) == len(flat_padded) == 2 + 5 + 3
    for a, b, c in zip(flat_packed, flat_alone, flat_padded):
        assert abs(a - b) <= 1e-5 * max(1, abs(b)) and abs(c - b) <= 1e-5 * max(1, abs(b))
    # and without the restart of position_ids the sequences would see each other: the losses change
    batch = packed_batch(encs)
    batch.position_ids = [list(range(len(batch.input_ids[0])))]
    leaked = _per_target_list(model, batch, encs)
    assert max(abs(a - b) for a, b in zip(leaked, flat_alone)) > 1e-3


def _per_target_list(loss_model, batch, encs):
    with torch.no_grad():
        losses = loss_model(**batch_tensors(batch, "cpu"))
    out, k = [], 0
    for e in encs:
        for _, start, end in e.targets:
            out.append(losses[k:k + end - start].mean().item())
            k += end - start
    return out


def _reference_tensors(batch) -> tuple[list, list, list]:
    """The target positions, labels and rating rows batch_tensors must give, by plain loops over the lists."""
    index, targets = [], []
    for r, row in enumerate(batch.labels):
        width = len(row) - 1
        for j in range(width):
            if row[j + 1] != -100:
                index.append(r * width + j)
                targets.append(row[j + 1])
    width = len(batch.labels[0]) - 1
    rating_rows = [index.index(r * width + col - 1) for r, col, _ in batch.ratings or []]
    return index, targets, rating_rows


def test_batch_tensors_match_plain_loops():
    """Padded rows with ratings and a packed row: positions, labels and rating rows as the loops give them;
    padded rows of unequal real length keep their mask."""
    from usertwin.sequences.batching import Batch

    labels = [[-100, 5, 6, -100, 7], [-100, -100, 8, 9, -100]]
    padded = Batch([[1, 2, 3, 4, 5], [0, 0, 6, 7, 8]], labels, [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]],
                   [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], 5, 8, 2, ratings=[(0, 4, 4.0), (1, 3, 2.5)])
    t = batch_tensors(padded, "cpu")
    index, targets, rating_rows = _reference_tensors(padded)
    assert t["target_index"].tolist() == index == [0, 1, 3, 5, 6]
    assert t["target_labels"].tolist() == targets == [5, 6, 7, 8, 9]
    assert t["rating_rows"].tolist() == rating_rows == [2, 4]
    assert t["rating_values"].tolist() == [4.0, 2.5]
    assert t["attention_mask"].tolist() == padded.attention_mask and t["input_ids"].dtype == torch.long
    packed = Batch([[1, 2, 3, 4, 5, 6]], [[-100, 2, 3, -100, 5, 6]], [[0, 1, 2, 0, 1, 2]], None, 4, 6, 2,
                   seq_lens=[3, 3])
    t = batch_tensors(packed, "cpu", boundaries=True)
    assert t["target_index"].tolist() == _reference_tensors(packed)[0] == [0, 1, 3, 4]
    assert t["cu_seq_lens"].tolist() == [0, 3, 6] and t["max_length"] == 3
    assert t["position_ids"].tolist() == packed.position_ids
