"""`usertwin validate FILE [--repair OUT]`."""

from __future__ import annotations

NAME = "validate"
HELP = "check a records file; optionally write a repaired copy"


def add_arguments(p) -> None:
    p.add_argument("file", help="a records file (JSON or JSON Lines)")
    p.add_argument("--repair", metavar="OUT", help="write a repaired copy to OUT (never in place)")
    p.add_argument("--on_error", choices=("stop", "skip"), default="stop",
                   help="stop at bad records (default) or skip and count them")


def run(args) -> int:
    from usertwin.data.records import validate_file

    report = validate_file(args.file, repair_out=args.repair, on_error=args.on_error)
    for line in report.summary_lines():
        print(line)
    return 0
