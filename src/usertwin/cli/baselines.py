"""`usertwin baselines --run RUN` (or `--config CFG.yaml`): the baselines on the same split."""

from __future__ import annotations

NAME = "baselines"
HELP = ("global / user / item mean, LensKit damped bias, biased MF (ALS) and item kNN, copy-last on the same "
        "split")

# The settings baselines reads (usertwin.config's sections: "*" for every key of one, else the keys): the records
# and their split (eval/baselines.py load_split), whose seed also seeds the LensKit models. Any other setting
# given as a flag is refused, saying UNREAD; a --config file (or the run's config.yaml) may hold it.
READS = {"data": ("data", "on_error"), "split": "*"}
UNREAD = "fits its baselines on the records' split alone (no language model, no prompts)"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags

    add_config_flags(p, reads=READS)
    p.add_argument("--run", help="use this run directory's config (and write RUN/baselines.json)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="the split to score")
    p.add_argument("-o", "--output", help="baselines JSON file")
    p.add_argument("--predictions", metavar="DIR",
                   help="write each rating and text baseline's per-target predictions to DIR/NAME.jsonl, in "
                        "predict's row format (with --run, by default RUN/baselines-SPLIT/): `usertwin evaluate --run "
                        "RUN --against DIR/biased_mf.jsonl` and the report then say whether the twin's lead over a "
                        "baseline is beyond noise")


def fit_table(result: dict, split: str, seed: int) -> str:
    """One line per baseline of `result`: what it was fit on and the model with its settings."""
    from usertwin.eval.baselines import describe

    about = describe(split, {"seed": seed})
    names = list(dict.fromkeys(name.split(" [")[0] for name in result))  # text baselines: once, not per language
    rows = [("baseline", "fit on", "model")] + [(n, *about[n]) for n in names if n in about]
    widths = [max(len(r[j]) for r in rows) for j in range(2)]
    return "\n".join(f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}" for a, b, c in rows)


def run(args) -> int:
    import json
    from pathlib import Path

    from usertwin.atomic import write_json, write_text
    from usertwin.config import resolve
    from usertwin.errors import UsertwinError
    from usertwin.eval.baselines import FIT_ON, run_baselines
    from usertwin.eval.metrics import format_table
    from usertwin.rundir import RunDir

    cfg = resolve(args, RunDir(args.run).load_config() if args.run else None)
    if not cfg.data:
        raise UsertwinError("no data: pass --config CFG.yaml, --data RECORDS.jsonl or --run RUN_DIR")
    rows_dir = Path(args.predictions) if args.predictions else (RunDir(args.run).baseline_rows(args.split)
                                                                 if args.run else None)
    rows = {} if rows_dir else None
    result = run_baselines(cfg, split=args.split, rows=rows)
    print(format_table(result))
    print()
    print(fit_table(result, args.split, cfg.seed))
    print(f"({' + '.join(FIT_ON[args.split])}: what the twin's prompts show as history for {args.split} targets)")
    out = Path(args.output) if args.output else (RunDir(args.run).baselines if args.run else None)
    if out:
        write_json(out, result)
        print(f"wrote {out}")
    for name, baseline_rows in (rows or {}).items():
        write_text(rows_dir / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in baseline_rows))
    if rows:
        print(f"wrote each baseline's per-target rows: {rows_dir}/{{{','.join(rows)}}}.jsonl")
    return 0
