"""Scaling out on CPU processes (gloo): FSDP2 through accelerate with the shipped config, a Qwen3-MoE-shaped model.

accelerate turns FSDP on only for GPU-like devices (on CPU it would silently run DDP); usertwin.train.setup switches its
state to FSDP when FSDP was asked for, so these runs shard with torch's fully_shard exactly as on GPUs. What a GPU
session must still verify is in benchmarks/multi_gpu.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from proctree import kill_tree, start_killable
from test_train import _args, _cli, _env, _records

ACCELERATE = Path(sys.executable).parent / "accelerate"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _start_killable(cmd):
    """A launcher whose whole tree can be SIGKILLed and reaped (see proctree.become_subreaper)."""
    return start_killable(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _fsdp2_config(tmp_path) -> Path:
    """The shipped configs/accelerate/fsdp2.yaml, but full precision (bf16 autocast on CPU would change the losses
    and the point here is an exact comparison)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs/accelerate/fsdp2.yaml").read_text())
    assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2
    cfg["mixed_precision"] = "no"
    path = tmp_path / "fsdp2-cpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config, port, args):
    return [str(ACCELERATE), "launch", "--config_file", str(config), "--main_process_port", str(port),
            "-m", "usertwin.cli", *args]


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "logs.jsonl").read_text().splitlines()) if "loss" in r]


