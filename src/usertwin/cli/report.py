"""`usertwin report RUN [RUN ...] -o report.html`: one self-contained page comparing runs (+ report.md)."""

from __future__ import annotations

NAME = "report"
HELP = "one self-contained HTML (+ Markdown) comparing runs, with baselines"


def add_arguments(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train run directories to compare")
    p.add_argument("-o", "--output", default="report.html", help="HTML file (report.md and PNGs go beside it)")
    p.add_argument("--baselines", help="baselines JSON (default: the first run's baselines.json, if any)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="which split's predictions")
    p.add_argument("--examples", type=int, default=5, help="users per run in the sample of predictions")


def run(args) -> int:
    import json
    from pathlib import Path

    from usertwin.errors import UsertwinError
    from usertwin.eval.report import build_report
    from usertwin.rundir import RunDir

    for run_dir in args.runs:
        if not Path(run_dir).is_dir():
            raise UsertwinError(f"{run_dir} is not a run directory")
    base_path = Path(args.baselines) if args.baselines else RunDir(args.runs[0]).baselines
    baselines = None
    if base_path.is_file():
        baselines = json.loads(base_path.read_text(encoding="utf-8"))
    elif args.baselines:
        raise UsertwinError(f"{base_path} does not exist; run: usertwin baselines --run RUN_DIR")
    out = build_report([Path(r) for r in args.runs], Path(args.output), baselines=baselines,
                       max_examples=args.examples, split=args.split)
    print(f"wrote {out['html']} and {out['markdown']} ({out['rows']} table rows)")
    return 0
