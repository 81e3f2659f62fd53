"""--lora_precision: LoRA's adapters computed in the model's dtype under autocast (mixed) give the same losses and
gradients as peft's float32 adapters within bfloat16 tolerance, keep float32 weights for the optimizer, and no
longer copy each adapted layer's input to float32."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import tiny_model
from helpers import rating_timeline

from usertwin.config import RenderSettings
from usertwin.sequences.batching import packed_batch
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder
from usertwin.train.trainable import TargetLoss, add_lora, batch_tensors, mixed_precision


def lora_model(tokenizer, precision: str, dtype=torch.bfloat16):
    model = tiny_model("qwen3", len(tokenizer)).to(dtype)
    torch.manual_seed(1)  # the same lora_A for both precisions
    model = add_lora(model, r=8, alpha=16, dropout=0.0)
    for i, (n, p) in enumerate(model.named_parameters()):  # non-zero adapters, so that they take part in the loss
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(i))
    return mixed_precision(model, precision)


def batch(tokenizer):
    encoder = SequenceEncoder(Renderer(RenderSettings(), tokenizer), tokenizer)
    tl = rating_timeline(8)
    return packed_batch([encoder.encode(tl, list(range(8)), [4, 5, 6, 7])])


def loss_and_grads(model, b):
    """The summed target loss, the adapters' gradients, and the dtypes of every lora_A's input."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
             for n, m in model.named_modules() if n.endswith("lora_A.default")]
    loss = TargetLoss(model)(**batch_tensors(b, "cpu")).sum()
    loss.backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, set(seen)


def test_mixed_equals_float32_adapters_within_bf16_tolerance(tokenizer):
    b = batch(tokenizer)
    slow, fast = lora_model(tokenizer, "float32"), lora_model(tokenizer, "mixed")
    loss32, grads32, inputs32 = loss_and_grads(slow, b)
    loss_mixed, grads_mixed, inputs_mixed = loss_and_grads(fast, b)
    assert inputs32 == {torch.float32}  # peft's default: a float32 copy of each input
    assert inputs_mixed == {torch.bfloat16}  # mixed: the input as it is
    assert slow.autocast_dtype is None and fast.autocast_dtype == torch.bfloat16
    # weights (and so the optimizer's state) stay float32 in both
    assert {p.dtype for n, p in fast.named_parameters() if p.requires_grad} == {torch.float32}
    assert loss_mixed == pytest.approx(loss32, rel=1e-2)
    assert grads32.keys() == grads_mixed.keys() and len(grads32) == 2 * 7 * 2  # A and B, 7 layers, 2 blocks
    a = torch.cat([g.flatten() for g in grads32.values()])
    m = torch.cat([grads_mixed[n].flatten() for n in grads32])
    assert torch.nn.functional.cosine_similarity(a, m, dim=0) > 0.999
    assert (a - m).norm() / a.norm() < 0.05


def test_auto_is_mixed_for_bf16_and_nothing_for_float32(tokenizer):
    assert lora_model(tokenizer, "auto").autocast_dtype == torch.bfloat16
    plain = lora_model(tokenizer, "auto", dtype=torch.float32)
    assert plain.autocast_dtype is None  # a float32 model needs no autocast: the adapters are its dtype
    _, _, inputs = loss_and_grads(plain, batch(tokenizer))
    assert inputs == {torch.float32}


def test_fused_adapter_sum_equals_peft_with_dropout_and_steps_aside_when_it_must(tokenizer):
    """_fused_lora (one addmm for the scaling and the sum) gives peft's output and gradients, dropout included
    (the same random draws, in the same order); merged or switched-off adapters take peft's forward."""
    from peft.tuners.lora import Linear

    from usertwin.train.trainable import _fused_lora

    model = tiny_model("qwen3", len(tokenizer))
    torch.manual_seed(1)
    model = add_lora(model, r=8, alpha=16, dropout=0.3).train()
    layer = next(m for m in model.modules() if isinstance(m, Linear))
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    x = torch.randn(3, 5, layer.in_features, requires_grad=True)
    outs, grads = [], []
    for fused in (False, True):
        torch.manual_seed(7)
        out = _fused_lora(layer, layer.forward, x) if fused else layer(x)
        (g,) = torch.autograd.grad((out ** 2).sum(), [layer.lora_B["default"].weight])
        outs.append(out)
        grads.append(g)
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(grads[0], grads[1], atol=1e-5)
    with model.disable_adapter():
        assert torch.equal(_fused_lora(layer, layer.forward, x), layer.base_layer(x))
    mixed = lora_model(tokenizer, "mixed")
    fused = [m for m in mixed.modules() if isinstance(m, Linear)]
    assert fused and all(isinstance(m.__dict__.get("forward"), functools.partial) for m in fused)
