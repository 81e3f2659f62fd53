"""Several processes vs one, the same global batch. Runbook and results: benchmarks/multi_gpu.md.

    python3 benchmarks/multi_gpu.py --out $OUT --nproc 2 --steps 50 --shape qwen3-0.6b --modes ddp,fsdp2,zero3

For each mode: a 1-process reference with gradient_accumulation_steps = nproc x --accum, then `usertwin train` on
--nproc processes with --accum, both for --steps optimizer steps on the same data and seed (logging every step);
then the same multi-process run killed by SIGKILL at a checkpoint and continued with --resume; then `usertwin
predict` in ONE process on each run's best/. Printed and written to OUT/multi_gpu.json: the max difference of the
per-step losses and of the final validation loss, tokens/s (all processes, and per process), the peak memory of each
process, the resume's and the predictions' differences, and the error of whatever failed.

Modes: ddp (torchrun), fsdp2 (accelerate launch with configs/accelerate/fsdp2.yaml, mixed_precision "no" so that
it compares with the reference's precision), zero3 (torchrun + --deepspeed configs/deepspeed/zero3.json).
--longest: the longest timeline window that trains under FSDP2 for the shape, with gradient checkpointing.
On a machine without a GPU every run uses gloo CPU processes (--shape tiny): a check of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import SHAPES as DENSE  # noqa: E402  (the published Qwen3 dimensions, one place)

sys.path.insert(0, str(ROOT / "tests"))
from proctree import become_subreaper, kill_tree  # noqa: E402  (one process-tree killer, shared with the tests)

SHAPES = {
    **DENSE,
    # Qwen3-30B-A3B's layer (hidden 2048, 32 heads, 4 KV heads, expert width 768) with 8 experts, 2 active, 24 layers
    "qwen3-moe": dict(moe=True, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                      num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                      num_experts=8, num_experts_per_tok=2),
    "tiny-moe": dict(moe=True, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2),
}
MOE_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # attention + experts, no router


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", NCCL_NVLS_ENABLE="0",
             TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def make_inputs(work: Path, shape: str, users: int, items: int) -> tuple[Path, Path]:
    """A randomly initialised model of the shape with a small BPE tokenizer, and rating records."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tokenizer

    model_dir, data = work / f"model-{shape}", work / "records.jsonl"
    if not (model_dir / "config.json").is_file():
        tok = make_tokenizer()
        dims = dict(SHAPES[shape])
        config = (Qwen3MoeConfig if dims.pop("moe", False) else Qwen3Config)(
            vocab_size=len(tok), max_position_embeddings=262144, tie_word_embeddings=False, **dims)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    with open(data, "w", encoding="utf-8") as f:
        for u in range(users):
            rows = [{"continuation_prefix": f"Movie {(i * 7 + u) % 97} (19{(i + u) % 100:02d}) (Drama): ",
                     "continuation": f"{(i * (u + 1)) % 5 + 1}.0", "timestamp": 1_000_000 + 60 * i}
                    for i in range(items)]
            f.write(json.dumps({"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}", "age": 20 + u % 40}},
                                "task": {"description": "Predict ratings.", "language": "en",
                                         "task_behavior_collections": [{"type": "movie_rating", "data": rows}]}})
                    + "\n")
    return model_dir, data


def fsdp2_config(work: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "configs/accelerate/fsdp2.yaml").read_text())
    cfg["mixed_precision"] = "no"  # the model's own dtype, as in the 1-process reference
    path = work / "fsdp2.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launcher(mode: str, nproc: int, port: int, work: Path) -> list[str]:
    if mode == "fsdp2":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(fsdp2_config(work)),
                "--num_processes", str(nproc), "--main_process_port", str(port), "-m", "usertwin.cli"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
            "-m", "usertwin.cli"]


