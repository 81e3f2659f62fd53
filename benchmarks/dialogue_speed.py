"""Training speed on dialogue data, sample unit vs timeline unit (issue 16): a randomly initialised
Qwen3-1.7B-shaped model (hidden 2048, 28 layers, 16 heads, 8 kv heads, head_dim 128, intermediate 6144,
vocabulary 151,936; bf16 on a GPU, full fine-tuning, AdamW) trained a few steps in each unit through the
ordinary `train()` path (packed rows of --batch_tokens, target-only loss). Measured from the run's logs.jsonl
over the steps after --warmup: tokens/s and target tokens/s; with the exact tokens and targets of one epoch
of each unit (from `prepare`), the time one epoch takes at that speed.

    python benchmarks/dialogue_speed.py --data seed.jsonl --out OUT          # on the GPU
    python benchmarks/dialogue_speed.py --data seed.jsonl --out OUT --shape tiny --max_length 2048 \
        --batch_tokens 4096 --warmup 1 --steps 2                             # CPU check of the script (~3 min)

(The seeds' profiles make a header of ~1,100 SmolLM2 tokens: below max_length ~1,200 no target fits.)

--data: dialogue records (e.g. `usertwin convert seed-samples ../shared/data/seed_examples/all_samples.json
-o seed.jsonl`); without it the seeds' sample is converted from ../shared/data when present. --tokenizer: any
model `usertwin` resolves (default smollm2, the embedded SmolLM2 tokenizer). Writes OUT/dialogue_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SEEDS = ROOT.parent / "shared" / "data" / "seed_examples" / "all_samples.json"
SHAPES = {
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),  # a CPU check of this script, no speed figures
}
COMMON = dict(vocab_size=151936, max_position_embeddings=131072, rope_theta=1_000_000, tie_word_embeddings=True,
              rms_norm_eps=1e-6)
CUDA = torch.cuda.is_available()


def log(*a):
    print(*a, flush=True)


def model_dir(shape: str, tokenizer, work: Path) -> tuple[Path, int]:
    """A folder with the random model (seed 0) and the tokenizer, usable as --model."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    d = work / f"model-{shape}"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(**SHAPES[shape], **COMMON),
                                             dtype=torch.bfloat16 if CUDA else torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    del model
    log(f"{shape}: {n / 1e6:.0f} M parameters -> {d}")
    return d, n


def records(args) -> Path:
    if args.data:
        return args.data
    if not SEEDS.is_file():
        sys.exit(f"no --data and no seeds' sample at {SEEDS}: pass --data RECORDS.jsonl (dialogue records)")
    from usertwin.data.convert import convert_to_file

    out = args.work / "seed-dialogue.jsonl"
    convert_to_file("seed-samples", SEEDS, out, progress=False)
    return out


def config(data: Path, model: Path, out: Path, args, unit: str, **over):
    from usertwin.config import Config, from_mapping

    values = {"data": str(data), "model": str(model), "output_dir": str(out), "unit": unit,
              "max_length": args.max_length, "batch_tokens": args.batch_tokens, "learning_rate": 1e-5,
              "warmup_ratio": 0.0, "lora": False, "logging_steps": 1, "eval_at_start": False,
              # epochs enough for max_steps to bind: a timeline epoch of the seeds' sample is only a few rows
              "max_steps": args.warmup + args.steps, "max_epochs": 1000, "eval_steps": 1_000_000,
              "cache_dir": str(args.work / "cache"),
              "gradient_checkpointing": args.gradient_checkpointing, **over}
    return from_mapping(values, "benchmark", Config())


def epoch_totals(cfg, tokenizer) -> dict:
    """Exact train tokens and targets of one epoch of this unit."""
    from usertwin.sequences.prepare import prepare

    st = prepare(cfg, tokenizer=tokenizer, progress=False).stats["train"]
    return {"targets": st.targets, "sequences": st.sequences, "tokens": st.tokens}


def steady(log_path: Path, warmup: int) -> dict:
    """Speed over the logged steps after the warm-up (each logged row is one step)."""
    rows = [json.loads(x) for x in log_path.read_text().splitlines()]
    rows = [r for r in rows if "interval_tokens" in r]
    if len(rows) <= warmup + 1:
        raise RuntimeError(f"only {len(rows)} steps logged in {log_path}; raise --steps")
    later = rows[warmup + 1:]
    dt = rows[-1]["time"] - rows[warmup]["time"]
    return {"tokens_per_second": sum(r["interval_tokens"] for r in later) / dt,
            "target_tokens_per_second": sum(r["interval_target_tokens"] for r in later) / dt,
            "measured_steps": len(later), "measured_seconds": round(dt, 3)}


def run_unit(unit: str, data: Path, model: Path, args, tokenizer) -> dict:
    from usertwin.train.trainer import train

    out = args.work / f"run-{unit}"
    cfg = config(data, model, out, args, unit)
    totals = epoch_totals(cfg, tokenizer)
    t = time.perf_counter()
    train(cfg, overwrite=True, progress=False, tokenizer=tokenizer)
    speed = steady(out / "logs.jsonl", args.warmup)
    epoch = totals["tokens"] / speed["tokens_per_second"]
    row = {"unit": unit, **speed, "epoch": totals, "epoch_seconds": round(epoch, 1),
           "wall_seconds": round(time.perf_counter() - t, 1),
           "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None}
    log(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="dialogue records (JSONL or JSON)")
    ap.add_argument("--tokenizer", default="smollm2")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/usertwin-dialogue-speed"))
    ap.add_argument("--shape", choices=list(SHAPES), default="qwen3-1.7b")
    ap.add_argument("--max_length", type=int, default=4096)
    ap.add_argument("--batch_tokens", type=int, default=16384)
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    from usertwin.text.tokens import load_tokenizer

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(args.tokenizer)
    data = records(args)
    model, n_params = model_dir(args.shape, tokenizer, args.work)
    rows = {unit: run_unit(unit, data, model, args, tokenizer) for unit in ("sample", "timeline")}
    s, t = rows["sample"], rows["timeline"]
    ratios = {"target_tokens_per_second": t["target_tokens_per_second"] / s["target_tokens_per_second"],
              "epoch_time": s["epoch_seconds"] / t["epoch_seconds"]}
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if CUDA else "cpu",
              "torch": torch.__version__, "python": platform.python_version(), "shape": args.shape,
              "parameters": n_params, "data": str(data), "tokenizer": args.tokenizer,
              "command": "python benchmarks/dialogue_speed.py " + " ".join(sys.argv[1:]),
              "rows": rows, "timeline_over_sample": {k: round(v, 2) for k, v in ratios.items()}}
    (args.out / "dialogue_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    for unit, r in rows.items():
        log(f"{unit:8}: {r['tokens_per_second']:10.0f} tokens/s  {r['target_tokens_per_second']:9.0f} target "
            f"tokens/s  one epoch ({r['epoch']['targets']} targets, {r['epoch']['tokens']} tokens) "
            f"{r['epoch_seconds']:.0f} s")
    log(f"timeline / sample: {ratios['target_tokens_per_second']:.2f}x target tokens/s, one epoch "
        f"{ratios['epoch_time']:.2f}x faster")


if __name__ == "__main__":
    main()
