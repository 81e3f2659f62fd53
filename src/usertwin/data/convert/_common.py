"""What every converter shares: bad-row policy (`Skips`), the summary, CSV and JSON reading, record building."""

from __future__ import annotations

import csv
import datetime as _dt
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.data.records.jsontext import syntax_hint, syntax_message
from usertwin.errors import UsertwinError

ON_ERROR = ("stop", "skip")
SKIP_HINT = "use --on_error skip to skip such rows and count them"


class Skips:
    """Bad rows: stop with a message naming file, line and field, or skip and count them by reason.

    `bad()` is for rows that cannot be read (an error under on_error="stop"); `count()` is for rows left
    out by design (an empty comment, a duplicate), which are counted under either policy.
    """

    def __init__(self, on_error: str = "stop"):
        if on_error not in ON_ERROR:
            raise UsertwinError(f"on_error must be 'stop' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.reasons: Counter = Counter()
        self.examples: dict[str, str] = {}  # reason -> the first message of that reason

    @classmethod
    def of(cls, on_error) -> Skips:
        """A converter's `on_error` argument ("stop", "skip", or a Skips to count into) as a Skips."""
        return on_error if isinstance(on_error, Skips) else cls(on_error)

    def bad(self, reason: str, where: str, detail: str = "") -> None:
        msg = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.on_error == "stop":
            raise UsertwinError(f"{msg}; {SKIP_HINT}")
        self.reasons[reason] += 1
        self.examples.setdefault(reason, msg)

    def count(self, reason: str, where: str = "", n: int = 1) -> None:
        self.reasons[reason] += n
        if where:
            self.examples.setdefault(reason, f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


@dataclass
class ConvertSummary:
    """What a conversion wrote: users (records), items, time range (ISO text) and what it skipped."""

    dataset: str
    output: str
    users: int = 0
    items: int = 0
    first: str | None = None  # earliest item timestamp, ISO 8601 (None when the data has no timestamps)
    last: str | None = None
    skipped: int = 0  # rows / items left out, all reasons together
    skip_reasons: Counter = field(default_factory=Counter)  # reason -> count
    skip_examples: dict = field(default_factory=dict)  # reason -> the first message (file:line: ...)

    def line(self) -> str:
        span = f", {self.first[:10]} .. {self.last[:10]}" if self.first else ", no timestamps"
        text = f"{self.dataset}: {self.users} users, {self.items} items{span} -> {self.output}"
        if self.skipped:
            text += f"; skipped {self.skipped}: " + ", ".join(
                f"{n} {reason}" for reason, n in sorted(self.skip_reasons.items()))
        return text


# --------------------------------------------------------------------------------------------- time

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_DAYS: dict[int, str] = {}


def iso_from_unix(seconds) -> str:
    """Unix seconds -> `YYYY-MM-DDTHH:MM:SSZ` (UTC). Raises ValueError / OverflowError out of range."""
    day, rest = divmod(int(seconds), 86400)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = _dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat()
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{date}T{hours:02d}:{minutes:02d}:{secs:02d}Z"


# --------------------------------------------------------------------------------------------- files


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsertwinError(f"{path}: missing ({what})")
    if path.is_dir():
        raise UsertwinError(f"{path}: is a directory, expected {what}")
    return path


def read_json(path: Path):
    """A whole JSON file (a UTF-8 BOM allowed), or UsertwinError naming the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8-sig")
        return json.loads(text)
    except json.JSONDecodeError as e:
        # the place, the line with a caret, and the likely cause with the repair that fixes it (as validate says)
        hint = syntax_hint(text, e, path)
        raise UsertwinError(syntax_message(path, text, e) + (", then convert OUT" if hint and "--repair" in hint
                                                             else "")) from None
    except UnicodeDecodeError as e:
        raise UsertwinError(f"{path}: not UTF-8 text ({e.reason})") from None


def json_files(raw: Path, what: str) -> list[Path]:
    """A JSON file, or every *.json file of a folder (in name order); a folder without any is an error."""
    if raw.is_dir():
        files = sorted(raw.glob("*.json"))
        if not files:
            raise UsertwinError(f"{raw}: no *.json {what} files in this folder")
        return files
    return [raw]


def check_columns(path: Path, found: list, required: list) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise UsertwinError(f"{path}: missing column(s) {', '.join(missing)}; found "
                            f"{', '.join(found) or 'no header'} (expected {', '.join(required)})")


class CsvRows:
    """Rows of a CSV file with a header, as lists; `col[name]` is a column's index.

    Iterating yields (line number where the row starts, row). A row with another number of fields than the
    header is a bad row ("expected N fields, got M"); blank lines are passed over.
    """

    def __init__(self, path: Path, required: list, skips: Skips, encoding: str = "utf-8-sig"):
        self.path, self.skips, self.encoding = path, skips, encoding
        self._f = open(path, newline="", encoding=encoding)
        self._reader = csv.reader(self._f)
        try:
            header = next(self._reader, [])
        except (UnicodeDecodeError, csv.Error) as e:
            self._f.close()
            hint = f"; the file must be {encoding} text" if isinstance(e, UnicodeDecodeError) else ""
            raise UsertwinError(f"{path}:1: cannot read the header ({e}){hint}") from None
        self.header = [h.strip() for h in header]
        try:
            check_columns(path, self.header, required)
        except UsertwinError:
            self._f.close()
            raise
        self.col = {}
        for i, name in enumerate(self.header):
            self.col.setdefault(name, i)

    def __iter__(self):
        path, reader, n = self.path, self._reader, len(self.header)
        with self._f:
            while True:
                start = reader.line_num + 1
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError as e:
                    raise UsertwinError(f"{path}: after line {start - 1}: not {self.encoding} text "
                                        f"({e.reason}); convert the file to UTF-8") from None
                except csv.Error as e:
                    self.skips.bad("malformed CSV", f"{path}:{reader.line_num}", str(e))
                    continue
                if len(row) != n:
                    if not row:
                        continue
                    self.skips.bad(f"expected {n} fields, got {len(row)}", f"{path}:{start}")
                    continue
                yield start, row


def split_lines(path: Path, sep: str | None, fields: int, encoding: str, skips: Skips, *, last_free=False):
    """(line number, fields) of a delimited text file without header; blank lines are passed over.

    sep=None splits on any whitespace. last_free: the last field may itself contain `sep` (split at most
    fields-1 times) and may be missing entirely when the line ends with the separator stripped ("...+++$+++").
    """
    with open(path, encoding=encoding, newline="") as f:
        for n, text in enumerate(f, 1):
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            parts = text.split(sep, fields - 1) if last_free else text.split(sep)
            if last_free and len(parts) == fields - 1 and sep and parts[-1].endswith(sep.rstrip()):
                parts[-1] = parts[-1][: -len(sep.rstrip())].rstrip()
                parts.append("")
            if len(parts) != fields:
                shown = "whitespace" if sep is None else repr(sep.strip() or sep)
                skips.bad(f"expected {fields} fields separated by {shown}, got {len(parts)}", f"{path}:{n}")
                continue
            yield n, parts


# --------------------------------------------------------------------------------------------- records


def record(user_id: str, profile: dict, description: str, language: str, ctype: str, items: list,
           metadata: dict | None = None, **task_extra) -> dict:
    """A raw record. `profile` is what the prompt shows; bookkeeping (ids, positions) goes to `metadata`,
    which the record keeps and no prompt shows."""
    task = {"description": description, "language": language, **task_extra,
            "task_behavior_collections": [{"type": ctype, "data": items}]}
    rec = {"user_hash": user_id, "user": {"id": user_id, "profile": profile}, "task": task}
    if metadata:
        rec["metadata"] = metadata
    return rec


def user_sort_key(user_id: str):
    """Numeric ids numerically (by value, then as written), then every other id as text."""
    if user_id.isascii() and user_id.isdigit():
        digits = user_id.lstrip("0")
        return (0, len(digits), digits, user_id)
    return (1, 0, "", user_id)


def progress_bar(iterable, on: bool, desc: str, unit: str = "row", total=None):
    """A tqdm bar when asked for and stderr is a terminal; else the iterable itself."""
    if not on:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, total=total, mininterval=0.5, leave=False, disable=None,
                unit_scale=True)