def _match(one, two, tol=1e-5):
    a = json.loads((one / "summary.json").read_text())
    b = json.loads((two / "summary.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    assert a["steps"] == b["steps"] and a["targets_seen"] == b["targets_seen"]
    la, lb = _losses(one), _losses(two)
    assert len(la) == len(lb) > 3
    assert max(abs(x - y) for x, y in zip(la, lb)) < tol
    assert abs(a["val_loss_after"] - b["val_loss_after"]) < tol
    return a, b


def _moe_dir(path, tokenizer):
    """A randomly initialised Qwen3-MoE-shaped model: 8 experts, 2 active per token, tiny dimensions."""
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                            moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
                            max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_fsdp2_two_processes_match_one_process_and_best_loads_in_one_process(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(30, 20, 16, 12))
    common = ["--max_epochs", "2", "--logging_steps", "1", "--no_lora", "--learning_rate", "0.001",
              "--max_length", "128", "--batch_tokens", "128", "--early_stopping_threshold", "1000",
              "--early_stopping_patience", "5"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(*_args(data, tiny_model_dir, one, *common, "--gradient_accumulation_steps", "2")),
                   check=True, env=_env(), capture_output=True)
    run = subprocess.run(_launch(_fsdp2_config(tmp_path), 29541, _args(data, tiny_model_dir, two, *common)),
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = _match(one, two)
    # the threshold keeps the first evaluation the best: the final evaluation is of restored best/ weights
    assert b["best_step"] == a["best_step"] < b["steps"]
    assert abs(b["val_loss_after"] - b["best_val_loss"]) < 1e-6
    ck = sorted((two / "checkpoints").glob("step-*"))[-1]
    assert (ck / "pytorch_model_fsdp_0").is_dir() and (ck / "random_states_1.pkl").is_file()  # sharded (DCP)
    from safetensors.torch import load_file

    wa, wb = load_file(str(one / "best/model.safetensors")), load_file(str(two / "best/model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5  # full tensors, not shards
    # the best model of the 2-process run loads in ONE process for predict, and scores like the 1-process one
    for run_dir in (one, two):
        subprocess.run(_cli("predict", "--run", str(run_dir), "--split", "test", "--no-generate", "--pick", "0",
                            "--limit", "6", "--no-progress"), check=True, env=_env(), capture_output=True)
    rows = [[json.loads(x) for x in (d / "predictions-test.jsonl").read_text().splitlines()] for d in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 6
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(*rows)) < 1e-4


def test_fsdp2_lora_resume_after_sigkill_gives_the_same_run(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(60, 60, 60))
    common = ["--max_epochs", "1", "--save_steps", "3", "--save_total_limit", "50", "--max_length", "128",
              "--batch_tokens", "128", "--logging_steps", "1", "--lora_dropout", "0", "--learning_rate", "0.002"]
    config = _fsdp2_config(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    run = subprocess.run(_launch(config, 29542, _args(data, tiny_model_dir, full, *common)), env=_env(),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    proc = _start_killable(_launch(config, 29543, _args(data, tiny_model_dir, killed, *common)))
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-6" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    kill_tree(proc)  # the launcher and both ranks
    assert not (killed / "summary.json").exists()
    run = subprocess.run(_launch(config, 29544, [*_args(data, tiny_model_dir, killed, *common), "--resume"]),
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resumed from" in run.stdout
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert b["steps"] == a["steps"] and b["targets_seen"] == a["targets_seen"]
    assert abs(a["val_loss_after"] - b["val_loss_after"]) < 1e-5
    la, lb = _losses(full), _losses(killed)
    assert max(abs(x - y) for x, y in zip(la[-3:], lb[-3:])) < 1e-5  # the steps after the resume
    assert (killed / "best" / "adapter_model.safetensors").is_file()


MOE_EXPERT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def test_moe_lora_targets_and_full_fine_tuning_in_one_process(tmp_path, tokenizer):
    """On transformers 5 the experts are fused 3-D parameters (gate_up_proj, down_proj), not nn.Linear; peft
    reaches them through target_parameters. 'all-linear' is attention + experts, never the router; so are the v4
    projection names."""
    from transformers import AutoModelForCausalLM

    from usertwin.train.trainable import add_lora

    moe = _moe_dir(tmp_path / "moe", tokenizer)
    trainable = {}
    for targets in ("all-linear", MOE_EXPERT_TARGETS, "q_proj,k_proj,v_proj,o_proj"):
        model = add_lora(AutoModelForCausalLM.from_pretrained(moe), 4, 8, 0.0, targets)
        trainable[targets] = {n.split("layers.0.")[1].split(".lora_")[0] for n, p in model.named_parameters()
                              if p.requires_grad and "layers.0." in n}
    attention = {f"self_attn.{x}_proj" for x in "qkvo"}
    experts = {"mlp.experts", "mlp.experts.base_layer"}  # down_proj's wrapper around gate_up_proj's
    assert trainable["all-linear"] == attention | experts  # never the router
    assert trainable[MOE_EXPERT_TARGETS] == attention | experts
    assert trainable["q_proj,k_proj,v_proj,o_proj"] == attention

    data = _records(tmp_path / "r.jsonl", sizes=(20, 16))
    # peft adapts fused parameters only without dropout: the default 0.05 is refused with a clear message
    run = subprocess.run(_cli(*_args(data, moe, tmp_path / "dropout", "--lora_target_modules", MOE_EXPERT_TARGETS)),
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 2 and "needs --lora_dropout 0" in run.stderr and "Traceback" not in run.stderr
    for name, extra in (("lora", ["--lora_target_modules", MOE_EXPERT_TARGETS, "--lora_dropout", "0",
                                  "--learning_rate", "0.002"]),
                        ("full", ["--no_lora", "--learning_rate", "0.001", "--early_stopping_threshold", "1000",
                                  "--early_stopping_patience", "5"])):
        out = tmp_path / name
        run = subprocess.run(_cli(*_args(data, moe, out, "--max_epochs", "2", "--max_length", "128",
                                         "--batch_tokens", "128", *extra)), env=_env(), capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "warning" not in run.stdout
        s = json.loads((out / "summary.json").read_text())
        if name == "lora":
            assert s["val_loss_after"] < s["val_loss_before"]
            assert (out / "best/adapter_model.safetensors").is_file()
        else:  # best/ is in the hub layout (one tensor per expert); the restore fuses it back
            from safetensors import safe_open

            keys = list(safe_open(str(out / "best/model.safetensors"), "pt").keys())
            assert any(".mlp.experts.0." in k for k in keys)
            assert s["best_step"] < s["steps"] and abs(s["val_loss_after"] - s["best_val_loss"]) < 1e-6


def test_moe_fsdp2_two_processes_match_one_process(tmp_path, tokenizer):
    moe = _moe_dir(tmp_path / "moe", tokenizer)
    data = _records(tmp_path / "r.jsonl", sizes=(30, 20, 16, 12))
    config = _fsdp2_config(tmp_path)
    for name, extra in (("full", ["--no_lora", "--learning_rate", "0.001"]),
                        ("lora", ["--lora_target_modules", MOE_EXPERT_TARGETS, "--lora_dropout", "0",
                                  "--learning_rate", "0.002"])):
        common = ["--max_epochs", "1", "--logging_steps", "1", "--max_length", "128", "--batch_tokens", "128", *extra]
        one, two = tmp_path / f"{name}-one", tmp_path / f"{name}-two"
        subprocess.run(_cli(*_args(data, moe, one, *common, "--gradient_accumulation_steps", "2")), check=True,
                       env=_env(), capture_output=True)
        run = subprocess.run(_launch(config, 29545, _args(data, moe, two, *common)), env=_env(), capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        _match(one, two)


def test_deepspeed_zero3_two_processes_match_one_process_resume_and_best(tmp_path, tiny_model_dir):
    """ZeRO-3 with the shipped config on gloo (DeepSpeed's CPU accelerator). DeepSpeed is not a dependency: `pip
    install deepspeed`, or offline the wheels benchmarks/multi_gpu.md's Runbook builds."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed: pip install deepspeed (offline: build its wheels as "
                    "benchmarks/multi_gpu.md's Runbook shows)")
    data = _records(tmp_path / "r.jsonl", sizes=(60, 40, 30, 20))
    common = ["--max_epochs", "2", "--logging_steps", "1", "--no_lora", "--learning_rate", "0.001",
              "--max_length", "128", "--batch_tokens", "128", "--early_stopping_threshold", "1000",
              "--early_stopping_patience", "5", "--save_steps", "4", "--save_total_limit", "50"]
    ds = ["--deepspeed", str(ROOT / "configs/deepspeed/zero3.json")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    subprocess.run(_cli(*_args(data, tiny_model_dir, one, *common, "--gradient_accumulation_steps", "4")),
                   check=True, env=_env(), capture_output=True)
    run = subprocess.run([*torchrun, "--master_port=29546", "-m", "usertwin.cli",
                          *_args(data, tiny_model_dir, two, *common, *ds, "--gradient_accumulation_steps", "2")],
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = _match(one, two)
    assert b["best_step"] == a["best_step"] < b["steps"]  # final evaluation of the restored (gathered) best
    ck = sorted((two / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    assert (ck / "pytorch_model").is_dir()  # DeepSpeed's own (ZeRO-partitioned) checkpoint
    proc = _start_killable([*torchrun, "--master_port=29547", "-m", "usertwin.cli",
                            *_args(data, tiny_model_dir, killed, *common, *ds, "--gradient_accumulation_steps", "2")])
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-8" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    kill_tree(proc)
    run = subprocess.run([*torchrun, "--master_port=29548", "-m", "usertwin.cli",
                          *_args(data, tiny_model_dir, killed, *common, *ds, "--gradient_accumulation_steps", "2"),
                          "--resume"], env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    c = json.loads((killed / "summary.json").read_text())
    assert c["steps"] == b["steps"] and abs(c["val_loss_after"] - b["val_loss_after"]) < 1e-5
    assert max(abs(x - y) for x, y in zip(_losses(two)[-3:], _losses(killed)[-3:])) < 1e-5
    subprocess.run(_cli("predict", "--run", str(two), "--split", "test", "--no-generate", "--pick", "0", "--limit",
                        "4", "--no-progress"), check=True, env=_env(), capture_output=True)
    assert len((two / "predictions-test.jsonl").read_text().splitlines()) == 4
