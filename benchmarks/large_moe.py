"""A Qwen3-30B-A3B-shaped twin with LoRA on one H200 (issue 18), in one device call of at most 9 minutes:

    python3 benchmarks/large_moe.py --records .gpu/ml.jsonl --dialogue .gpu/data/all_samples.json \
        --tokenizer .gpu/tok --out $OUT

The seeds trained Qwen3-30B-A3B with DeepSpeed ZeRO-3 on 8 GPUs. Here the published shape (48 layers, hidden
2048, 128 experts of which 8 active, moe_intermediate 768, 32/4 heads of 128, vocabulary 151,936) is built with
seeded random bf16 weights directly on the GPU (`--model random:DIR`: no 61 GB checkpoint on a 64 GiB disk) and
trained by usertwin's own path in-process, LoRA on attention and experts (never the router), gradient
checkpointing, timeline unit, packed rows, `batch_tokens auto`. Variants, most important first; each in
try/except (an OOM or failure is recorded, the next runs); a later one is skipped when the call nears --budget:

  (b) train   ml-latest-small (a seeded subset of users) and the seeds' dialogue sample: tokens/s, target tokens/s,
              MFU over ACTIVE parameters, peak memory, the chosen batch, and the hours to cover every train target
              once (exact tokens per epoch of the whole file from `prepare` / measured tokens/s);
  (f) use     best/ of (b): predict on a few test targets, Twin.load + one request, and export's merge (refused
              with the reason when the merged model would not fit the free disk or host memory);
  (c) experts eager vs grouped_mm, a few steps each at one fixed batch;
  (d) long    the longest padded row that trains: max_length = batch_tokens = 16K, 32K, 64K ... until one fails;
  (e) seeds   the seeds' recipe on the same shape: transformers' Trainer, one sample per example, dynamic
              padding, batch 2, the model's own full-vocabulary loss (same LoRA and checkpointing).

MFU = 6 x N_active x tokens/s / 989 TFLOP/s (H200 dense bf16, as the H100), N_active = attention + router + 8 of
128 experts per layer + the output head (+ the input embedding in the "with embedding" figure: ~3.3 B). The 6N
convention counts weight gradients that LoRA does not compute and not the checkpointing's recomputation.
`--tiny`: a tiny MoE shape and a few users, on a CPU, to test this script. Results: OUT/large_moe.json,
OUT/large_moe.md, OUT/progress.log, OUT/run_logs.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import gpu_throughput as gt  # noqa: E402  (its helpers: configs, steady throughput, one variant in try/except)

PEAK_TFLOPS = 989.0
QWEN3_30B_A3B = dict(num_hidden_layers=48, hidden_size=2048, num_experts=128, num_experts_per_tok=8,
                     moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                     vocab_size=151936, intermediate_size=6144, rope_theta=1_000_000.0,
                     max_position_embeddings=40960, tie_word_embeddings=False, rms_norm_eps=1e-6,
                     norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
TINY = QWEN3_30B_A3B | dict(num_hidden_layers=2, hidden_size=64, num_experts=8, num_experts_per_tok=2,
                            moe_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            intermediate_size=128, max_position_embeddings=65536)
START = time.time()


def log(*a):
    text = " ".join(str(x) for x in a)
    print(text, flush=True)
    if LOG:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(f"[{time.time() - START:6.0f}s] {text}\n")


LOG: Path | None = None


def model_dir(shape: dict, tokenizer_dir: Path, work: Path) -> Path:
    """DIR for --model random:DIR: the shape's config.json and the tokenizer (no weights)."""
    from transformers import AutoTokenizer, Qwen3MoeConfig

    d = work / "shape"
    d.mkdir(parents=True, exist_ok=True)
    values = dict(shape)
    rope = values.pop("rope_theta")
    Qwen3MoeConfig(**values, rope_parameters={"rope_type": "default", "rope_theta": rope}).save_pretrained(d)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(d)
    return d


