"""LoRA against full fine-tuning, side by side in one run (issue 27, item 1). Run on the device tool's GPU:

    python3 benchmarks/lora_speed.py --records .gpu/ml-small.jsonl --tokenizer .gpu/tok-smollm2 --out $OUT

For each shape (random weights of SmolLM2-135M and Qwen3-1.7B, bf16), `usertwin train` itself (in process, the
timeline unit, packed --batch_tokens rows, the same users and steps) runs these variants:

  full          full fine-tuning (--no_lora)
  lora-float32  LoRA r16 as peft builds it by default (--lora_precision float32: adapters in float32, each
                adapted layer's input cast to float32), dropout 0.05 -- the previous default
  lora-mixed    LoRA r16 computed in bf16 under autocast, float32 weights (--lora_precision mixed), dropout 0.05
                -- today's default
  lora-mixed-nodrop  the same with --lora_dropout 0 (peft skips the dropout's copy of the input)

Each reports tokens/s over the steps after --warmup, MFU (6 N tokens/s over the card's peak, the usual
convention, and the FLOPs LoRA really does: 4 N, no weight gradients of the base), peak memory and the first
steps' losses (the same data, so the variants' losses can be compared). With --profile, torch's profiler records
two more steps of each variant of the first shape, after the timed ones, and writes the 25 kernels that take
the most GPU time (OUT/profiles.txt). Results: OUT/lora_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_throughput as gt  # noqa: E402
import simulate_speed as ss  # noqa: E402

VARIANTS = {
    "full": {"lora": False},
    "lora-float32": {"lora": True, "lora_precision": "float32"},
    "lora-mixed": {"lora": True, "lora_precision": "mixed"},
    "lora-mixed-nodrop": {"lora": True, "lora_precision": "mixed", "lora_dropout": 0.0},
}
PEAK = {"H100": 989e12, "H200": 989e12}  # dense bf16, SXM


def peak_flops() -> float:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return next((v for k, v in PEAK.items() if k in name), 989e12)


def model_dir(shape: str, tokenizer_dir: Path, work: Path) -> tuple[Path, int]:
    """The shape's random bf16 weights and the tokenizer, saved as a model folder; (folder, parameters)."""
    from transformers import AutoTokenizer

    d = work / shape
    model = ss.build_model(shape, len(AutoTokenizer.from_pretrained(tokenizer_dir)), torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    if not (d / "config.json").is_file():
        model.save_pretrained(d)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(d)
    del model
    return d, n


@contextlib.contextmanager
def profiled(path: Path | None, label: str, first: int, steps: int = 2):
    """Records micro-batches first .. first+steps-1 of the training loop with torch's profiler (the trainer's
    _forward_backward wrapped for the run) and appends the top kernels by GPU time to `path`."""
    if path is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    from usertwin.train.trainer import Trainer

    original, count, prof = Trainer._forward_backward, [0], profile(activities=[ProfilerActivity.CPU,
                                                                                ProfilerActivity.CUDA])

    def wrapped(self, group, interval):
        if count[0] == first:
            prof.__enter__()
        original(self, group, interval)
        count[0] += 1
        if count[0] == first + steps:
            gt.sync()
            prof.__exit__(None, None, None)
            averages = prof.key_averages()
            try:
                table = averages.table(sort_by="self_device_time_total", row_limit=25)
            except (AttributeError, KeyError):
                table = averages.table(sort_by="self_cuda_time_total", row_limit=25)
            with path.open("a", encoding="utf-8") as f:  # one file: the device returns few
                f.write(f"== {label}\n{table}\n")

    Trainer._forward_backward = wrapped
    try:
        yield
    finally:
        Trainer._forward_backward = original


PHASES = (("usertwin.train.trainer", "batch_tensors", "batch"),
          ("usertwin.train.trainable", "TargetLoss.forward", "forward"),
          ("accelerate", "Accelerator.backward", "backward"),
          ("accelerate", "Accelerator.clip_grad_norm_", "clip"),
          ("accelerate.optimizer", "AcceleratedOptimizer.step", "optimizer"),
          ("accelerate.optimizer", "AcceleratedOptimizer.zero_grad", "zero_grad"),
          ("usertwin.train.trainer", "Trainer._log_interval", "log"))


@contextlib.contextmanager
def breakdown(into: dict | None, first: int, steps: int = 3):
    """Where a step's wall time goes (issue 27: 1.25 s a step against 227 ms of kernels on an H100): for steps
    first .. first+steps-1, each phase of the loop is timed between device syncs (so a phase's host time and the
    kernels it waits for count to it); `into` gets each phase's mean ms a step, the step's wall ms, and the caching
    allocator's cudaMalloc calls and retries a step over every step of the run."""
    if into is None:
        yield
        return
    import importlib

    from usertwin.train.trainer import Trainer

    count, sums, marks, patched = [-1], dict.fromkeys([p for *_, p in PHASES], 0.0), [], []

    def allocator() -> tuple[int, int]:
        s = torch.cuda.memory_stats() if torch.cuda.is_available() else {}
        return s.get("num_device_alloc", 0), s.get("num_alloc_retries", 0)

    def timed(fn, phase):
        def wrapper(*a, **k):
            if not first <= count[0] < first + steps:
                return fn(*a, **k)
            gt.sync()
            t = time.perf_counter()
            out = fn(*a, **k)
            gt.sync()
            sums[phase] += time.perf_counter() - t
            return out
        return wrapper

    for module, name, phase in PHASES:
        owner = importlib.import_module(module)
        *outer, attr = name.split(".")
        for part in outer:
            owner = getattr(owner, part)
        patched.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, timed(getattr(owner, attr), phase))
    original_fb = Trainer._forward_backward

    def counted(self, group, interval):  # the step's start: wall time and allocator counters
        gt.sync()
        count[0] += 1  # the step the loop is in until the next one starts (clip, optimizer and log follow)
        marks.append((count[0], time.perf_counter(), *allocator()))
        original_fb(self, group, interval)

    Trainer._forward_backward = counted
    try:
        yield
    finally:
        Trainer._forward_backward = original_fb
        for owner, attr, fn in reversed(patched):
            setattr(owner, attr, fn)
        walls = [(b[1] - a[1]) for a, b in zip(marks, marks[1:]) if first <= a[0] < first + steps]
        into.update({p: round(1000 * v / steps, 1) for p, v in sums.items()})
        into["step_wall"] = round(1000 * sum(walls) / max(len(walls), 1), 1)
        into["cudamalloc_per_step"] = [b[2] - a[2] for a, b in zip(marks, marks[1:])]
        into["alloc_retries_per_step"] = [b[3] - a[3] for a, b in zip(marks, marks[1:])]


