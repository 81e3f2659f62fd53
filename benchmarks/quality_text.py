"""Text and dialogue quality (issue 15, part 4): does the twin write more like the user than the baselines?

Two real text sets, each converted with `usertwin convert`, every variant scored on the same test targets
(time split, 70/15/15 of each user's items, seed 42 — the config defaults):

* `douban_dmr`: /work/shared/data/douban_dmr (`convert douban-dmr`): 44 Douban users, each with their own
  earlier reviews (1,223 non-empty, 1 to 60 per user), so the default per-user time split gives every user
  with enough reviews a history before the test targets (185 test reviews over all users).
* `seed_dialogue`: the seeds' dialogue sample, /work/shared/data/seed_examples/all_samples.json
  (`convert seed-samples`): 5 Japanese chat users, 159 replies, each with its conversation as context
  (no timestamps: file order is time).

Variants (a variant hides exactly one thing so the comparison isolates it):

* `baselines`: `usertwin baselines`: the text baselines copy_last_item (the user's latest earlier
  continuation) and item_most_frequent (the most frequent train continuation of the same item, else of the
  collection), chrF / BLEU / ROUGE-L on the test targets.
* `zero_shot`: the base model (`--model`, default `smollm2`, the embedded SmolLM2-135M-Instruct GGUF), no
  training, history and context shown (`--ablation history_and_context`; with `--with_profile` the profile
  too: `profile_and_history_and_context`, the config default).
* `zero_shot_no_history`: the same without the user's earlier items (`--ablation context_only`, or
  `profile_and_context`; the dialogue keeps its conversation context, so only the history is taken away).
* `lora_history` / `lora_no_history`: LoRA twins (r 16, alpha 32) trained on the train split with each of
  those two ablations, timeline unit, `--max_epochs` epochs, best weights by validation loss.

Each model variant runs `usertwin predict --split test` with greedy generation (`--max_new_tokens`) and
pick-the-real-one (`--pick 3`: the reference against 3 distractors by likelihood; distractors are other
users' test continuations of the same item where there are any, else random other test continuations —
the script counts which case each target is in), then `usertwin evaluate`: chrF, BLEU, ROUGE-L, length
ratio, pick accuracy vs chance.

Every CLI step runs as a subprocess (PYTHONUNBUFFERED=1) logging to WORKDIR/DATASET/logs/STEP.log; a failed
step stops the script with its log's tail. Steps whose output exists are skipped (steps.json keeps their
wall times), so a cut-off run continues where it stopped; predict resumes by itself.

Commands (results in benchmarks/results/quality_text[_SUFFIX].{json,md}):

    # CPU (what benchmarks/results/quality_text_cpu.* holds): see that file's command line

    # GPU machine: every user of both sets, long prompts, full-length reviews
    python benchmarks/quality_text.py --model /path/to/smollm2.gguf --max_length 2048 \\
        --max_new_tokens 160 --max_epochs 2 --with_profile --results_suffix h200
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_movielens import RESULTS, ROOT, Steps, machine, subset, train_summary, val_span, write_config  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DATASETS = {  # name: (converter, raw input under --data_dir)
    "douban_dmr": ("douban-dmr", "douban_dmr"),
    "seed_dialogue": ("seed-samples", "seed_examples/all_samples.json"),
}
# (with history, without): context (the dialogue so far) is always shown; the profile only with --with_profile:
# douban-dmr's profile is account counts, and the seeds' is ~250 tokens of traits, which at a CPU's short
# max_length leave no room for history (SmolLM2 spends ~3 tokens on a Chinese or Japanese character)
SHOWN = {False: ("history_and_context", "context_only"), True: ("profile_and_history_and_context", "profile_and_context")}
WITH_HISTORY = {"zero_shot": True, "zero_shot_no_history": False, "lora_history": True, "lora_no_history": False}


def ablation(variant: str, with_profile: bool) -> str:
    return SHOWN[with_profile][0 if WITH_HISTORY[variant] else 1]
ZERO = ("zero_shot", "zero_shot_no_history")
TWINS = ("lora_history", "lora_no_history")
VARIANTS = ("baselines",) + ZERO + TWINS


def split_facts(records: Path, pick: int) -> dict:
    """Users, items and targets per split of the records under the default split, and how the pick
    distractors come about: per test target, how many other users' test continuations of the same item
    (what predict samples first) there are."""
    from usertwin.config import from_mapping
    from usertwin.data.records.format import item_key
    from usertwin.eval import baselines

    timelines, splits = baselines.load_split(from_mapping({"data": str(records)}, "quality_text"))
    counts = {"train": 0, "val": 0, "test": 0}
    by_item, tests = {}, []
    for tl in timelines:
        for pos, lab in enumerate(splits[tl.user_id]):
            counts[lab] = counts.get(lab, 0) + 1
            if lab == "test":
                it = tl.items[pos]
                by_item.setdefault(item_key(it), set()).add((tl.user_id, it.continuation))
                tests.append((tl.user_id, it))
    full = part = none = 0
    for user, it in tests:
        same = {c for u, c in by_item[item_key(it)] if u != user and c != it.continuation}
        full += len(same) >= pick
        part += 0 < len(same) < pick
        none += not same
    n_items = [len(tl.items) for tl in timelines]
    return {"users": len(timelines), "items": sum(n_items), "items_per_user_min": min(n_items),
            "items_per_user_max": max(n_items), "users_with_test_targets":
                sum(1 for tl in timelines if "test" in splits[tl.user_id]),
            "targets": counts, "distinct_test_item_keys": len(by_item),
            "pick_distractors": {f"all {pick} from other users' same item": full,
                                 f"1-{pick - 1} from the same item, the rest random": part,
                                 "all random other test continuations": none}}


def text_summary(metrics: dict) -> dict:
    ov = metrics["overall"]
    text = ov.get("text") or {}
    lang, t = next(iter(text.items())) if text else (None, {})
    pick = ov["all"].get("pick") or {}
    return {"language": lang, "n": t.get("n"), "chrf": t.get("chrf"), "bleu": t.get("bleu"),
            "rouge_l": t.get("rouge_l"), "length_ratio": t.get("length_ratio"), "distinct_2": t.get("distinct_2"),
            "perplexity": t.get("perplexity"), "pick_accuracy": pick.get("accuracy"),
            "pick_chance": pick.get("chance"), "pick_n": pick.get("n")}


def fmt(x, d=2):
    return "-" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def run_dataset(name: str, args, skip: set, work: Path, notes: list) -> dict:
    converter, raw = DATASETS[name]
    raw = (args.data_dir / raw).resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(work)
    full = work / "records.jsonl"
    steps.run("convert", ["convert", converter, str(raw), "-o", str(full)], full)
    n_all = sum(1 for ln in full.read_text(encoding="utf-8").splitlines() if ln.strip())
    users = None
    if args.users and args.users < n_all:
        records = work / f"records-{args.users}users-seed{args.user_seed}.jsonl"
        users = subset(full, records, args.users, args.user_seed)
        slice_desc = (f"a seeded random subset of {args.users} of {n_all} users (random.Random({args.user_seed})"
                      f".sample of the records' line indices)")
    else:
        records, slice_desc = full, f"all {n_all} users"
    out = {"converter": converter, "raw": str(raw), "slice": slice_desc, "users": users,
           "split": split_facts(records, args.pick), "baselines": {}, "variants": {}}
    if args.users and records is not full:
        out["split_all_users"] = split_facts(full, args.pick)
    common = {"model": args.model, "data": str(records), "max_length": args.max_length, "unit": "timeline",
              "history_strategy": "all_previous", "seed": 42, "crowd_context": args.crowd_context}

    if "baselines" not in skip:
        b = work / "baselines.json"
        rows_dir = work / "baseline_rows"  # per-target rows: the paired differences with the best baseline
        steps.run("baselines", ["baselines", "--data", str(records), "--split", "test", "-o", str(b),
                                "--predictions", str(rows_dir), "--no-progress"], b)
        out["baselines"] = {k: v for k, v in json.loads(b.read_text()).items() if "chrf" in v}
        out["baseline_predictions"] = {k: str(rows_dir / f"{k}.jsonl") for k in out["baselines"]}

    predict_flags = ["--split", "test", "--max_new_tokens", str(args.max_new_tokens), "--pick", str(args.pick),
                     "--batch_size", str(args.batch_size), "--no-progress"]
    for v in ZERO:
        if v in skip:
            continue
        d = work / v
        cfg = write_config(work / "configs" / f"{v}.yaml", dict(common, ablation=ablation(v, args.with_profile)))
        pred = d / "predictions-test.jsonl"
        t_pred = steps.run(f"{v}_predict", ["predict", "--config", str(cfg), "-o", str(pred)] + predict_flags, pred)
        steps.run(f"{v}_evaluate", ["evaluate", str(pred), "-o", str(d / "metrics.json"), "--no-progress"],
                  d / "metrics.json")
        out["variants"][v] = dict(text_summary(json.loads((d / "metrics.json").read_text())), ablation=ablation(v, args.with_profile),
                                  train_wall_s=None, predict_wall_s=t_pred, predictions=str(pred))
    for v in TWINS:
        if v in skip:
            continue
        run = work / v
        cfg = write_config(work / "configs" / f"{v}.yaml", dict(
            common, ablation=ablation(v, args.with_profile), lora=True, lora_r=16, lora_alpha=32, learning_rate=args.lora_lr,
            warmup_ratio=0.1, batch_tokens=args.batch_tokens if args.batch_tokens == "auto" else int(args.batch_tokens),
            max_epochs=args.max_epochs, output_dir=str(run)))
        marker = run / "summary.json"  # written when training has finished
        train_argv = ["train", "--config", str(cfg), "--no-progress"]
        if run.exists() and any(run.iterdir()) and not (f"train_{v}" in steps.done and marker.exists()):
            train_argv.append("--overwrite")  # an unfinished run: start it again
        t_train = steps.run(f"train_{v}", train_argv, marker)
        pred = run / "predictions-test.jsonl"
        t_pred = steps.run(f"{v}_predict", ["predict", "--run", str(run)] + predict_flags, pred)
        steps.run(f"{v}_evaluate", ["evaluate", "--run", str(run), "--split", "test", "--no-progress"],
                  run / "metrics.json")
        out["variants"][v] = dict(text_summary(json.loads((run / "metrics.json").read_text())), ablation=ablation(v, args.with_profile),
                                  train_wall_s=t_train, predict_wall_s=t_pred, summary=train_summary(run),
                                  predictions=str(pred))
    n_base = next((b.get("n") for b in out["baselines"].values()), None)
    for v, m in out["variants"].items():
        if n_base is not None and m["n"] != n_base:
            notes.append(f"{name} {v}: {m['n']} text targets, the baselines {n_base}: NOT the same targets")
    out["steps"] = steps.done
    out["steps_wall_s_sum"] = round(sum(s["wall_s"] for s in steps.done.values()), 1)
    out["paired"] = paired_differences(out)
    out["comparison"] = comparison(out)
    return out


def paired_differences(ds: dict) -> dict:
    """{"A - B": usertwin.eval.intervals.paired} for history vs none, the twin vs zero-shot, and every variant vs
    the best baseline by chrF, where both predictions files exist."""
    from usertwin.eval.intervals import paired
    from usertwin.eval.metrics import read_rows

    files = {n: v.get("predictions") for n, v in ds["variants"].items()}
    pairs = [(a, b, files.get(a), files.get(b)) for a, b in (
        ("zero_shot", "zero_shot_no_history"), ("lora_history", "lora_no_history"), ("lora_history", "zero_shot"))]
    best = max(ds["baselines"].items(), key=lambda kv: kv[1].get("chrf") or 0, default=(None, None))[0]
    if best and ds.get("baseline_predictions"):
        pairs += [(n, f"baseline {best}", f, ds["baseline_predictions"][best]) for n, f in files.items()]
    return {f"{a} - {b}": paired(read_rows(fa), read_rows(fb)) for a, b, fa, fb in pairs
            if fa and fb and Path(fa).is_file() and Path(fb).is_file()}


def paired_lines(ds: dict) -> list[str]:
    from usertwin.eval.intervals import pair_line

    lines = [pair_line(key, cmp, [m for m in (cmp or {}).get("labels", {})
                                  if m.endswith("_chrf") or m == "pick_accuracy"], 2)
             for key, cmp in (ds.get("paired") or {}).items()]
    return [x for x in lines if x]


def comparison(ds: dict) -> list[str]:
    lines = []
    best = max(ds["baselines"].items(), key=lambda kv: kv[1].get("chrf") or 0, default=None)
    for v, m in ds["variants"].items():
        if best and m.get("chrf") is not None:
            lines.append(f"{v}: chrF {m['chrf']:.2f} vs best baseline {best[0]} {best[1]['chrf']:.2f} "
                         f"({'beats' if m['chrf'] > best[1]['chrf'] else 'does NOT beat'} it)")
    for h, n in (("zero_shot", "zero_shot_no_history"), ("lora_history", "lora_no_history")):
        a, b = ds["variants"].get(h), ds["variants"].get(n)
        if a and b and a.get("chrf") is not None and b.get("chrf") is not None:
            pick = ""
            if a.get("pick_accuracy") is not None and b.get("pick_accuracy") is not None:
                pick = f"; pick accuracy {a['pick_accuracy']:.3f} vs {b['pick_accuracy']:.3f}"
            lines.append(f"{h} vs {n}: chrF {a['chrf']:.2f} vs {b['chrf']:.2f} "
                         f"({'history helps' if a['chrf'] > b['chrf'] else 'history does NOT help'}){pick}")
    z, t = ds["variants"].get("zero_shot"), ds["variants"].get("lora_history")
    if z and t and z.get("chrf") is not None and t.get("chrf") is not None:
        lines.append(f"twin vs zero-shot: chrF {t['chrf']:.2f} vs {z['chrf']:.2f}; pick accuracy "
                     f"{fmt(t.get('pick_accuracy'), 3)} vs {fmt(z.get('pick_accuracy'), 3)}")
    return lines


def markdown(res: dict) -> str:
    m, s = res["machine"], res["setup"]
    lines = [f"# Text and dialogue quality ({res['date']})", "", f"Command: `{res['command']}`", "",
             f"Machine: {m['host']}, {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}; Python {m['python']}, "
             f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, usertwin {m['usertwin']} "
             f"(commit {m['git_commit']}).", "",
             f"Model `{s['model']}`, max_length {s['max_length']}, timeline unit; predict: greedy generation, "
             f"max_new_tokens {s['max_new_tokens']}, pick-the-real-one with {s['pick']} distractors; LoRA r 16, "
             f"alpha 32, lr {s['lora_lr'] or 'default (2e-4 x sqrt rows per step)'}, {s['max_epochs']} epoch(s). "
             "Split: time, 70/15/15 of each user's items, seed 42 (config defaults). Ablations (with history / "
             f"without): `{s['ablations']['zero_shot']}` / `{s['ablations']['zero_shot_no_history']}`.", ""]
    for name, ds in res["datasets"].items():
        sp = ds["split"]
        lines += [f"## {name}", "",
                  f"Data: `usertwin convert {ds['converter']} {ds['raw']}`; {ds['slice']}"
                  + (f" (users {', '.join(ds['users'])})" if ds.get("users") else "") + ". "
                  f"{sp['users']} users, {sp['items']} items ({sp['items_per_user_min']}-{sp['items_per_user_max']} "
                  f"per user); targets train/val/test {sp['targets']['train']}/{sp['targets']['val']}/"
                  f"{sp['targets']['test']} ({sp['users_with_test_targets']} users have test targets). "
                  "Pick distractors per test target: "
                  + "; ".join(f"{k}: {v}" for k, v in sp["pick_distractors"].items()) + ".", ""]
        if ds.get("split_all_users"):
            a = ds["split_all_users"]
            lines += [f"All {a['users']} users (the GPU command): targets train/val/test {a['targets']['train']}/"
                      f"{a['targets']['val']}/{a['targets']['test']}; pick distractors: "
                      + "; ".join(f"{k}: {v}" for k, v in a["pick_distractors"].items()) + ".", ""]
        lines += ["| variant | test targets | chrF | BLEU | ROUGE-L | length ratio | pick acc | chance | "
                  "val loss before -> best | train s | predict s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for b, v in ds["baselines"].items():
            lines.append(f"| baseline {b} | {v.get('n')} | {fmt(v.get('chrf'))} | {fmt(v.get('bleu'))} | "
                         f"{fmt(v.get('rouge_l'))} | {fmt(v.get('length_ratio'))} | | | | | |")
        for v, x in ds["variants"].items():
            vls = val_span(x.get("summary"))
            lines.append(f"| {v} | {x['n']} | {fmt(x['chrf'])} | {fmt(x['bleu'])} | {fmt(x['rouge_l'])} | "
                         f"{fmt(x['length_ratio'])} | {fmt(x['pick_accuracy'], 3)} | {fmt(x['pick_chance'], 3)} | "
                         f"{vls} | {fmt(x.get('train_wall_s'), 1)} | {fmt(x.get('predict_wall_s'), 1)} |")
        lines += ["", f"Wall time of its steps: {ds['steps_wall_s_sum']:.0f} s.", ""]
        lines += [f"* {c}" for c in ds["comparison"]] + [""]
        if paired := paired_lines(ds):
            lines += ["Paired differences, A - B on the same targets (95% interval from 1,000 resamples of the "
                      "users; usertwin evaluate --against):", ""] + [f"* {c}" for c in paired] + [""]
    if res.get("notes"):
        lines += ["Notes:", ""] + [f"* {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated, of: %(default)s")
    ap.add_argument("--data_dir", type=Path, default=DATA, help="the folder holding douban_dmr/ and "
                    "seed_examples/ (default: %(default)s)")
    ap.add_argument("--out", help="work directory (default runs/quality_text[_SUFFIX])")
    ap.add_argument("--results_suffix", default="", help="results file name suffix, e.g. cpu, h200")
    ap.add_argument("--results_dir", type=Path, default=RESULTS, help="where the json and md results go")
    ap.add_argument("--users", type=int, help="per dataset, a seeded random subset of N users where it has more "
                    "(default: all)")
    ap.add_argument("--user_seed", type=int, default=42, help="seed of the user subset")
    ap.add_argument("--model", default="smollm2", help="smollm2 (embedded GGUF), a .gguf path, hub id or folder")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--max_new_tokens", type=int, default=128, help="tokens generated per target")
    ap.add_argument("--crowd_context", default="none", choices=("none", "item", "item_and_user"),
                    help="the twins' crowd context (douban-dmr's reviews carry stars; the dialogue has no ratings); "
                         "default none: the variants as measured before it existed")
    ap.add_argument("--with_profile", action="store_true", help="show the user's profile too (default: history and "
                    "context only)")
    ap.add_argument("--pick", type=int, default=3, help="distractors of pick-the-real-one")
    ap.add_argument("--max_epochs", type=int, default=1)
    ap.add_argument("--lora_lr", type=float, help="LoRA learning rate; unset: usertwin's default")
    ap.add_argument("--batch_size", default="auto", help="usertwin predict --batch_size (a number or auto)")
    ap.add_argument("--batch_tokens", default="auto", help="usertwin train --batch_tokens (a number or auto)")
    ap.add_argument("--skip", default="", help=f"comma-separated variants to skip, of: {','.join(VARIANTS)}")
    ap.add_argument("--note", action="append", default=[], help="a note for the results (repeatable)")
    args = ap.parse_args(argv)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(VARIANTS):
        ap.error(f"--skip: unknown {sorted(skip - set(VARIANTS))}; choose from {','.join(VARIANTS)}")
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(names) - set(DATASETS):
        ap.error(f"--datasets: unknown {sorted(set(names) - set(DATASETS))}; choose from {','.join(DATASETS)}")
    suffix = f"_{args.results_suffix}" if args.results_suffix else ""
    work = (Path(args.out) if args.out else ROOT / "runs" / f"quality_text{suffix}").resolve()
    notes = list(args.note)
    if skip:
        notes.append(f"skipped variants (--skip): {', '.join(v for v in VARIANTS if v in skip)}")
    t0 = time.perf_counter()
    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": shlex.join(["python", "benchmarks/quality_text.py"]
                                 + (argv if argv is not None else sys.argv[1:])),
           "machine": machine(),
           "setup": {"model": args.model, "max_length": args.max_length, "max_new_tokens": args.max_new_tokens,
                     "pick": args.pick, "max_epochs": args.max_epochs, "lora_lr": args.lora_lr,
                     "users": args.users, "user_seed": args.user_seed, "workdir": str(work),
                     "ablations": {v: ablation(v, args.with_profile) for v in WITH_HISTORY}},
           "datasets": {}}
    for name in names:
        res["datasets"][name] = run_dataset(name, args, skip, work / name, notes)
    res["setup"]["this_invocation_wall_s"] = round(time.perf_counter() - t0, 1)
    res["notes"] = notes

    from usertwin.atomic import write_json, write_text

    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.results_dir / f"quality_text{suffix}.json", res)
    md = markdown(res)
    write_text(args.results_dir / f"quality_text{suffix}.md", md)
    print(md)
    print(f"wrote {args.results_dir / f'quality_text{suffix}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
