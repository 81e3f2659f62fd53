"""--attention varlen: the plumbing around torch's variable-length flash kernel (boundaries from the packer,
head layout, grouped key/value heads, both spellings of "causal"), checked on the CPU against sdpa with
transformers' packed-row masks. The kernel itself is CUDA-only; here a reference (causal sdpa on each
sequence separately) stands in for it, so a wrong boundary, transpose or head grouping changes the losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from helpers import rating_timeline

from usertwin.config import RenderSettings
from usertwin.model import attention
from usertwin.sequences.batching import packed_batch, padded_batch
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder
from usertwin.train.trainable import TargetLoss, batch_tensors

calls = []


def _segments(q, k, v, cu, scale, gqa):
    out = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                  enable_gqa=gqa).transpose(0, 1))
    return torch.cat(out)


def new_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch >= 2.12 spelling: window_size=(-1, 0) is causal, grouped heads allowed."""
    assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and max_q == int((cu_q[1:] - cu_q[:-1]).max())
    calls.append(("new", q.shape[1], k.shape[1]))
    return _segments(q, k, v, cu_q, scale, enable_gqa)


def old_kernel(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False, scale=None):
    """torch 2.10/2.11 spelling: is_causal, no grouped heads (keys/values must be repeated)."""
    assert is_causal and q.shape[1] == k.shape[1]
    calls.append(("old", q.shape[1], k.shape[1]))
    return _segments(q, k, v, cu_q, scale, False)


def _losses(model, batch, boundaries):
    with torch.no_grad():
        return TargetLoss(model).eval()(**batch_tensors(batch, "cpu", boundaries))


@pytest.mark.parametrize("kernel", [new_kernel, old_kernel])
def test_varlen_packed_losses_equal_sdpa(kernel, tokenizer, monkeypatch):
    monkeypatch.setattr(attention, "_kernel", lambda: kernel)
    attention.register()
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    encs = [encoder.encode(rating_timeline(n, user=f"u{n}"), list(range(n)), list(range(1, n))) for n in (3, 6, 4)]
    batch = packed_batch(encs, pad_to=sum(len(e) for e in encs) + 7)  # with a padding "sequence" at the end
    model = tiny_model("qwen3", len(tokenizer))  # 4 query heads sharing 2 key/value heads
    expected = _losses(model, batch, boundaries=False)  # sdpa + transformers' block mask
    model.set_attn_implementation(attention.NAME)
    calls.clear()
    got = _losses(model, batch, boundaries=True)
    assert calls and calls[0][1] == 4 and calls[0][2] == (2 if kernel is new_kernel else 4)
    assert len(calls) == 2  # one kernel call per layer: the boundaries came from the packer
    assert got.shape == expected.shape == (sum(e.n_target_tokens for e in encs),)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # without the boundaries the function finds them from the restarting positions (slow path), same result
    calls.clear()
    assert torch.allclose(_losses(model, batch, boundaries=False), expected, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2
    # a wrong boundary (two sequences seen as one) changes the losses: the check above can fail
    wrong = packed_batch(encs)
    wrong.seq_lens = [len(encs[0]) + len(encs[1]), len(encs[2])]
    assert not torch.allclose(_losses(model, wrong, True), _losses(model, packed_batch(encs), True), atol=1e-3)


def test_varlen_padded_batches_fall_back_to_sdpa(tokenizer, monkeypatch):
    monkeypatch.setattr(attention, "_kernel", lambda: new_kernel)
    attention.register()
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    encs = [encoder.encode(rating_timeline(n, user=f"u{n}"), list(range(n)), [n - 1]) for n in (3, 6)]
    model = tiny_model("qwen3", len(tokenizer))
    expected = _losses(model, padded_batch(encs), False)
    model.set_attn_implementation(attention.NAME)
    calls.clear()
    assert torch.allclose(_losses(model, padded_batch(encs), True), expected, atol=1e-5)
    assert calls == []  # padded rows never reach the varlen kernel


def test_varlen_needs_cuda_and_packing(tiny_model_dir):
    from usertwin.errors import UsertwinError
    from usertwin.model.load import load_model, pick_attention

    if not torch.cuda.is_available():
        with pytest.raises(UsertwinError, match="needs a CUDA GPU"):
            load_model(str(tiny_model_dir), "float32", attention="varlen")
        assert pick_attention(packed=True) == "sdpa"


def test_liger_kernel_without_the_package_is_a_clear_error(monkeypatch):
    import sys

    from usertwin.errors import UsertwinError
    from usertwin.model.load import apply_liger

    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(UsertwinError, match="--liger_kernel needs the liger-kernel package"):
        apply_liger(tiny_model("qwen3", 64))


def test_liger_kernel_is_on_by_default_on_a_gpu_where_installed(monkeypatch):
    import importlib.util
    import types

    from usertwin.config import Config
    from usertwin.model import load

    assert Config().liger_kernel is None  # unset: decided by the machine
    monkeypatch.setattr(load.torch.cuda, "is_available", lambda: False)
    assert load.liger_choice(None) == (False, "")  # a CPU: off, nothing said
    monkeypatch.setattr(load.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    on, why = load.liger_choice(None)
    assert not on and "pip install 'usertwin[gpu]'" in why and "--no_liger_kernel" in why
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: types.SimpleNamespace(name=name))
    on, why = load.liger_choice(None)
    assert on and why.startswith("liger-kernel: fused RMSNorm, SwiGLU and RoPE on")
    assert load.liger_choice(False) == (False, "") and load.liger_choice(True) == (True, "")


def test_no_liger_kernel_flag_turns_it_off():
    from usertwin.cli import build_parser
    from usertwin.config import resolve

    parser = build_parser()
    assert resolve(parser.parse_args(["train", "--data", "x.jsonl", "--no_liger_kernel"])).liger_kernel is False
    assert resolve(parser.parse_args(["train", "--data", "x.jsonl", "--liger_kernel"])).liger_kernel is True
    assert resolve(parser.parse_args(["train", "--data", "x.jsonl"])).liger_kernel is None