def parameter_counts(shape: dict) -> dict:
    """All and active parameters of the shape, from its dimensions."""
    h, layers, v = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    attention = h * q + 2 * h * kv + q * h + 2 * shape["head_dim"] + 2 * h  # + q/k norms + the layer's two norms
    expert = 3 * h * shape["moe_intermediate_size"]
    router = h * shape["num_experts"]
    embed = v * h
    head = 0 if shape["tie_word_embeddings"] else v * h
    total = layers * (attention + router + shape["num_experts"] * expert) + embed + head + h
    active_matmul = layers * (attention + router + shape["num_experts_per_tok"] * expert) + (head or embed)
    return {"total": total, "active": active_matmul + (embed if head else 0), "active_matmul": active_matmul,
            "embedding": embed}


def config_of(records: Path, directory: Path, out: Path, args, **over):
    values = dict(model=f"random:{directory}", lora=True, gradient_checkpointing=True, unit="timeline",
                  packing=True, batch_tokens="auto", dtype="bfloat16", learning_rate=1e-4)
    return gt.base_config(records, directory, out, args, **(values | over))


def train_variant(records: Path, directory: Path, args, label: str, tokenizer, **over) -> dict:
    """usertwin's train in-process; tokens/s over the steps after the warm-up; the batch it chose."""
    over = {"model": f"random:{directory}", "lora": True, "gradient_checkpointing": True, "packing": True,
            "batch_tokens": "auto", "dtype": "bfloat16", "learning_rate": 1e-4} | over
    gc_on = over.pop("gradient_checkpointing")
    unit = over.pop("unit", "timeline")
    said = Tee()
    with contextlib.redirect_stdout(said):  # the trainer says the batch it chose on stdout
        result = gt.run_usertwin(records, directory, args, unit, gc_on, tokenizer, label, **over)
    result["batch"] = [line.strip() for line in said.lines if "batch_tokens" in line][-1:]
    result["run_dir"] = str(args.work / "runs" / label)
    return result


class Tee(io.TextIOBase):
    """stdout that also keeps the lines written."""

    def __init__(self):
        self.out, self.lines = sys.stdout, []

    def write(self, text):
        self.out.write(text)
        self.out.flush()
        self.lines.extend(text.splitlines())
        return len(text)


def totals_of(records: Path, directory: Path, args, tokenizer) -> dict:
    return gt.full_data_totals(records, directory, args, tokenizer)


def use_run(run: Path, records: Path, args) -> dict:
    """(f): predict on a few test targets, Twin.load + one request, and export's merge where it fits."""
    from usertwin.cli import main
    from usertwin.twin import Twin

    out, t = {}, time.time()
    rc = main(["predict", "--run", str(run), "-o", str(args.work / "pred.jsonl"), "--limit", "4", "--no-generate",
               "--no_progress"])
    rows = [json.loads(x) for x in (args.work / "pred.jsonl").read_text().splitlines()] if rc == 0 else []
    out["predict"] = {"rc": rc, "rows": len(rows), "seconds": round(time.time() - t, 1),
                      "first_loss": rows[0].get("loss") if rows else None}
    log("predict", json.dumps(out["predict"]))
    t = time.time()
    twin = Twin.load(run, records=records)
    user = twin.users[0]
    last = twin.timeline(user).items[-1]
    load_s = time.time() - t
    t = time.time()
    answer = twin.predict(user=user, item=last.prefix or "", context=last.context or None, max_new_tokens=8)
    out["twin"] = {"load_seconds": round(load_s, 1), "request_seconds": round(time.time() - t, 2),
                   "user": user, "answer": str(answer)[:200]}
    log("twin", json.dumps(out["twin"]))
    del twin
    gt.gc.collect()
    torch.cuda.empty_cache() if gt.CUDA else None
    out["export"] = export_check(run, args)
    log("export", json.dumps(out["export"]))
    return out