def logged_steps(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
    return [{"tokens": r["interval_tokens"], "target_tokens": r["interval_target_tokens"], "t": r["time"]}
            for r in rows if "interval_tokens" in r]


def first_losses(out: Path, n: int = 3) -> list[float]:
    rows = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
    return [round(r["loss"], 5) for r in rows if "loss" in r and "interval_tokens" in r][:n]


def run_variant(shape: str, variant: str, folder: Path, n: int, records: Path, tokenizer, args) -> dict:
    label = f"{shape}-{variant}"
    over = dict(VARIANTS[variant], learning_rate=2e-4, max_length=args.max_length)
    prof = args.out / "profiles.txt" if args.profile and shape == args.shapes[0] else None
    timed = args.warmup + args.steps
    split = {} if args.breakdown else None
    # extra steps after the timed ones: two profiled, three broken down; their own cost stays out of tokens/s
    extra = (2 if prof else 0) + (4 if args.breakdown else 0)
    over["max_steps"] = timed + extra
    with profiled(prof, label, timed), breakdown(split, timed + (2 if prof else 0)):
        r = gt.run_usertwin(records, folder, args, "timeline", False, tokenizer, label, **over)
    steps = logged_steps(args.work / "runs" / label)
    if extra:
        r.update(gt.steady(steps[:timed], args.warmup))
    r["step_ms"] = [round(1000 * (b["t"] - a["t"])) for a, b in zip(steps, steps[1:])]
    if split is not None:
        r["breakdown_ms"] = split
    r["first_losses"] = first_losses(args.work / "runs" / label)
    flops = 6 if variant == "full" else 4
    r.update(shape=shape, variant=variant, params=n,
             mfu_6n=round(100 * 6 * n * r["tokens_per_second"] / peak_flops(), 1),
             mfu_done=round(100 * flops * n * r["tokens_per_second"] / peak_flops(), 1))
    return r


def markdown(results: list[dict], env: dict) -> str:
    lines = [f"# LoRA against full fine-tuning ({env['device']})", "",
             f"`{env['command']}` on {env['date']}; torch {env['torch']}. `usertwin train` in process, timeline "
             "unit, packed rows, random bf16 weights of the real shapes, the same users and steps for every "
             "variant; tokens/s over the steps after the warm-up. MFU (6N) = 6 N tokens/s / 989 TFLOP/s; "
             "'done' counts what each variant computes (full 6N, LoRA 4N: no weight gradients of the base).", "",
             "| shape | variant | status | tokens/s | vs full | MFU % (6N) | MFU % (done) | peak GiB | first losses |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    full = {r["shape"]: r for r in results if r.get("variant") == "full" and r["status"] == "ok"}
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['shape']} | {r['variant']} | {r['status']} {r.get('error', '')[:60]} | | | | | "
                         f"{r['peak_memory_gib']} | |")
            continue
        base = full.get(r["shape"])
        ratio = f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}x" if base else "-"
        lines.append(f"| {r['shape']} | {r['variant']} | ok | {r['tokens_per_second']:,.0f} | {ratio} | "
                     f"{r['mfu_6n']} | {r['mfu_done']} | {r['peak_memory_gib']} | {r['first_losses']} |")
    split = [r for r in results if r.get("breakdown_ms")]
    if split:
        phases = [p for *_, p in PHASES]
        lines += ["", "Where a step's wall time goes (ms a step, each phase between device syncs; --breakdown):", "",
                  "| shape | variant | " + " | ".join(phases) + " | step wall | cudaMalloc a step |",
                  "| --- | --- | " + " | ".join("---" for _ in phases) + " | --- | --- |"]
        for r in split:
            b = r["breakdown_ms"]
            lines.append(f"| {r['shape']} | {r['variant']} | " + " | ".join(str(b.get(p, "")) for p in phases)
                         + f" | {b['step_wall']} | {b['cudamalloc_per_step']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=Path, required=True, help="ml-latest-small records (JSONL)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer folder (SmolLM2's)")
    ap.add_argument("--out", type=Path, required=True, help="folder for lora_speed.json/.md and the profiles")
    ap.add_argument("--work", type=Path, default=Path("/tmp/usertwin-lora-speed"), help="scratch folder")
    ap.add_argument("--shapes", nargs="+", choices=("smollm2", "qwen3-1.7b", "tiny"), default=["smollm2", "qwen3-1.7b"])
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--users", type=int, default=150, help="random users whose data the measured steps use")
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--batch_tokens", type=int, default=65536, help="tokens per packed micro-batch (= step)")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the timed ones")
    ap.add_argument("--steps", type=int, default=8, help="timed steps")
    ap.add_argument("--profile", action="store_true", help="profile two steps of each variant of the first shape")
    ap.add_argument("--breakdown", action="store_true",
                    help="time each phase of three more steps between device syncs (where a step's wall time goes)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    from usertwin.text.tokens import load_tokenizer

    env = ss.environment("lora_speed.py", argv)
    print(json.dumps(env), flush=True)
    tokenizer = load_tokenizer(str(args.tokenizer))
    records = gt.subset_records(args.records, args.users, 0, args.work / "subset.jsonl")
    results = []
    for shape in args.shapes:
        folder, n = model_dir(shape, args.tokenizer, args.work)
        for variant in args.variants:
            gt.measure(f"{shape}-{variant}", partial(run_variant, shape, variant, folder, n, records, tokenizer, args),
                       results, {"shape": shape, "variant": variant})
            (args.out / "lora_speed.json").write_text(json.dumps({"env": env, "results": results}, indent=1))
    text = markdown(results, env)
    (args.out / "lora_speed.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"done in {time.time() - t0:.0f} s", flush=True)
