"""A Qwen3-MoE twin: --model random:DIR (seeded random weights of a config), LoRA on attention and the experts'
fused weights (not the router), eager and grouped_mm experts agreeing, and a random base that predict, Twin.load
and export rebuild exactly."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import write_rating_users

from usertwin.cli import main
from usertwin.errors import UsertwinError
from usertwin.model.load import causal_lm, load_model, use_experts
from usertwin.train.trainable import add_lora

LAYERS = 2


def moe_config(vocab: int, **over):
    from transformers import Qwen3MoeConfig

    values = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                  num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  num_experts=8, num_experts_per_tok=2, tie_word_embeddings=False, max_position_embeddings=1024)
    return Qwen3MoeConfig(**(values | over))


def moe_dir(path, tokenizer, **over):
    """DIR for --model random:DIR: a tiny Qwen3-MoE config.json and the test tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    moe_config(len(tokenizer), **over).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory, tokenizer):
    return moe_dir(tmp_path_factory.mktemp("moe") / "shape", tokenizer)


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_random_source_is_seeded_and_leaves_the_callers_random_state(random_dir):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = load_model(f"random:{random_dir}", "float32", attention="sdpa")
    assert torch.equal(torch.get_rng_state(), before)
    b = load_model(f"random:{random_dir}", "float32", attention="sdpa")
    assert type(a).__name__ == "Qwen3MoeForCausalLM"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.model.layers[0].mlp.experts.gate_up_proj.shape == (8, 64, 64)  # experts x 2*moe_intermediate x hidden
    with pytest.raises(UsertwinError, match="nope/config.json does not exist"):
        load_model("random:nope")


def test_all_linear_on_a_moe_adapts_attention_and_experts_not_the_router(random_dir):
    model = add_lora(load_model(f"random:{random_dir}", "float32", attention="sdpa"), r=4, alpha=8, dropout=0.1)
    adapted = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            key = name.replace("base_model.model.model.", "")
            adapted[key] = adapted.get(key, []) + [getattr(module, "parameter_name", "weight")]
    want = {}
    for i in range(LAYERS):
        want |= {f"layers.{i}.self_attn.{p}": ["weight"] for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        # two parameters of one module: peft nests one wrapper in the other
        want[f"layers.{i}.mlp.experts"] = ["down_proj"]
        want[f"layers.{i}.mlp.experts.base_layer"] = ["gate_up_proj"]
    assert adapted == want
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    experts = model.base_model.model.model.layers[0].mlp.experts
    assert q.lora_dropout["default"].p == 0.1  # the linear layers keep --lora_dropout
    assert isinstance(experts.lora_dropout["default"], torch.nn.Identity)  # peft's parameter LoRA has none
    # down_proj: rank 4 for each of the 8 experts, from moe_intermediate_size 32 to hidden 64
    assert experts.lora_A["default"].weight.shape == (4 * 8, 32)
    assert experts.lora_B["default"].weight.shape == (64, 4 * 8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == LAYERS * (4 + 2) * 2 and all(".lora_" in n for n in trainable)

    # one optimizer step moves the experts' adapters and leaves the router (mlp.gate) where it was
    router = model.base_model.model.model.layers[0].mlp.gate.weight
    router_before = router.detach().clone()
    b_before = {n: p.detach().clone() for n, p in model.named_parameters() if "experts" in n and "lora_B" in n}
    assert len(b_before) == LAYERS * 2 and all(not p.any() for p in b_before.values())  # peft starts B at zero
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    lm_loss(model, ids).backward()
    assert router.grad is None and not router.requires_grad
    opt.step()
    assert all(p.any() for n, p in model.named_parameters() if n in b_before)
    assert torch.equal(router, router_before)


def adapted_loss(folder, experts: str, dtype: str, merge: bool = False) -> float:
    """The LM loss of the random base with non-zero adapters on attention and experts."""
    model = load_model(f"random:{folder}", dtype, attention="sdpa")
    use_experts(model, experts)
    torch.manual_seed(1)  # the same lora_A (peft draws it) for every call
    model = add_lora(model, r=4, alpha=8, dropout=0.0)
    assert causal_lm(model).model.layers[1].mlp.experts.get_base_layer().config._experts_implementation == experts
    for n, p in model.named_parameters():  # non-zero adapters, so that they take part in the loss
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    if merge:
        model = model.merge_and_unload()
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return lm_loss(model, ids).item()


def test_eager_and_grouped_mm_experts_give_the_same_loss_with_and_without_adapters(random_dir, tiny_model_dir):
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    plain = {}
    for experts in ("eager", "grouped_mm"):
        model = load_model(f"random:{random_dir}", "float32", attention="sdpa")
        use_experts(model, experts)
        with torch.no_grad():
            plain[experts] = lm_loss(model, ids).item()
    assert plain["eager"] == pytest.approx(plain["grouped_mm"], abs=1e-6)
    # with adapters on attention and experts: both implementations, live or merged into the weights, agree
    live = {experts: adapted_loss(random_dir, experts, "float32") for experts in ("eager", "grouped_mm")}
    assert live["eager"] == pytest.approx(live["grouped_mm"], abs=1e-5)
    assert live["grouped_mm"] == pytest.approx(adapted_loss(random_dir, "grouped_mm", "float32", merge=True), abs=1e-5)
    assert abs(live["grouped_mm"] - plain["grouped_mm"]) > 1e-3  # the adapters take part
    with pytest.raises(UsertwinError, match="--experts eager: Qwen3ForCausalLM has no fused expert weights"):
        use_experts(load_model(str(tiny_model_dir), "float32", attention="sdpa"), "eager")


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory, random_dir):
    tmp = tmp_path_factory.mktemp("moe-run")
    data = write_rating_users(tmp / "r.jsonl", [8, 8, 8], lambda u, i: f"Movie {i} (2000) (Drama): ",
                              lambda u, i: i % 5 + 1)
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--model", f"random:{random_dir}", "--output_dir", str(run),
                 "--max_length", "192", "--max_steps", "2", "--learning_rate", "0.05", "--gradient_checkpointing",
                 "--no-progress", "--cache_dir", str(tmp / "c")]) == 0
    return run


def test_a_random_base_run_predicts_and_exports_base_plus_adapter(moe_run, random_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from usertwin.twin import Twin

    adapter = json.loads((moe_run / "best" / "adapter_config.json").read_text())
    assert sorted(adapter["target_parameters"]) == ["experts.down_proj", "experts.gate_up_proj"]
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--run", str(moe_run), "-o", str(out), "--no-progress", "--no-generate"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["rating"]["probs"]) == 5 for r in rows)

    twin = Twin.load(moe_run, records=moe_run.parent / "r.jsonl")
    ids = torch.tensor([twin.prompt(user="u1", item="Movie 3 (2000) (Drama): ") + twin.engine.continuation_ids("4.0")])
    exported = tmp_path / "model"
    assert main(["export", str(moe_run), "-o", str(exported)]) == 0
    base = load_model(f"random:{random_dir}", "float32", attention="sdpa")
    adapted = PeftModel.from_pretrained(base, str(moe_run / "best")).eval()
    monkeypatch.setitem(sys.modules, "peft", None)  # the export is a plain transformers model
    plain = AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        want, got = adapted(input_ids=ids).logits, plain(input_ids=ids).logits
        assert torch.allclose(twin.engine.model(input_ids=ids).logits, want, atol=1e-4, rtol=0)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    with torch.no_grad(), adapted.disable_adapter():
        assert (adapted(input_ids=ids).logits - want).abs().max() > 1e-3  # the adapter matters