def export_check(run: Path, args) -> dict:
    """export merges in float32 on the host and writes the model in its dtype: try it only where both fit."""
    from usertwin.cli import main

    counts = parameter_counts(args.shape)
    disk_free = shutil.disk_usage(args.work).free
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    host_free = int(meminfo["MemAvailable"].split()[0]) * 1024
    need_disk, need_host = counts["total"] * 2, counts["total"] * 4  # bf16 files; float32 merge in host memory
    facts = {"need_disk_gb": round(need_disk / 1e9, 1), "disk_free_gb": round(disk_free / 1e9, 1),
             "need_host_gb": round(need_host / 1e9, 1), "host_free_gb": round(host_free / 1e9, 1)}
    if need_disk > 0.9 * disk_free or need_host > 0.9 * host_free:
        why = []
        if need_disk > 0.9 * disk_free:
            why.append(f"the merged bf16 model takes {facts['need_disk_gb']} GB, the disk has "
                       f"{facts['disk_free_gb']} GB free")
        if need_host > 0.9 * host_free:
            why.append(f"export merges in float32 on the host: {facts['need_host_gb']} GB, the host has "
                       f"{facts['host_free_gb']} GB available")
        return facts | {"status": "skipped", "why": "; ".join(why)}
    t = time.time()
    rc = main(["export", str(run), "-o", str(args.work / "export"), "--dtype", "bfloat16"])
    size = sum(f.stat().st_size for f in (args.work / "export").glob("*")) if rc == 0 else 0
    shutil.rmtree(args.work / "export", ignore_errors=True)
    return facts | {"status": "ok" if rc == 0 else f"rc {rc}", "seconds": round(time.time() - t, 1),
                    "bytes": size}


