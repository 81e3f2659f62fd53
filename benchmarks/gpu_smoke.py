"""GPU smoke run of `usertwin train` (the device tool): a randomly initialised Qwen3-0.6B-shaped model
(published dimensions, bf16, sdpa) with the SmolLM2 tokenizer, timeline unit, packed rows, on
ml-latest-small records. Reports target tokens/s, peak memory and the loss curve for LoRA and full
fine-tuning, with and without gradient checkpointing.

    python3 benchmarks/gpu_smoke.py --records .gpu/ml.jsonl --tokenizer .gpu/smol-tok --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

QWEN3_0_6B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000,
                  tie_word_embeddings=True, rms_norm_eps=1e-6)


def build_model_dir(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(vocab_size=len(tok), **QWEN3_0_6B)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    d = out / "qwen3-0.6b-shape"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    n = sum(p.numel() for p in model.parameters())
    print(f"built {d}: {n / 1e6:.0f} M parameters", flush=True)
    return d


def run(label: str, args, model_dir: Path, extra: list[str]) -> dict:
    from usertwin.config import Config, from_mapping
    from usertwin.train.trainer import train

    out = args.work / label
    values = {"data": str(args.records), "model": str(model_dir), "output_dir": str(out), "max_length": 4096,
              "batch_tokens": args.batch_tokens, "max_steps": args.steps, "eval_steps": args.steps,
              "learning_rate": 2e-4, "warmup_ratio": 0.1, "logging_steps": 5, "cache_dir": str(args.work / "cache")}
    for flag in extra:
        key, _, value = flag.partition("=")
        values[key] = {"true": True, "false": False}.get(value, value)
        if key in ("learning_rate",):
            values[key] = float(value)
        if key in ("batch_tokens", "max_length"):
            values[key] = int(value)
    cfg = from_mapping(values, label, Config())
    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    summary = train(cfg, overwrite=True, progress=False)
    summary["label"] = label
    summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    summary["wall"] = round(time.time() - t, 1)
    print(json.dumps(summary), flush=True)
    (args.out / f"{label}.summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / f"{label}.logs.jsonl").write_text((out / "logs.jsonl").read_text())
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--records", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="where the summaries and logs go (small)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/usertwin-gpu-smoke"), help="run directories")
    ap.add_argument("--users", type=int, default=100, help="first N users of the records file")
    ap.add_argument("--variants", nargs="*", help="LABEL:key=value,key=value ... (default: lora, lora-gc, full-gc)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch_tokens", type=int, default=16384)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model_dir(args.tokenizer, args.work)
    subset = args.work / "records.jsonl"
    with open(args.records, encoding="utf-8") as src, open(subset, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= args.users:
                break
            dst.write(line)
    args.records = subset
    rows = []
    variants = [("lora", []), ("lora-gc", ["gradient_checkpointing=true"]),
                ("full-gc", ["lora=false", "gradient_checkpointing=true", "learning_rate=2e-5"])]
    if args.variants:
        variants = [(v.split(":")[0], [x for x in v.split(":")[1].split(",") if x]) for v in args.variants]
    for label, extra in variants:
        try:
            rows.append(run(label, args, model_dir, extra))
        except Exception as e:  # keep going: one failing variant must not hide the others
            print(f"{label}: FAILED {type(e).__name__}: {e}", flush=True)
    print("\nlabel      steps  tokens/s  peak GiB  val before  val after  wall s")
    for r in rows:
        print(f"{r['label']:9} {r['steps']:6} {r['tokens_per_second']:9.0f} {r['peak_memory_gib']:9.2f} "
              f"{r['val_loss_before']:11.4f} {r['val_loss_after']:10.4f} {r['wall']:7.1f}")
    (args.out / "gpu_smoke.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
