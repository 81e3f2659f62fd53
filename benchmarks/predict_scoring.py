"""`usertwin predict --scoring target` vs `--scoring window`, side by side on the same targets.

`target` builds one prompt per target with all the history that fits max_length; `window` reads the
timeline unit's windows of the split once each and scores every target inside them (Engine.score_windows).
This script runs both on the same model and records (a seeded user subset of a records file), and prints:
wall time and targets per second of each, tokens read (the prompts' tokens vs the windows' tokens, counted by
the same renderer and tokenizer), history items per target, the expected-rating RMSE of each against the
references, and how far the two modes' expected ratings are apart on the same target.

    .venv/bin/usertwin convert movielens ../shared/data/movielens/ml-latest-small -o ml.jsonl
    .venv/bin/python benchmarks/predict_scoring.py --records ml.jsonl --users 5 --max_length 1024 \\
        --results_suffix cpu

Results: benchmarks/results/predict_scoring[_SUFFIX].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_movielens import RESULTS, ROOT, machine, subset, usertwin_cmd, write_config  # noqa: E402

MODES = ("target", "window")


def run_mode(mode: str, cfg: Path, out: Path, batch_size: str) -> float:
    """Wall seconds of `usertwin predict --scoring MODE` (model loading included, as a user meets it)."""
    cmd = usertwin_cmd() + ["predict", "--config", str(cfg), "-o", str(out), "--no-generate", "--no-progress",
                            "--scoring", mode, "--batch_size", batch_size]
    print(f"[{mode}] {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def tokens_read(cfg_path: Path) -> dict:
    """Tokens each mode puts through the model for the test split: the per-target prompts, the windows."""
    import yaml

    from usertwin.config import from_mapping
    from usertwin.sequences.fit import build_prompt
    from usertwin.sequences.prepare import prepare
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import SequenceEncoder, load_tokenizer

    cfg = from_mapping(yaml.safe_load(cfg_path.read_text()), "predict_scoring")
    tok = load_tokenizer(cfg.model)
    prep = prepare(cfg, tokenizer=tok, progress=False)
    enc = SequenceEncoder(Renderer(cfg, tok), tok)
    prompts = sum(len(build_prompt(cfg, enc, tl, pos, 0, prep.lengths[tl.user_id]).ids)
                  for tl in prep.timelines for pos, lab in enumerate(prep.splits[tl.user_id]) if lab == "test")
    return {"target": prompts, "window": prep.stats["test"].tokens, "windows": prep.stats["test"].sequences}


def compare(rows: dict) -> dict:
    t, w = rows["target"], rows["window"]
    keys = sorted(set(t) & set(w))
    out = {"targets": len(keys), "same_targets": set(t) == set(w)}
    for mode, rs in rows.items():
        err = [(rs[k]["rating"]["expected"] - float(rs[k]["reference"])) ** 2 for k in keys]
        out[mode] = {"rmse": math.sqrt(sum(err) / len(err)),
                     "history_items_per_target": sum(rs[k]["history_len"] for k in keys) / len(keys),
                     "pick_accuracy": sum(rs[k]["pick"]["correct"] for k in keys if "pick" in rs[k])
                     / max(1, sum("pick" in rs[k] for k in keys))}
    diffs = [abs(t[k]["rating"]["expected"] - w[k]["rating"]["expected"]) for k in keys]
    out["mean_abs_expected_diff"] = sum(diffs) / len(diffs)
    out["same_history_targets"] = sum(t[k]["history_len"] == w[k]["history_len"] for k in keys)
    return out


def markdown(res: dict) -> str:
    m, c, tk = res["machine"], res["compare"], res["tokens"]
    lines = [f"# predict --scoring target vs window ({res['date']})", "", f"Command: `{res['command']}`", "",
             f"Machine: {m['host']}, {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}; torch {m['torch']}, "
             f"transformers {m['transformers']} (commit {m['git_commit']}).", "",
             f"Data: {res['setup']['subset']}; model `{res['setup']['model']}` (zero-shot), max_length "
             f"{res['setup']['max_length']}, ablation {res['setup']['ablation']}; {c['targets']} test targets "
             f"({'the same' if c['same_targets'] else 'NOT the same'} in both modes), {tk['windows']} windows.", "",
             "| scoring | wall s | targets/s | tokens read | history items / target | RMSE (expected) | pick acc |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in MODES:
        wall = res["wall_s"][mode]
        lines.append(f"| {mode} | {wall:.1f} | {c['targets'] / wall:.1f} | {tk[mode]:,} | "
                     f"{c[mode]['history_items_per_target']:.1f} | {c[mode]['rmse']:.4f} | "
                     f"{c[mode]['pick_accuracy']:.3f} |")
    lines += ["", f"* window vs target: {res['wall_s']['target'] / res['wall_s']['window']:.2f}x less wall time "
                  f"(model loading included), {tk['target'] / tk['window']:.2f}x fewer tokens read.",
              f"* The same target, the two modes' expected ratings differ by {c['mean_abs_expected_diff']:.4f} on "
              f"average; {c['same_history_targets']} of {c['targets']} targets see the same history both ways "
              "(there the numbers agree to float precision: tests/eval/test_predict.py)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", required=True, help="a records file (e.g. usertwin convert movielens ...)")
    ap.add_argument("--users", type=int, default=5, help="a seeded random subset of N users")
    ap.add_argument("--user_seed", type=int, default=42, help="seed of the user subset")
    ap.add_argument("--model", default="smollm2", help="the model to score with (zero-shot)")
    ap.add_argument("--max_length", type=int, default=1024, help="max_length of prompts and windows")
    ap.add_argument("--ablation", default="history_only", help="what the prompts show (config ablation)")
    ap.add_argument("--batch_size", default="auto", help="predict --batch_size")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "predict_scoring", help="work directory")
    ap.add_argument("--results_dir", type=Path, default=RESULTS, help="where the json and md results go")
    ap.add_argument("--results_suffix", default="", help="results file name suffix, e.g. cpu, h200")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / f"records-{args.users}users-seed{args.user_seed}.jsonl"
    users = subset(Path(args.records), records, args.users, args.user_seed)
    cfg = write_config(args.out / "config.yaml", {"model": args.model, "data": str(records), "unit": "timeline",
                                                  "max_length": args.max_length, "ablation": args.ablation})
    wall, rows = {}, {}
    for mode in MODES:
        out = args.out / f"predictions-{mode}.jsonl"
        out.unlink(missing_ok=True)
        wall[mode] = run_mode(mode, cfg, out, args.batch_size)
        rows[mode] = {(r["user"], r["target_index"]): r for r in map(json.loads, out.read_text().splitlines())}
    suffix = f"_{args.results_suffix}" if args.results_suffix else ""
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": shlex.join(["python", "benchmarks/predict_scoring.py"] + (argv or sys.argv[1:])),
           "machine": machine(),
           "setup": {"records": args.records, "subset": f"{args.users} seeded random users ({', '.join(users)})",
                     "model": args.model, "max_length": args.max_length, "ablation": args.ablation},
           "wall_s": wall, "tokens": tokens_read(cfg), "compare": compare(rows)}
    from usertwin.atomic import write_json, write_text

    write_json(args.results_dir / f"predict_scoring{suffix}.json", res)
    md = markdown(res)
    write_text(args.results_dir / f"predict_scoring{suffix}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
