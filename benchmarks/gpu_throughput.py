"""GPU throughput and memory, side by side (issue 5, part 2). Run on the device tool's H100:

    python3 benchmarks/gpu_throughput.py --records .gpu/ml.jsonl --reviews .gpu/dmr.jsonl \
        --tokenizer .gpu/smol-tok --out $OUT

Randomly initialised Qwen3-0.6B- and Qwen3-1.7B-shaped models (published dimensions and vocabulary, bf16, full
fine-tuning, AdamW), the SmolLM2 tokenizer's ids, real length distributions (ml-latest-small timelines; Douban
reviews with --reviews). Three recipes, each with and without gradient checkpointing:

  (a) seeds  the seeds' recipe: transformers' Trainer, one sample per example (all previous items as history,
             every target), dynamic padding, batch 2, sdpa, the model's own full-vocabulary loss;
  (b) sample usertwin --unit sample with packing (rows of --batch_tokens, varlen attention, target-only loss);
  (c) timeline usertwin --unit timeline with packing.

Measured for each: real (non-padding) tokens/s and target tokens/s over the steps after --warmup, peak memory,
MFU = 6 * N * tokens/s / 989 TFLOP/s (N: all parameters, embeddings counted once; with N without the
embedding matrix the figure is lower, printed too), and the time to cover every train target once = the full
data's exact tokens per epoch of that recipe (from `prepare`) / measured tokens/s. The measured steps run on a
seeded random subset of users (--users) so that the sample unit need not encode 200 M tokens first.
Then the longest timeline window that trains for the 1.7B shape with checkpointing (rows padded to the length).
Results: OUT/gpu_throughput.json (+ the run logs); ratios printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16
SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
    "qwen3-1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128),
    # --shapes tiny: a CPU check of this script itself (no GPU figures)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
}
CUDA = torch.cuda.is_available()


def sync():
    if CUDA:
        torch.cuda.synchronize()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else 0.0
COMMON = dict(vocab_size=151936, max_position_embeddings=262144, rope_theta=1_000_000, tie_word_embeddings=True,
              rms_norm_eps=1e-6)


def log(*a):
    print(*a, flush=True)


def build_model_dir(shape: str, tokenizer_dir: Path, work: Path) -> tuple[Path, int, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    d = work / shape
    config = Qwen3Config(**SHAPES[shape], **COMMON)
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    if not (d / "config.json").is_file():
        model.save_pretrained(d)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(d)
    del model
    log(f"{shape}: {n / 1e6:.0f} M parameters ({(n - n_embed) / 1e6:.0f} M without the embedding)")
    return d, n, n_embed


def subset_records(src: Path, n_users: int, seed: int, dst: Path) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()
    keep = sorted(random.Random(seed).sample(range(len(lines)), min(n_users, len(lines))))
    dst.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
    return dst


def base_config(records: Path, model_dir: Path, out: Path, args, **over):
    from usertwin.config import Config, from_mapping

    values = {"data": str(records), "model": str(model_dir), "output_dir": str(out), "max_length": args.max_length,
              "batch_tokens": args.batch_tokens, "learning_rate": 1e-5, "warmup_ratio": 0.0, "lora": False,
              "logging_steps": 1, "eval_at_start": False, "cache_dir": str(args.work / "cache"),
              "train_ratio": 0.70, "val_ratio": 0.002, "test_ratio": 0.298}  # same train split, tiny val (end eval)
    values.update(over)
    return from_mapping(values, "benchmark", Config())


def full_data_totals(records: Path, model_dir: Path, args, tokenizer) -> dict:
    """Exact tokens and targets per epoch on the whole file (default split) for each unit."""
    from usertwin.sequences.prepare import prepare

    out = {}
    for unit in ("sample", "timeline"):
        cfg = base_config(records, model_dir, args.work / "unused", args, unit=unit, train_ratio=None,
                          val_ratio=0.15, test_ratio=0.15)
        st = prepare(cfg, tokenizer=tokenizer, progress=False).stats["train"]
        out[unit] = {"targets": st.targets, "tokens": st.tokens, "sequences": st.sequences}
    return out


def steady(rows: list, warmup: int) -> dict:
    """Throughput over the logged steps after the warm-up (each row is one step, logged after a device sync)."""
    rows = [r for r in rows if "tokens" in r]
    if len(rows) <= warmup + 1:
        raise RuntimeError(f"only {len(rows)} steps logged")
    dt = rows[-1]["t"] - rows[warmup]["t"]
    later = rows[warmup + 1:]
    return {"tokens_per_second": sum(r["tokens"] for r in later) / dt,
            "target_tokens_per_second": sum(r["target_tokens"] for r in later) / dt,
            "padded_tokens_per_second": sum(r.get("padded", r["tokens"]) for r in later) / dt,
            "measured_steps": len(later), "measured_seconds": dt}


# ---------------------------------------------------------------- (a) the seeds' recipe


def run_seeds(records: Path, model_dir: Path, args, gc_on: bool, tokenizer) -> dict:
    """transformers' Trainer over one encoded sample per example, dynamic padding, batch 2, sdpa."""
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from usertwin.sequences.prepare import prepare
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import IGNORE, SequenceEncoder

    cfg = base_config(records, model_dir, args.work / "seeds", args, unit="sample")
    prep = prepare(cfg, tokenizer=tokenizer, progress=False)
    encoder = SequenceEncoder(Renderer(cfg, tokenizer), tokenizer)
    n = (args.warmup + args.steps) * 2
    seqs = random.Random(0).sample(prep.sequences["train"], n)
    data = []
    for s in seqs:
        e = encoder.encode(prep.timeline(s.user_id), *s.items_and_targets())
        data.append({"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)})
    counts = []
    base = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)

    def collate(features):
        batch = base(features)
        counts.append({"tokens": int(batch["attention_mask"].sum()), "padded": batch["input_ids"].numel(),
                       "target_tokens": int((batch["labels"][:, 1:] != IGNORE).sum())})
        return batch

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            sync()
            stamps.append(time.perf_counter())

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").to(
        "cuda" if CUDA else "cpu")
    targs = TrainingArguments(output_dir=str(args.work / "seeds-hf"), per_device_train_batch_size=2,
                              max_steps=args.warmup + args.steps, learning_rate=1e-5, bf16=CUDA,
                              gradient_checkpointing=gc_on, logging_steps=10, report_to=[], save_strategy="no",
                              dataloader_num_workers=0, remove_unused_columns=False, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    rows = [dict(c, t=t) for c, t in zip(counts, stamps)]
    del trainer, model
    return steady(rows, args.warmup)


# ---------------------------------------------------------------- (b), (c) usertwin


def run_usertwin(records: Path, model_dir: Path, args, unit: str, gc_on: bool, tokenizer, label: str,
                 **over) -> dict:
    from usertwin.train.trainable import training_attention
    from usertwin.train.trainer import train

    out = args.work / "runs" / label
    over.setdefault("max_steps", args.warmup + args.steps)
    cfg = base_config(records, model_dir, out, args, unit=unit, gradient_checkpointing=gc_on, **over)
    summary = train(cfg, overwrite=True, progress=False, tokenizer=tokenizer)
    rows = []
    for line in (out / "logs.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "interval_tokens" in r:
            rows.append({"tokens": r["interval_tokens"], "target_tokens": r["interval_target_tokens"],
                         "t": r["time"]})
    result = steady(rows, args.warmup)
    result["attention"] = training_attention(cfg)
    with open(args.out / "run_logs.jsonl", "a", encoding="utf-8") as f:  # one file: the device returns few
        f.writelines(json.dumps({"run": label, **json.loads(line)}) + "\n"
                     for line in (out / "logs.jsonl").read_text().splitlines())
    return result | {"val_loss_after": summary["val_loss_after"]}


def measure(label: str, fn, results: list, meta: dict) -> dict | None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    try:
        r = fn()
        r["status"] = "ok"
    except torch.OutOfMemoryError as e:
        r = {"status": "OOM", "error": str(e).splitlines()[0]}
    except Exception as e:  # one failing variant must not hide the others
        traceback.print_exc()
        r = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    r.update(meta, label=label, peak_memory_gib=peak_gib(),
             wall_seconds=round(time.time() - t, 1))
    results.append(r)
    log(json.dumps(r))
    return r


def longest_window(records: Path, model_dir: Path, args, tokenizer, results: list, meta: dict) -> None:
    """The longest padded row (one or more timeline windows) that trains for this shape with checkpointing."""
    for length in args.long_lengths:
        r = measure(f"long-{length}", partial(
            run_usertwin, records, model_dir, args, "timeline", True, tokenizer, f"long-{length}", max_length=length,
            batch_tokens=length, pad_packed_rows=True, max_steps=args.warmup + 2), results,
            meta | {"recipe": "timeline", "gc": True, "row_tokens": length})
        if r["status"] != "ok":
            break


def summarize(paths: list[Path], markdown: Path, combined: Path) -> None:
    """Merge the JSON of several device calls into one JSON + a Markdown table (ratios recomputed)."""
    envs, totals, results = [], {}, []
    for p in paths:
        d = json.loads(p.read_text())
        envs.append(d["env"])
        totals.update(d["totals"])
        results.extend(d["results"])
    lines = report(results, totals)
    combined.write_text(json.dumps({"env": envs, "totals": totals, "results": results}, indent=1) + "\n")
    head = ["# GPU throughput and memory (`benchmarks/gpu_throughput.py`)", ""]
    for e in envs:
        head.append(f"- {e['gpu']}, torch {e['torch']}, transformers {e['transformers']}, {e['date']}: `{e['command']}`")
    head += ["", "Random-initialised Qwen3 shapes (vocabulary 151,936, bf16, full fine-tuning, AdamW); "
             "SmolLM2 token ids; tokens/s = real (non-padding) tokens; MFU = 6 N tokens/s / 989 TFLOP/s; "
             "'epoch h' = the whole data's tokens per epoch for that recipe / measured tokens/s.", "",
             "| run | status | tokens/s | target tokens/s | MFU % (N all) | MFU % (N without embedding) | "
             "peak GiB | epoch h |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok":
            head.append(f"| {r['label']} | {r['status']} | {r.get('error', '')[:60]} | | | | {r['peak_memory_gib']} | |")
            continue
        head.append(f"| {r['label']} | ok | {r['tokens_per_second']:.0f} | {r['target_tokens_per_second']:.0f} | "
                    f"{r['mfu_percent']} | {r['mfu_no_embedding_percent']} | {r['peak_memory_gib']} | "
                    f"{'' if r['epoch_hours'] is None else r['epoch_hours']} |")
    tot = [f"- {name}, {unit} unit: {t['targets']:,} train targets, {t['tokens']:,} tokens per epoch"
           for name, units in totals.items() for unit, t in units.items()]
    markdown.write_text("\n".join(head + ["", "Whole train split (default 70/15/15 time split, max_length 4096):"]
                                   + tot + ["", "```", *lines, "```", ""]))


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--summarize", type=Path, nargs="*", help="merge these result JSONs (no GPU work)")
    ap.add_argument("--markdown", type=Path, default=Path("benchmarks/results/gpu_throughput_h100.md"))
    ap.add_argument("--combined", type=Path, default=Path("benchmarks/results/gpu_throughput_h100.json"))
    ap.add_argument("--records", type=Path, help="ml-latest-small records (JSONL)")
    ap.add_argument("--reviews", type=Path, help="a review set's records (e.g. douban-dmr), optional")
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/usertwin-gpu-throughput"))
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--users", type=int, default=60, help="random users whose data the measured steps use")
    ap.add_argument("--max_length", type=int, default=4096)
    ap.add_argument("--batch_tokens", type=int, default=16384)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--long_lengths", type=int, nargs="*", default=[16384, 32768, 65536, 131072])
    ap.add_argument("--datasets", nargs="*", help="only these (ml-latest-small, douban-dmr)")
    ap.add_argument("--gc", nargs="*", default=["off", "on"], help="gradient checkpointing variants")
    ap.add_argument("--recipes", nargs="*", default=["seeds", "sample", "timeline"])
    ap.add_argument("--liger", action="store_true", help="usertwin runs with --liger_kernel (carried wheel)")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize, args.markdown, args.combined)
    if not (args.records and args.tokenizer and args.out):
        ap.error("--records, --tokenizer and --out are required (or --summarize)")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    import transformers

    from usertwin.text.tokens import load_tokenizer

    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu", "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    log(json.dumps(env))
    tokenizer = load_tokenizer(str(args.tokenizer))
    datasets = {"ml-latest-small": args.records}
    if args.reviews:
        datasets["douban-dmr"] = args.reviews
    if args.datasets:
        datasets = {k: v for k, v in datasets.items() if k in args.datasets}
    results, totals = [], {}
    path = args.out / "gpu_throughput.json"

    def save():
        path.write_text(json.dumps({"env": env, "totals": totals, "results": results}, indent=1))

    for shape in args.shapes:
        model_dir, n_params, n_embed = build_model_dir(shape, args.tokenizer, args.work)
        for name, records in datasets.items():
            totals.setdefault(name, full_data_totals(records, model_dir, args, tokenizer))
            sub = subset_records(records, args.users, 0, args.work / f"{name}-subset.jsonl")
            for gc_on in [g == "on" for g in args.gc]:
                meta = {"shape": shape, "dataset": name, "gc": gc_on, "params": n_params, "embedding": n_embed}
                tag = f"{shape}-{name}-{'gc' if gc_on else 'nogc'}{'-liger' if args.liger else ''}"
                if "seeds" in args.recipes:
                    measure(f"seeds-{tag}", partial(run_seeds, sub, model_dir, args, gc_on, tokenizer), results,
                            meta | {"recipe": "seeds"})
                for unit in [u for u in ("sample", "timeline") if u in args.recipes]:
                    measure(f"{unit}-{tag}", partial(run_usertwin, sub, model_dir, args, unit, gc_on, tokenizer,
                                                     f"{unit}-{tag}", liger_kernel=args.liger),
                            results, meta | {"recipe": unit, "liger": args.liger})
                save()
        if shape == "qwen3-1.7b" and args.long_lengths:
            longest_window(args.records, model_dir, args, tokenizer, results,
                           {"shape": shape, "dataset": "ml-latest-small", "params": n_params, "embedding": n_embed})
            save()
    report(results, totals)
    save()


def report(results: list, totals: dict) -> list[str]:
    lines = []

    def log(text=""):
        print(text, flush=True)
        lines.append(text)

    log("\nrun                                   status  tok/s    target tok/s  MFU%  (no-emb)  peak GiB  epoch h")
    by = {}
    for r in results:
        if r["status"] != "ok":
            log(f"{r['label']:37} {r['status']:6} {r.get('error', '')[:80]}")
            continue
        mfu = 6 * r["params"] * r["tokens_per_second"] / (PEAK_TFLOPS * 1e12) * 100
        mfu_ne = 6 * (r["params"] - r["embedding"]) * r["tokens_per_second"] / (PEAK_TFLOPS * 1e12) * 100
        unit = "timeline" if r["recipe"] == "timeline" else "sample"
        total = totals.get(r["dataset"], {}).get(unit)
        hours = total["tokens"] / r["tokens_per_second"] / 3600 if total and "row_tokens" not in r else None
        r.update(mfu_percent=round(mfu, 1), mfu_no_embedding_percent=round(mfu_ne, 1),
                 epoch_hours=None if hours is None else round(hours, 3))
        by[r["label"]] = r
        log(f"{r['label']:37} ok     {r['tokens_per_second']:8.0f} {r['target_tokens_per_second']:12.0f} "
            f"{mfu:5.1f} {mfu_ne:8.1f} {r['peak_memory_gib']:9.2f}  {'' if hours is None else f'{hours:.3f}'}")
    log("\nratios (timeline vs the seeds' recipe, same shape, data and checkpointing):")
    for label, r in by.items():
        if r["recipe"] != "timeline" or "row_tokens" in r:
            continue
        seeds = by.get(label.replace("timeline-", "seeds-", 1).replace("-liger", ""))
        if seeds and seeds.get("epoch_hours") and r.get("epoch_hours"):
            log(f"  {label}: covers every train target {seeds['epoch_hours'] / r['epoch_hours']:.1f}x faster; "
                f"target tokens/s {r['target_tokens_per_second'] / seeds['target_tokens_per_second']:.2f}x; "
                f"MFU {r['mfu_percent']}% vs {seeds['mfu_percent']}%")
    longest = [r for r in results if "row_tokens" in r and r["status"] == "ok"]
    if longest:
        best = max(longest, key=lambda r: r["row_tokens"])
        log(f"  longest row trained (1.7B shape, checkpointing): {best['row_tokens']} tokens, "
            f"peak {best['peak_memory_gib']} GiB")
    return lines


if __name__ == "__main__":
    main()
