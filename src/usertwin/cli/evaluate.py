"""`usertwin evaluate --run RUN` (or a predictions file): the metrics file and a printed table."""

from __future__ import annotations

from usertwin.rundir import METRICS_NAME, RunDir

NAME = "evaluate"
HELP = f"predictions -> {METRICS_NAME} and a printed table"
_EXAMPLE = RunDir("RUN")


def add_arguments(p) -> None:
    p.add_argument("predictions", nargs="?", help="a predictions JSONL file")
    p.add_argument("--run", help=f"a run directory: evaluates {_EXAMPLE.predictions('SPLIT')} into "
                                 f"{_EXAMPLE.metrics}")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="which split's predictions")
    p.add_argument("-o", "--output", help=f"metrics file (default: {METRICS_NAME} beside the predictions)")
    p.add_argument("--against", metavar="PREDICTIONS_OR_RUN",
                   help="a second predictions file (or run directory, its --split predictions) to compare with on "
                        "the targets both hold: each headline metric's difference with a 95%% interval from "
                        "resampling users, and whether it is beyond noise")


def run(args) -> int:
    from pathlib import Path

    from usertwin.atomic import write_json
    from usertwin.errors import UsertwinError
    from usertwin.eval import intervals
    from usertwin.eval.metrics import evaluate_rows, format_table, read_rows

    if not args.predictions and not args.run:
        raise UsertwinError("pass a predictions file or --run RUN_DIR")
    path = Path(args.predictions) if args.predictions else RunDir(args.run).predictions(args.split)
    _check_exists(path, args.run, args.split)
    rows = read_rows(path)
    metrics = evaluate_rows(rows)
    metrics["intervals"] = intervals.intervals(rows)
    lines = [format_table(metrics), "", intervals.format_intervals(metrics["intervals"])]
    if args.against:
        is_run = Path(args.against).is_dir()
        other = RunDir(args.against).predictions(args.split) if is_run else Path(args.against)
        _check_exists(other, args.against if is_run else None, args.split)
        cmp = intervals.paired(rows, read_rows(other))
        metrics["against"] = dict(cmp or {}, file=str(other))
        lines += ["", intervals.format_paired(cmp, str(path), str(other))]
    out = Path(args.output) if args.output else RunDir.metrics_beside(path)
    write_json(out, metrics)
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


def _check_exists(path, run, split) -> None:
    from usertwin.errors import UsertwinError

    if not path.is_file():
        hint = f"; run: usertwin predict --run {run} --split {split}" if run else ""
        raise UsertwinError(f"{path} does not exist{hint}")