def seeds_recipe(records: Path, directory: Path, args, tokenizer) -> dict:
    """(e): transformers' Trainer over one encoded sample per example, dynamic padding, batch 2, sdpa, the
    model's own full-vocabulary loss; the same random base, LoRA and checkpointing as usertwin's runs."""
    import random

    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from usertwin.sequences.prepare import prepare
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import IGNORE, SequenceEncoder
    from usertwin.train.trainable import build_model

    cfg = config_of(records, directory, args.work / "seeds", args, unit="sample", batch_tokens=None)
    prep = prepare(cfg, tokenizer=tokenizer, progress=False)
    encoder = SequenceEncoder(Renderer(cfg, tokenizer), tokenizer)
    n = (args.warmup + args.steps) * 2
    seqs = random.Random(0).sample(prep.sequences["train"], min(n, len(prep.sequences["train"])))
    data = []
    for s in seqs:
        e = encoder.encode(prep.timeline(s.user_id), *s.items_and_targets())
        data.append({"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e)})
    counts, stamps = [], []
    base = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)

    def collate(features):
        batch = base(features)
        counts.append({"tokens": int(batch["attention_mask"].sum()), "padded": batch["input_ids"].numel(),
                       "target_tokens": int((batch["labels"][:, 1:] != IGNORE).sum())})
        return batch

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            gt.sync()
            stamps.append(time.perf_counter())

    model = build_model(cfg, "sdpa", progress=False)  # random base, checkpointing, LoRA: as usertwin's runs
    targs = TrainingArguments(output_dir=str(args.work / "seeds-hf"), per_device_train_batch_size=2,
                              max_steps=args.warmup + args.steps, learning_rate=1e-4, bf16=gt.CUDA,
                              logging_steps=10, report_to=[], save_strategy="no", dataloader_num_workers=0,
                              remove_unused_columns=False, seed=0)
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    rows = [dict(c, t=t) for c, t in zip(counts, stamps)]
    del trainer, model
    return gt.steady(rows, args.warmup)


# ---------------------------------------------------------------- bookkeeping


def figures(r: dict, counts: dict, totals: dict) -> None:
    """MFU over active parameters and the hours to cover every train target once, into the result."""
    if r.get("status") != "ok" or "tokens_per_second" not in r:
        return
    tps = r["tokens_per_second"]
    r["mfu_active_percent"] = round(6 * counts["active"] * tps / (PEAK_TFLOPS * 1e12) * 100, 2)
    r["mfu_active_matmul_percent"] = round(6 * counts["active_matmul"] * tps / (PEAK_TFLOPS * 1e12) * 100, 2)
    unit = "sample" if r.get("recipe") == "seeds" else "timeline"
    total = totals.get(r.get("dataset"), {}).get(unit)
    if total and "row_tokens" not in r:
        r["epoch_tokens"] = total["tokens"]
        r["epoch_targets"] = total["targets"]
        r["epoch_hours"] = round(total["tokens"] / tps / 3600, 3)


def markdown(env: dict, counts: dict, totals: dict, results: list) -> str:
    lines = ["# A Qwen3-30B-A3B-shaped twin on one H200 (`benchmarks/large_moe.py`)", "",
             f"- {env['gpu']}, torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
             f"{env['date']}: `{env['command']}`",
             f"- parameters: {counts['total'] / 1e9:.2f} B in all, {counts['active'] / 1e9:.2f} B active per token "
             f"({counts['active_matmul'] / 1e9:.2f} B without the input embedding); random bf16 weights built on "
             "the GPU; LoRA r=16 on attention and experts, gradient checkpointing", "",
             "| variant | status | tokens/s | target tokens/s | MFU % active (matmul) | peak GiB | epoch h | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok" or "tokens_per_second" not in r:
            note = r.get("error", r.get("why", ""))[:90]
            lines.append(f"| {r['label']} | {r['status']} | | | | {r.get('peak_memory_gib', '')} | | {note} |")
            continue
        lines.append(f"| {r['label']} | ok | {r['tokens_per_second']:.0f} | {r['target_tokens_per_second']:.0f} | "
                     f"{r.get('mfu_active_percent')} ({r.get('mfu_active_matmul_percent')}) | "
                     f"{r['peak_memory_gib']} | {r.get('epoch_hours', '')} | "
                     f"{' '.join(r.get('batch', []))[-90:]} |")
    lines += ["", "Whole train split (default 70/15/15 time split):"]
    lines += [f"- {name}, {unit} unit: {t['targets']:,} train targets, {t['tokens']:,} tokens per epoch"
              for name, units in totals.items() for unit, t in units.items()]
    by = {r["label"]: r for r in results if r["status"] == "ok"}
    for name in totals:
        ours, seeds = by.get(f"train-{name}"), by.get(f"seeds-{name}")
        if ours and seeds and ours.get("epoch_hours") and seeds.get("epoch_hours"):
            lines.append(f"- {name}: usertwin covers every train target {seeds['epoch_hours'] / ours['epoch_hours']:.1f}x "
                         f"sooner than the seeds' recipe ({ours['epoch_hours']} h vs {seeds['epoch_hours']} h)")
    longest = [r for r in results if "row_tokens" in r and r["status"] == "ok"]
    if longest:
        best = max(longest, key=lambda r: r["row_tokens"])
        lines.append(f"- longest row trained: {best['row_tokens']:,} tokens, peak {best['peak_memory_gib']} GiB")
    use = next((r for r in results if r["label"] == "use-best" and r["status"] == "ok"), None)
    if use:
        lines += ["", "Using best/: " + json.dumps({k: use[k] for k in ("predict", "twin", "export")})]
    return "\n".join(lines) + "\n"


def main() -> None:
    global LOG
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, required=True, help="ml-latest-small records (JSONL)")
    ap.add_argument("--dialogue", type=Path, help="the seeds' all_samples.json (raw: converted here) or its records")
    ap.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer folder (ids < 151,936)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/usertwin-large-moe"))
    ap.add_argument("--tiny", action="store_true", help="a tiny MoE shape and a few users: a CPU test of this script")
    ap.add_argument("--users", type=int, default=120, help="random ml-latest-small users the measured steps use")
    ap.add_argument("--max_length", type=int, default=4096)
    ap.add_argument("--batch_tokens", type=int, default=16384, help="the fixed batch of (c)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--long_lengths", type=int, nargs="*", default=[16384, 32768, 65536, 131072])
    ap.add_argument("--budget", type=float, default=520, help="seconds; a variant starts only with time left")
    ap.add_argument("--only", nargs="*", default=["b", "f", "e", "c", "d"], help="variants to run (in the order b, f, e, c, d)")
    args = ap.parse_args()
    args.shape = TINY if args.tiny else QWEN3_30B_A3B
    if args.tiny:
        args.users, args.max_length, args.batch_tokens = 4, 1024, 1024
        args.long_lengths = [1024, 2048]
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    LOG = args.out / "progress.log"
    import peft
    import transformers

    from usertwin.text.tokens import load_tokenizer

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
           "gpu": torch.cuda.get_device_name(0) if gt.CUDA else "cpu", "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(sys.argv)}
    log(json.dumps(env))
    directory = model_dir(args.shape, args.tokenizer, args.work)
    counts = parameter_counts(args.shape)
    log("parameters", json.dumps(counts))
    tokenizer = load_tokenizer(str(directory))
    datasets = {"ml-latest-small": args.records}
    if args.dialogue:
        datasets["dialogue"] = dialogue_records(args.dialogue, args.work)
    results, totals = [], {}

    def save():
        for r in results:
            figures(r, counts, totals)
        (args.out / "large_moe.json").write_text(json.dumps({"env": env, "parameters": counts, "totals": totals,
                                                            "results": results}, indent=1))
        (args.out / "large_moe.md").write_text(markdown(env, counts, totals, results))

    def run(label: str, fn, meta: dict, needs: float) -> dict | None:
        """One variant, unless fewer than `needs` seconds of the budget are left."""
        left = args.budget - (time.time() - START)
        if left < needs:
            results.append(meta | {"label": label, "status": "skipped", "why": f"{left:.0f} s left of the budget"})
            log(f"skip {label}: {left:.0f} s left")
            save()
            return None
        log(f"start {label} ({left:.0f} s left)")
        r = gt.measure(label, fn, results, meta)
        save()
        return r

    if "b" in args.only:
        for name, records in datasets.items():
            try:
                totals[name] = totals_of(records, directory, args, tokenizer)
            except Exception as e:  # the figures of the run stand without the whole-file totals
                log(f"totals of {name} failed: {type(e).__name__}: {e}")
            sub = gt.subset_records(records, args.users, 0, args.work / f"{name}-subset.jsonl") \
                if name == "ml-latest-small" else records
            # the dialogue sample is small (5 users, ~25 K train tokens at 4096): smaller steps, several epochs
            small = {"step_tokens": 2 * args.max_length} if name == "dialogue" else {}
            run(f"train-{name}", partial(train_variant, sub, directory, args, f"train-{name}", tokenizer,
                                         max_steps=args.warmup + args.steps, max_epochs=20, **small),
                {"dataset": name, "recipe": "timeline"}, needs=60)
    best = args.work / "runs" / "train-ml-latest-small"
    if "f" in args.only and (best / "best").is_dir():
        run("use-best", partial(use_run, best, args.records, args), {"dataset": "ml-latest-small"}, needs=60)
    sub = args.work / "ml-latest-small-subset.jsonl"
    if not sub.is_file():
        gt.subset_records(args.records, args.users, 0, sub)
    if "e" in args.only:
        for name in datasets:
            run(f"seeds-{name}", partial(seeds_recipe, sub if name == "ml-latest-small" else datasets[name],
                                         directory, args, tokenizer),
                {"dataset": name, "recipe": "seeds"}, needs=75)
    if "c" in args.only:
        for experts in ("grouped_mm", "eager"):
            run(f"experts-{experts}", partial(train_variant, sub, directory, args, f"experts-{experts}", tokenizer,
                                              experts=experts, batch_tokens=args.batch_tokens,
                                              max_steps=args.warmup + 2),
                {"dataset": "ml-latest-small", "recipe": "timeline", "experts": experts}, needs=60)
    if "d" in args.only:
        short = argparse.Namespace(**(vars(args) | {"warmup": 1}))
        for length in args.long_lengths:
            r = run(f"long-{length}", partial(train_variant, sub, directory, short, f"long-{length}", tokenizer,
                                              max_length=length, batch_tokens=length, pad_packed_rows=True,
                                              max_steps=3),
                    {"dataset": "ml-latest-small", "recipe": "timeline", "row_tokens": length}, needs=60)
            if r is None or r["status"] != "ok":
                break
    save()
    log((args.out / "large_moe.md").read_text())


def dialogue_records(path: Path, work: Path) -> Path:
    """The seeds' all_samples.json converted to records (a records file passes through)."""
    from usertwin.cli import main

    if path.suffix == ".jsonl":
        return path
    out = work / "dialogue.jsonl"
    if main(["convert", "seed-samples", str(path), "-o", str(out), "--no_progress"]) != 0:
        raise SystemExit(f"cannot convert {path}")
    return out


if __name__ == "__main__":
    main()
