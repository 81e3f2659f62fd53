"""The command line: one module per command (`usertwin/cli/<command>.py`), each declaring its flags next to its
handler. This module only assembles the parser and turns errors a user can fix into one line on stderr."""

from __future__ import annotations

import argparse
import sys

# the prompt styles first: importing them hands their names to usertwin.config (the prompt_style setting's
# choices, shown in --help and checked in flags and YAML files), which never imports text/ itself
import usertwin.text.styles  # noqa: F401
from usertwin.cli import (
    baselines,
    convert,
    evaluate,
    export,
    inspect,
    predict,
    prepare,
    report,
    serve,
    simulate,
    train,
    validate,
)
from usertwin.errors import UsertwinError
from usertwin.version import __version__

# the order of `usertwin --help`: the pipeline's order
COMMANDS = (convert, validate, prepare, inspect, train, predict, evaluate, baselines, report, simulate, serve,
            export)


class Parser(argparse.ArgumentParser):
    """Flags are spelled with underscores (--no_progress, as the research scripts usertwin replaces spell them); the dashed spelling (--no-progress)
    is still accepted but never shown, so --help and the docs show one spelling."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        self._given = args
        end = args.index("--") if "--" in args else len(args)
        return super().parse_known_args([self._underscored(a) for a in args[:end]] + args[end:], namespace)

    def error(self, message: str):
        """One line and a pointer to --help, not the whole usage block; an unknown flag gets the nearest one."""
        command = next((a for a in getattr(self, "_given", []) if a in self._commands()), None)
        where = f"{self.prog} {command}" if command and self.prog == "usertwin" else self.prog
        self.exit(2, f"{where}: error: {message}{self._nearest(message, command)}\n(`{where} --help` lists every "
                     "flag)\n")

    def _commands(self) -> dict:
        return next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})

    def _nearest(self, message: str, command: str | None = None) -> str:
        import difflib
        import re

        found = re.match(r"unrecognized arguments: (.*)", message)
        if not found:
            return ""
        known = set(self._option_string_actions)
        for name, sub in self._commands().items():  # the top-level parser: the command's flags
            if command in (None, name):
                known |= set(sub._option_string_actions)
        guesses = [(flag, difflib.get_close_matches(flag, sorted(known), n=1, cutoff=0.75))
                   for flag in (a.split("=")[0] for a in found.group(1).split() if a.startswith("--"))]
        said = [f"{flag}: did you mean {close[0]}?" for flag, close in guesses if close]
        return f" ({'; '.join(said)})" if said else ""

    def _underscored(self, token: str) -> str:
        """--no-progress -> --no_progress (and --max-length=5 -> --max_length=5) when that is a flag here."""
        name, eq, value = token.partition("=")
        if not name.startswith("--") or name in self._option_string_actions:
            return token
        spelled = "--" + name[2:].replace("-", "_")
        return spelled + eq + value if spelled in self._option_string_actions else token


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help says its default, unless it already does (or has none to say)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        quiet = (None, False, argparse.SUPPRESS)
        if "default" in text or action.default in quiet or not action.option_strings or action.nargs == 0:
            return text
        return f"{text} (default %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: argparse would otherwise take a prefix of a flag for the flag (--max_hist 3 became
    # --max_history_items 3), so a mistyped or seed-only flag would silently set another setting
    parser = Parser(prog="usertwin", description="Fine-tune language models into user twins.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"usertwin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, help="a step of the pipeline (usertwin COMMAND --help)")
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP, formatter_class=HelpFormatter,
                           allow_abbrev=False)
        command.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors, and the third-party warnings usertwin hides")
        p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
        p.set_defaults(handler=command.run)
    return parser


def readers(key: str) -> list[str]:
    """The commands that read the setting `key` (their READS), in the pipeline's order."""
    from usertwin.config import read_keys

    return [c.NAME for c in COMMANDS if hasattr(c, "READS") and key in read_keys(c.READS)]


def refuse_unread(args: argparse.Namespace) -> None:
    """A setting given as a flag to a command that does not read it stops the command, saying why and which
    commands read it (a --config file may hold it: one file serves every command)."""
    from usertwin.config import UNREAD_FLAGS, unread_error

    unread = getattr(args, UNREAD_FLAGS, None)
    if unread:
        command = next(c for c in COMMANDS if c.NAME == args.command)
        raise UsertwinError(unread_error(command.NAME, unread, command.UNREAD, readers(unread[0][1])))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from usertwin.config import check_flags

        refuse_unread(args)
        check_flags(args)
        return args.handler(args)
    except UsertwinError as e:
        if args.debug:
            raise
        print(f"usertwin {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("usertwin: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # unreadable input, unwritable output, full disk: what the system said, about which file
        if args.debug:
            raise
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n is not None)
        print(f"usertwin {args.command}: error: {names + ': ' if names else ''}{e.strerror or e} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 2
    except Exception as e:  # out of memory: say what to lower; anything else keeps its traceback (a bug)
        if args.debug or not _out_of_memory(e):
            raise
        print(f"usertwin {args.command}: error: out of memory ({type(e).__name__}). {OOM_HINT}", file=sys.stderr)
        return 2


OOM_HINT = ("Lower --batch_tokens (tokens per micro-batch row) or --max_length, or pass --gradient_checkpointing "
            "(and --gradient_accumulation_steps to keep the step size); for predict lower --batch_size. "
            "A killed train run continues with --resume; predict resumes from its output file.")


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e)[:200]