def train_args(a, model, data, out, accum, mode=None, extra=()) -> list[str]:
    args = ["train", "--data", str(data), "--model", str(model), "--output_dir", str(out), "--max_length",
            str(a.max_length), "--batch_tokens", str(a.max_length), "--max_steps", str(a.steps), "--max_epochs", "100",
            "--logging_steps", "1", "--eval_steps", str(a.save_steps), "--save_steps", str(a.save_steps),
            "--save_total_limit", "100", "--learning_rate", str(a.lr), "--seed", "7", "--dtype", a.dtype,
            "--gradient_accumulation_steps", str(accum), "--no-progress", "--overwrite"]
    if a.lora:
        args += ["--lora_dropout", "0"] + (["--lora_target_modules", MOE_TARGETS] if "moe" in a.shape else [])
    else:
        args += ["--no_lora"]
    if mode == "zero3":
        args += ["--deepspeed", str(ROOT / "configs/deepspeed/zero3.json")]
    return args + list(extra)


def run(cmd, log: Path, timeout: int) -> tuple[int, float]:
    t = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, round(time.time() - t, 1)


def last_error(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if "Error" in x or "error:" in x]
    return lines[-1][-400:] if lines else f"see {log}"


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "logs.jsonl").read_text().splitlines()) if "loss" in r]


def predict(run_dir: Path, log: Path, timeout: int) -> list[float] | str:
    e = env()
    e["CUDA_VISIBLE_DEVICES"] = e.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]  # ONE GPU
    cmd = [sys.executable, "-m", "usertwin.cli", "predict", "--run", str(run_dir), "--split", "test", "--no-generate",
           "--pick", "0", "--limit", "16", "--no-progress"]
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=e, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    if rc:
        return last_error(log)
    return [json.loads(x)["loss"] for x in (run_dir / "predictions-test.jsonl").read_text().splitlines()]


