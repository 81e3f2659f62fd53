"""A MoE's expert adapters as grouped products (train/moelora.py) give peft's losses and gradients without
building W + BA, and step aside where peft's path is wanted (merged, adapters off, eager experts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from test_moe import moe_config  # noqa: E402

from usertwin.model.load import use_experts  # noqa: E402
from usertwin.train.moelora import group_lora_experts  # noqa: E402
from usertwin.train.trainable import add_lora  # noqa: E402


def adapted(tokenizer, grouped: bool, experts: str = "grouped_mm", dtype=torch.float32):
    from peft.tuners.lora import ParamWrapper
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(moe_config(len(tokenizer)), dtype=dtype, attn_implementation="sdpa")
    use_experts(model, experts)
    torch.manual_seed(1)  # the same lora_A for both paths
    original = ParamWrapper.forward
    model = add_lora(model, r=4, alpha=8, dropout=0.0, grouped_experts=grouped)
    assert ParamWrapper.forward is original
    for i, (n, p) in enumerate(model.named_parameters()):  # non-zero adapters, so that they take part
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(i))
    return model


def loss_and_grads(model):
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_grouped_expert_adapters_equal_peft_without_building_the_delta_weights(tokenizer, monkeypatch):
    peft_loss, peft_grads = loss_and_grads(adapted(tokenizer, grouped=False))
    model = adapted(tokenizer, grouped=True)
    from peft.tuners.lora import ParamWrapper

    def refuse(*a, **k):
        raise AssertionError("W + BA built")
    monkeypatch.setattr(ParamWrapper, "get_delta_weight", refuse)
    loss, grads = loss_and_grads(model)
    assert loss == pytest.approx(peft_loss, abs=1e-5)
    experts = [n for n in grads if "experts" in n]
    assert len(experts) == 2 * 2 * 2  # A and B of gate_up_proj and down_proj, 2 layers
    assert grads.keys() == peft_grads.keys()
    for n in grads:
        assert torch.allclose(grads[n], peft_grads[n], atol=1e-5, rtol=1e-4), n


def test_merged_or_disabled_adapters_and_eager_experts_take_peft_path(tokenizer):
    model = adapted(tokenizer, grouped=True)
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        live = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        assert (live - base).abs().max() > 1e-3  # the adapters take part
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(live, merged, atol=1e-5)
    assert group_lora_experts(adapted(tokenizer, grouped=False)) == 2  # one per MoE layer
    eager = adapted(tokenizer, grouped=True, experts="eager")  # --experts eager: peft's path, as asked
    assert all("partial" not in type(m.__dict__.get("forward")).__name__ for m in eager.modules())


def test_bfloat16_grouped_adapters_stay_close_to_peft(tokenizer):
    peft_loss, _ = loss_and_grads(adapted(tokenizer, grouped=False, dtype=torch.bfloat16))
    loss, grads = loss_and_grads(adapted(tokenizer, grouped=True, dtype=torch.bfloat16))
    assert loss == pytest.approx(peft_loss, rel=2e-2)
    assert all(torch.isfinite(g).all() for g in grads.values())
