"""`usertwin validate FILE [--repair OUT] [--targets]`."""

from __future__ import annotations

NAME = "validate"
HELP = "check a records file; optionally write a repaired copy"

TARGETS_HINT = ("hint: a scenario's test file (test_leaderboard.json: items without a continuation, the targets) "
                "is checked with --targets")


def add_arguments(p) -> None:
    p.add_argument("file", help="a records file (JSON or JSON Lines)")
    p.add_argument("--repair", metavar="OUT", help="write a repaired copy to OUT (never in place)")
    p.add_argument("--on_error", choices=("stop", "skip"), default="stop",
                   help="stop at bad records (default) or skip and count them")
    p.add_argument("--targets", action="store_true",
                   help="FILE is a test file of targets (a scenario's test_leaderboard.json, see predict "
                        "--scenario): its items may have no continuation. Without it every item needs one")


def run(args) -> int:
    from usertwin.data.records import validate_file
    from usertwin.errors import UsertwinError

    try:
        report = validate_file(args.file, repair_out=args.repair, on_error=args.on_error, targets=args.targets)
    except UsertwinError as e:
        if args.targets or ".continuation: missing" not in str(e):
            raise
        raise UsertwinError(f"{e}\n{TARGETS_HINT}") from None
    for line in report.summary_lines():
        print(line)
    return 0
