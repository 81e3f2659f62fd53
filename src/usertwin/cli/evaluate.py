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


def run(args) -> int:
    from pathlib import Path

    from usertwin.atomic import write_json
    from usertwin.errors import UsertwinError
    from usertwin.eval.metrics import evaluate_rows, format_table, read_rows

    if not args.predictions and not args.run:
        raise UsertwinError("pass a predictions file or --run RUN_DIR")
    path = Path(args.predictions) if args.predictions else RunDir(args.run).predictions(args.split)
    if not path.is_file():
        hint = f"; run: usertwin predict --run {args.run} --split {args.split}" if args.run else ""
        raise UsertwinError(f"{path} does not exist{hint}")
    metrics = evaluate_rows(read_rows(path))
    out = Path(args.output) if args.output else RunDir.metrics_beside(path)
    write_json(out, metrics)
    print(format_table(metrics))
    print(f"wrote {out}")
    return 0
