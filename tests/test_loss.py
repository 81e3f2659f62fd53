"""The target-only loss: a target's loss inside a multi-target sequence equals its loss as a sample of its
own with the same earlier items as history; packed rows keep their sequences apart. (Labels only on targets:
test_tokens.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from helpers import dialogue_timeline, rating_timeline

from usertwin.config import RenderSettings
from usertwin.text.batching import packed_batch, padded_batch
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder
from usertwin.train.model import TargetLoss, batch_tensors


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
