"""`usertwin convert DATASET RAW -o records.jsonl`."""

from __future__ import annotations

NAME = "convert"
HELP = "raw public dataset -> records (JSONL)"


def add_arguments(p) -> None:
    from usertwin.data.convert import DATASETS

    # no choices=: the name is also taken in other cases and with _ for - (douban_dmr)
    p.add_argument("dataset", metavar="DATASET", help=f"the raw data's layout: {', '.join(DATASETS)}")
    p.add_argument("raw", metavar="RAW", help="the raw file or folder")
    p.add_argument("-o", "--output", required=True, help="records file to write (JSONL)")
    p.add_argument("--on_error", choices=("stop", "skip"), default="stop",
                   help="stop at the first bad row (default) or skip and count bad rows")


def run(args) -> int:
    from usertwin.data.convert import DATASETS, convert_to_file

    summary = convert_to_file(args.dataset, args.raw, args.output, on_error=args.on_error, progress=args.progress)
    print(summary.line())
    note = getattr(DATASETS.get(args.dataset.strip().lower().replace("_", "-")), "NOTE", None)
    if note:
        print(f"note: {note}")
    return 0