def compare(a, mode: str, model, data, work: Path, ref: Path, ref_pred) -> dict:
    out, log = work / mode, work / f"{mode}.log"
    row = {"mode": mode, "processes": a.nproc}
    rc, wall = run(launcher(mode, a.nproc, a.port, work) + train_args(a, model, data, out, a.accum, mode), log,
                   a.timeout)
    if rc:
        return row | {"error": last_error(log), "wall_s": wall}
    s, r = json.loads((out / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    la, lb = losses(ref), losses(out)
    row |= {"steps": s["steps"], "max_loss_diff": max(abs(x - y) for x, y in zip(la, lb)),
            "val_loss_diff": abs(s["val_loss_after"] - r["val_loss_after"]), "val_loss": s["val_loss_after"],
            "tokens_per_s": s["tokens_per_second"], "tokens_per_s_per_process": round(s["tokens_per_second"] / a.nproc, 1),
            "peak_memory_gib": s.get("peak_memory_gib"), "ref_tokens_per_s": r["tokens_per_second"],
            "ref_peak_memory_gib": r.get("peak_memory_gib"), "wall_s": wall}
    pred = predict(out, work / f"{mode}-predict.log", a.timeout)
    row["predict_loss_diff"] = pred if isinstance(pred, str) or isinstance(ref_pred, str) else \
        max(abs(x - y) for x, y in zip(pred, ref_pred))
    # killed at the first checkpoint after the middle, then --resume: the same run
    killed, klog = work / f"{mode}-killed", work / f"{mode}-killed.log"
    at = a.save_steps * max(1, (a.steps // 2) // a.save_steps)
    become_subreaper()  # reap the killed ranks
    with open(klog, "w") as f:
        proc = subprocess.Popen(launcher(mode, a.nproc, a.port + 1, work) +
                                train_args(a, model, data, killed, a.accum, mode), env=env(), stdout=f,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + a.timeout
        while not (killed / "checkpoints" / f"step-{at}" / "trainer_state.json").exists():
            if proc.poll() is not None or time.time() > deadline:
                break
            time.sleep(0.05)
        kill_tree(proc, reap_seconds=60)
    resumed = [x for x in train_args(a, model, data, killed, a.accum, mode) if x != "--overwrite"] + ["--resume"]
    rc, _ = run(launcher(mode, a.nproc, a.port + 2, work) + resumed, work / f"{mode}-resume.log", a.timeout)
    if rc:
        row["resume"] = last_error(work / f"{mode}-resume.log")
    else:
        k = json.loads((killed / "summary.json").read_text())
        row["resume_val_loss_diff"] = abs(k["val_loss_after"] - s["val_loss_after"])
        row["resume_loss_diff_after_kill"] = max(abs(x - y) for x, y in zip(losses(out)[at:], losses(killed)[-(a.steps - at):]))
    return row


def longest(a, model, work: Path) -> list:
    """Doubling max_length until a step fails: FSDP2, gradient checkpointing, 3 steps of full-length windows."""
    rows = []
    for length in (4096, 8192, 16384, 32768, 65536, 131072):
        _, data = make_inputs(work, a.shape, users=4, items=length // 12)
        out, log = work / f"long-{length}", work / f"long-{length}.log"
        args = ["train", "--data", str(data), "--model", str(model), "--output_dir", str(out), "--max_length",
                str(length), "--batch_tokens", str(length), "--max_steps", "3", "--eval_at_start", "off",
                "--gradient_checkpointing", "--no_lora", "--no-progress", "--overwrite", "--save_steps", "0",
                "--eval_steps", "0", "--max_epochs", "1"]
        rc, wall = run(launcher("fsdp2", a.nproc, a.port + 10, work) + args, log, a.timeout)
        row = {"max_length": length, "ok": rc == 0, "wall_s": wall}
        if rc == 0:
            s = json.loads((out / "summary.json").read_text())
            row |= {"tokens_per_s": s["tokens_per_second"], "peak_memory_gib": s.get("peak_memory_gib")}
        else:
            row["error"] = last_error(log)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if rc:
            break
    return rows


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation of the multi-process runs")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--save_steps", type=int, default=10)
    p.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    p.add_argument("--modes", default="ddp,fsdp2,zero3")
    p.add_argument("--lora", action="store_true", help="LoRA (dropout 0) instead of full fine-tuning")
    p.add_argument("--dtype", default="float32", help="float32 (exact comparison) or bfloat16")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max_length", type=int, default=2048)
    p.add_argument("--users", type=int, default=64)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--port", type=int, default=29650)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--longest", action="store_true", help="also: the longest window under FSDP2 (full FT, GC)")
    a = p.parse_args()
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    model, data = make_inputs(work, a.shape, a.users, a.items)
    result = {"args": vars(a), "rows": []}
    ref = work / "one"
    rc, wall = run([sys.executable, "-m", "usertwin.cli"] + train_args(a, model, data, ref, a.nproc * a.accum),
                   work / "one.log", a.timeout)
    if rc:
        print(f"the 1-process reference failed: {last_error(work / 'one.log')}")
        return 1
    ref_pred = predict(ref, work / "one-predict.log", a.timeout)
    for mode in filter(None, a.modes.split(",")):
        row = compare(a, mode, model, data, work, ref, ref_pred)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if a.longest:
        result["longest"] = longest(a, model, work)
    (work / "multi_gpu.json").write_text(json.dumps(result, indent=1))
    print(f"\n{a.shape}, {'LoRA' if a.lora else 'full'}, {a.dtype}, {a.steps} steps, global batch = {a.nproc} x "
          f"{a.accum} micro-batches of {a.max_length} tokens")
    print("| mode | max |loss diff| | val diff | tokens/s (per process) | peak GiB per process | resume diff | "
          "predict diff | error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        def g(k, r=r):
            v = r.get(k, "")
            return f"{v:.2e}" if isinstance(v, float) else str(v)
        print(f"| {r['mode']} x{r['processes']} | {g('max_loss_diff')} | {g('val_loss_diff')} | "
              f"{r.get('tokens_per_s', '')} ({r.get('tokens_per_s_per_process', '')}) | {r.get('peak_memory_gib', '')} | "
              f"{g('resume_val_loss_diff') or r.get('resume', '')} | {g('predict_loss_diff')} | {r.get('error', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
