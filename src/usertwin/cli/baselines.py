"""`usertwin baselines --run RUN` (or `--config CFG.yaml`): the baselines on the same split."""

from __future__ import annotations

NAME = "baselines"
HELP = "global / user / item mean, user+item bias, copy-last on the same split"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags

    add_config_flags(p)
    p.add_argument("--run", help="use this run directory's config (and write RUN/baselines.json)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="the split to score")
    p.add_argument("-o", "--output", help="baselines JSON file")


def run(args) -> int:
    from pathlib import Path

    from usertwin.atomic import write_json
    from usertwin.config import resolve
    from usertwin.errors import UsertwinError
    from usertwin.eval.baselines import FIT_ON, run_baselines
    from usertwin.eval.metrics import format_table
    from usertwin.rundir import RunDir

    cfg = resolve(args, RunDir(args.run).load_config() if args.run else None)
    if not cfg.data:
        raise UsertwinError("no data: pass --config CFG.yaml, --data RECORDS.jsonl or --run RUN_DIR")
    result = run_baselines(cfg, split=args.split)
    print(format_table(result))
    print(f"fit on {' + '.join(FIT_ON[args.split])}: what the twin's prompts show as history for {args.split} targets")
    out = Path(args.output) if args.output else (RunDir(args.run).baselines if args.run else None)
    if out:
        write_json(out, result)
        print(f"wrote {out}")
    return 0
