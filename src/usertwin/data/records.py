"""The unified format: load, validate and write records (JSON list, single record, or JSON Lines).

A record is one user's whole file:

    {"user_hash": "u1",                               # optional; the user id (else user.id, user.hash, profile.name)
     "user": {"id": "u1", "profile": {"name": "...", ...}},
     "task": {"description": "...", "language": "en",  # language optional: en | zh | ja
              "task_behavior_collections": [
                  {"type": "movie_rating",
                   "data": [{"continuation_prefix": "Toy Story (1995) (Animation, Comedy): ",
                             "continuation": "4.0",
                             "context": [{"source": "Alice", "content": "..."}],   # or role/content
                             "timestamp": "2000-07-30T18:45:03Z",                  # or unix seconds
                             "metadata": {"stars": 4}}]}]}}
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.atomic import atomic_open, write_jsonl
from usertwin.errors import UsertwinError, where


@dataclass
class Item:
    """One observed act of a user, as validated from the file."""

    continuation: str
    prefix: str = ""
    context: list = field(default_factory=list)  # [{"role" or "source": str, "content": str}]
    timestamp: float | None = None  # unix seconds (UTC); None when the file gives none
    time_text: str | None = None  # the timestamp as written in the file
    collection: str = ""  # the collection's type, e.g. movie_rating
    metadata: dict = field(default_factory=dict)
    position: int = 0  # order of the item within its record (file order, across collections)

    @property
    def is_rating(self) -> bool:
        return is_rating(self.collection)


def is_rating(collection: str) -> bool:
    """A collection of ratings (movie_rating, rating, ...): its continuations are numbers on a scale. The one
    place that decides it: likelihood scoring of the scale, rating metrics and rating baselines all ask here."""
    return "rating" in str(collection or "")


@dataclass
class Record:
    index: int  # position of the record in its file (0-based)
    user_id: str
    profile: dict
    task: str
    language: str | None
    items: list  # list[Item] in file order


SKIP_HINT = "use --on-error skip to skip bad records"
MAX_LISTED = 20  # problems listed in one error message before "... and N more"

# keys of an item that the format knows; any other key of an item is kept in its metadata
ITEM_KEYS = frozenset({"continuation", "continuation_prefix", "context", "timestamp", "metadata"})
_COLLECTIONS = "task.task_behavior_collections"
_ID_FIELDS = "user_hash, user.id, user.hash or user.profile.name"
FUTURE_SLACK = 2 * 86400  # timestamps up to this many seconds after now pass (clock and time zone skew)
_MISSING = object()


# --------------------------------------------------------------------------------------------- timestamps

_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_TS_RE = re.compile(
    r"(\d{4})([-/])(\d{1,2})\2(\d{1,2})"  # date: YYYY-MM-DD or YYYY/MM/DD
    r"(?:(?:[Tt]|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"  # time: HH:MM[:SS[.fff]]
    r"\s*(?:(Z|z|UTC|GMT)|([+-])(\d{2})(?::?(\d{2}))?)?)?"  # zone: Z or +08:00 / +0800 / +08
)
_TS_HELP = "use unix seconds or ISO 8601 such as 2000-07-30T18:45:03Z or 2000-07-30"


def parse_timestamp(value) -> float:
    """A timestamp as unix seconds (UTC).

    Accepts unix seconds as int / float / numeric string (values above 1e11 are milliseconds), ISO 8601
    (`2000-07-30T18:45:03Z`, `2000-07-30 18:45:03+08:00`, fractional seconds), `YYYY-MM-DD`, `YYYY/MM/DD`
    and `YYYY-MM-DD HH:MM[:SS]`; times without a zone are UTC. Raises ValueError with a short reason.
    """
    kind = type(value)
    if kind is int or kind is float:
        return _from_number(float(value), value)
    if kind is str:
        return _from_text(value)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a timestamp")
    if isinstance(value, (int, float)):
        return _from_number(float(value), value)
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_UTC)).timestamp()
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_UTC).timestamp()
    if isinstance(value, str):
        return _from_text(str(value))
    raise ValueError(f"{_kind(value)} is not a timestamp ({_TS_HELP})")


def _from_number(x: float, original) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{original!r} is not a finite number")
    if x > 1e11 or x < -1e11:  # milliseconds
        x /= 1000.0
    return x


def _from_text(text: str) -> float:
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    if s[0] in "0123456789+-." and "_" not in s:
        try:
            x = float(s)
        except ValueError:
            pass
        else:
            return _from_number(x, text)
    m = _TS_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"not a date or time: {text!r} ({_TS_HELP})")
    year, _, month, day, hh, mm, ss, frac, utc, sign, oh, om = m.groups()
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    tz = _UTC
    if sign:
        offset = _dt.timedelta(hours=int(oh), minutes=int(om or 0))
        tz = _dt.timezone(offset if sign == "+" else -offset)
    try:
        moment = _dt.datetime(
            int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0), micro, tzinfo=tz
        )
    except ValueError as err:
        raise ValueError(f"not a valid date or time: {text!r} ({err})") from None
    return (moment - _EPOCH).total_seconds()


# --------------------------------------------------------------------------------------------- user ids


def user_id_of(raw: dict, index: int) -> str:
    """The user's id: first non-empty of user_hash, user.id, user.hash, user.profile.name; else record-N."""
    found = _declared_id(raw)
    return f"record-{index}" if found is None else found


def _declared_id(raw) -> str | None:
    """The first non-empty of user_hash, user.id, user.hash, user.profile.name, or None."""
    if isinstance(raw, dict):
        user = raw.get("user")
        profile = user.get("profile") if isinstance(user, dict) else None
        for value in (
            raw.get("user_hash"),
            user.get("id") if isinstance(user, dict) else None,
            user.get("hash") if isinstance(user, dict) else None,
            profile.get("name") if isinstance(profile, dict) else None,
        ):
            if value is None or isinstance(value, (dict, list)):
                continue
            text = str(value)
            if text.strip():
                return text
    return None


# --------------------------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One thing wrong with a file: where (file, line/column or record/user/field) and what."""

    path: object
    message: str
    line: int | None = None
    column: int | None = None
    record: int | None = None
    user: str | None = None
    field: str | None = None
    all_problems: list = dataclasses.field(default_factory=list)  # every problem of a skipped record (list[Problem])
    explanation: str = ""  # longer text: for a syntax error the offending line, a caret and the likely cause

    def __str__(self) -> str:
        loc = where(
            self.path, line=self.line, column=self.column, record=self.record, user=self.user, field=self.field
        )
        return f"{loc}: {self.message}" if loc else self.message


@dataclass
class LoadResult:
    records: list  # list[Record]
    skipped: list  # list[Problem], one per skipped record (on_error="skip")
    warnings: list  # list[str]
    path: Path

    @property
    def n_items(self) -> int:
        return sum(len(r.items) for r in self.records)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shown(value, limit: int = 40) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(value) -> str:
    if value is None or isinstance(value, (dict, list)):
        return _kind(value)
    return f"{_kind(value)} ({_shown(value)})"


# --------------------------------------------------------------------------------------------- reading


def _check_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsertwinError(f"{path}: is a directory; give a records file (.json or .jsonl)")
    if not p.exists():
        raise UsertwinError(f"{path}: no such file")
    return p


def _decode(path, data: bytes, line_offset: int = 0) -> str:
    """UTF-8 text of `data`; a clear error naming line and column of the first bad byte otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = err.start
        line = data.count(b"\n", 0, start) + 1 + line_offset
        line_start = data.rfind(b"\n", 0, start) + 1
        column = len(data[line_start:start].decode("utf-8", errors="replace")) + 1
        hint = "save it as UTF-8"
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "the file looks like UTF-16; save it as UTF-8"
        else:
            try:
                data.decode("gb18030")
            except UnicodeDecodeError:
                pass
            else:
                hint = f"it looks like GBK/GB18030 (Chinese); convert it: iconv -f GB18030 -t UTF-8 {path} > OUT"
        raise UsertwinError(
            f"{where(path, line=line, column=column)}: not valid UTF-8 "
            f"(byte 0x{data[start]:02x} at line {line}, column {column}); {hint}"
        ) from None


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _snippet(line_text: str, column: int) -> str:
    """The offending line (a window of it when long) and a caret under `column` (1-based)."""
    line_text = line_text.rstrip("\r\n").replace("\t", " ")
    i = max(0, min(column - 1, len(line_text)))
    start, end = 0, len(line_text)
    if len(line_text) > 100:
        start, end = max(0, i - 60), min(len(line_text), i + 40)
    head = "..." if start > 0 else ""
    shown = head + line_text[start:end] + ("..." if end < len(line_text) else "")
    caret = " " * _display_width(head + line_text[start:i]) + "^"
    return f"    {shown}\n    {caret}"


def _line_of(text: str, lineno: int) -> str:
    lines = text.split("\n")
    return lines[lineno - 1] if 0 < lineno <= len(lines) else ""


def _prev_nonws(s: str, pos: int) -> int:
    j = pos - 1
    while j >= 0 and s[j] in " \t\r\n":
        j -= 1
    return j


def _syntax_hint(s: str, err: json.JSONDecodeError, path, jsonl: bool = False) -> str:
    """A 'likely cause' line for a JSON syntax error, or ''."""
    repair = f"run: usertwin validate {path} --repair OUT"
    fix = _find_fix(s, err)
    if fix is not None:
        kind, _ = fix
        if kind == "quote":
            return f'likely cause: an unescaped double quote (") inside a string; {repair}'
        if kind == "comma" and err.msg.startswith("Extra data"):
            return f"likely cause: a comma after the end of the value (JSON Lines need none); delete it, or {repair}"
        if kind == "comma":
            return f"likely cause: a trailing comma before ']' or '}}' (JSON allows none); delete it, or {repair}"
        if kind == "control":
            return (
                "likely cause: a raw line break or tab inside a string (write it as \\n or \\t); "
                f"{repair}"
            )
    msg, pos = err.msg, err.pos
    if (msg.startswith("Unterminated string") or pos >= len(s.rstrip())) and jsonl:
        return "likely cause: the line ends too early (the record is cut off, or split over several lines)"
    if msg.startswith("Unterminated string") or pos >= len(s.rstrip()):
        return (
            "likely cause: the file ends too early (truncated, or cut off while copying); "
            "check that it is complete"
        )
    ch = s[pos] if pos < len(s) else ""
    if ch == "'":
        return "likely cause: single quotes; JSON needs double quotes around keys and strings"
    if s.startswith("//", pos) or s.startswith("/*", pos) or ch == "#":
        return "likely cause: a comment; JSON has no comments, delete it"
    if msg.startswith("Extra data"):
        return (
            "likely cause: more text after the end of the JSON value; a JSON file holds one list of records "
            "(or one record), a JSON Lines file one complete record per line"
        )
    if msg.startswith("Expecting ',' delimiter") and ch in ("]", "}"):
        return f"likely cause: unbalanced brackets: a '{ch}' where a ',' or '{_other(ch)}' was expected"
    if msg.startswith("Expecting ',' delimiter"):
        j = _prev_nonws(s, pos)
        if j >= 0 and s[j] == '"' and ch == '"':
            return 'likely cause: a missing comma between two values, or an unescaped double quote (") in a string'
        return "likely cause: a missing comma between two values"
    if msg.startswith("Expecting property name"):
        return "likely cause: a key without double quotes, or a trailing comma"
    return ""


def _other(bracket: str) -> str:
    return "}" if bracket == "]" else "]"


def _syntax_message(path, s: str, err: json.JSONDecodeError, *, line_offset: int = 0, jsonl: bool = False) -> str:
    line, col = err.lineno + line_offset, err.colno
    what = f"invalid JSON on line {line}, column {col}" if jsonl else f"invalid JSON at line {line}, column {col}"
    parts = [f"{where(path, line=line, column=col)}: {what}: {err.msg}", _snippet(_line_of(s, err.lineno), col)]
    hint = _syntax_hint(s, err, path, jsonl)
    if hint:
        parts.append(hint)
    return "\n".join(parts)


_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")


def _walk_list(text: str, start: int):
    """Yield (element, line) of the JSON list starting at text[start] == '['; JSONDecodeError when broken."""
    decode = _DECODER.raw_decode
    n = len(text)
    i = _WS.match(text, start + 1).end()
    line, last = 1 + text.count("\n", 0, i), i
    if i < n and text[i] == "]":
        i += 1
    else:
        while True:
            obj, j = decode(text, i)
            line += text.count("\n", last, i)
            last = i
            yield obj, line
            i = _WS.match(text, j).end()
            if i < n and text[i] == ",":
                i = _WS.match(text, i + 1).end()
                continue
            if i < n and text[i] == "]":
                i += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    i = _WS.match(text, i).end()
    if i != n:
        raise json.JSONDecodeError("Extra data", text, i)


def _looks_like_jsonl(text: str) -> bool:
    """Whether `text` (not valid JSON as a whole) is JSON Lines: its lines are records on their own."""
    start = _WS.match(text).end()
    if start >= len(text) or text[start] != "{":
        return False
    try:
        obj, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        pass
    else:
        rest = _WS.match(text, end).end()
        if isinstance(obj, dict) and rest < len(text) and "\n" in text[end:rest]:
            return True
    lines = [ln for ln in text.split("\n", 200)[:200] if ln.strip()]
    if len(lines) < 2:
        return False
    good = 0
    for ln in lines:
        try:
            good += isinstance(json.loads(ln), dict)
        except json.JSONDecodeError:
            pass
    return good * 2 >= len(lines) and good > 0


def _warn(warnings: list, message: str) -> None:
    if message not in warnings:
        warnings.append(message)


def _read_text(path, p: Path, warnings: list) -> str:
    data = p.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        _warn(warnings, f"{path}: starts with a UTF-8 byte order mark (BOM); ignored it")
    text = _decode(path, data)
    if not text.strip():
        raise UsertwinError(
            f"{path}: the file is empty; expected a JSON list of records, one record object, "
            "or JSON Lines (one record per line)"
        )
    return text


def _entries(path, warnings: list):
    """Yield (index, raw, line, problem): problem is a syntax Problem of a JSON Lines line (raw None then).

    Syntax errors of a whole JSON document raise UsertwinError (nothing can be skipped there).
    """
    p = _check_path(path)
    name = p.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        fallback = yield from _stream_jsonl(path, p, warnings)
        if not fallback:
            return
        warnings.append(f"{path}: holds one JSON document, not JSON Lines; read it as JSON")
    text = _read_text(path, p, warnings)
    start = _WS.match(text).end()
    if text[start] == "[":
        try:
            for index, (obj, line) in enumerate(_walk_list(text, start)):
                yield index, obj, line, None
        except json.JSONDecodeError:
            _raise_syntax(path, text)
        except RecursionError:
            raise UsertwinError(_too_deep(path)) from None
        return
    try:
        obj, end = _DECODER.raw_decode(text, start)
        if _WS.match(text, end).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, _WS.match(text, end).end())
    except RecursionError:
        raise UsertwinError(_too_deep(path)) from None
    except json.JSONDecodeError:
        if not _looks_like_jsonl(text):
            _raise_syntax(path, text)
        yield from _text_jsonl(path, text)
        return
    if not isinstance(obj, dict):
        raise UsertwinError(
            f"{path}: the top level is {_kind(obj)}; expected a JSON list of records, one record object, "
            "or JSON Lines (one record per line)"
        )
    yield 0, obj, 1 + text.count("\n", 0, start), None


def _too_deep(path, line=None) -> str:
    return (f"{where(path, line=line)}: JSON nested too deeply (lists or objects inside each other hundreds of "
            "levels deep); a record is only a few levels deep: is this a records file?")


def _raise_syntax(path, text: str):
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise UsertwinError(_syntax_message(path, text, err)) from None
    raise UsertwinError(f"{path}: invalid JSON")  # not reached: the walker and json.loads agree


def _line_problem(path, line_text: str, lineno: int, index: int):
    """(raw, None) for a good JSON Lines line, (None, Problem) for a broken one."""
    line_text = line_text.rstrip("\r\n")  # an error at the line's end is on this line, not the next
    try:
        return json.loads(line_text), None
    except RecursionError:
        return None, Problem(path, "JSON nested too deeply", line=lineno, record=index,
                             explanation=_too_deep(path, lineno))
    except json.JSONDecodeError as err:
        msg = _syntax_message(path, line_text, err, line_offset=lineno - 1, jsonl=True)
        hint = _syntax_hint(line_text, err, path, jsonl=True)
        short = f"invalid JSON: {err.msg}" + (f" ({hint})" if hint else "")
        return None, Problem(path, short, line=lineno, column=err.colno, record=index, explanation=msg)


def _text_jsonl(path, text: str):
    index = 0
    for lineno, line_text in enumerate(text.split("\n"), 1):
        if not line_text.strip():
            continue
        raw, prob = _line_problem(path, line_text, lineno, index)
        yield index, raw, lineno, prob
        index += 1


def _stream_jsonl(path, p: Path, warnings: list):
    """Yield JSON Lines entries line by line; returns True when the file is one pretty-printed document."""
    index = 0
    with open(p, "rb") as f:
        for lineno, data in enumerate(f, 1):
            if lineno == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
                _warn(warnings, f"{path}: starts with a UTF-8 byte order mark (BOM); ignored it")
            line_text = _decode(path, data, lineno - 1)
            if not line_text.strip():
                continue
            raw, prob = _line_problem(path, line_text, lineno, index)
            if prob is not None and index == 0:
                head = line_text.strip()
                if head == "{" or head.startswith("["):  # a pretty-printed JSON document
                    return True
            yield index, raw, lineno, prob
            index += 1
    if index == 0:
        raise UsertwinError(
            f"{path}: the file is empty; expected JSON Lines (one record object per line)"
        )
    return False


def iter_raw(path, warnings: list | None = None, on_error: str = "stop"):
    """Yield (index, raw_dict, line_no) for every record of a file; JSON Lines are streamed line by line.

    A broken JSON Lines line raises UsertwinError (on_error="stop") or is passed over ("skip"); a broken
    JSON document always raises. `warnings`, when given, collects notes such as a stripped BOM.
    """
    _check_on_error(on_error)
    sink = [] if warnings is None else warnings
    for index, raw, line, prob in _entries(path, sink):
        if prob is not None:
            if on_error == "stop":
                raise UsertwinError(_jsonl_stop_message(prob))
            continue
        yield index, raw, line


def _jsonl_stop_message(prob: Problem) -> str:
    return f"{prob.explanation}\neach line of a JSON Lines file must be one complete record; {SKIP_HINT}"


def _check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise UsertwinError(f"on_error must be 'stop' or 'skip', got {on_error!r}")


# --------------------------------------------------------------------------------------------- validation


def _build(raw, index: int, path) -> tuple[Record | None, list]:
    """The Record of one raw record, or (None, every problem found in it)."""
    uid = user_id_of(raw, index)
    declared = _declared_id(raw)
    problems: list = []

    def bad(fld, message):
        problems.append(Problem(path, message, record=index, user=declared, field=fld))

    if not isinstance(raw, dict):
        bad(None, f"a record must be a JSON object {{...}}, got {_got(raw)}")
        return None, problems

    profile: dict = {}
    user = raw.get("user")
    if declared is None and (user is None or isinstance(user, dict)):
        bad("user" if user is None else "user.id", f"missing; a record needs a user id ({_ID_FIELDS})")
    if user is not None:
        if not isinstance(user, dict):
            bad("user", f"must be an object, got {_got(user)}")
        else:
            prof = user.get("profile")
            if isinstance(prof, dict):
                profile = prof
            elif prof is not None:
                bad("user.profile", f"must be an object, got {_got(prof)}")
            personality = user.get("personality")
            structured = personality.get("structured") if isinstance(personality, dict) else None
            if isinstance(structured, dict) and structured:
                dims = profile.get("dimensions")
                if dims is None or isinstance(dims, dict):
                    merged = dict(dims or {})
                    for key, value in structured.items():
                        merged.setdefault(key, value)
                    profile = {**profile, "dimensions": merged}

    task = raw.get("task", _MISSING)
    description, language, colls, scale = "", None, None, None
    if task is _MISSING:
        bad("task", "missing")
    elif not isinstance(task, dict):
        bad("task", f"must be an object, got {_got(task)}")
    else:
        description = task.get("description")
        if description is None:
            description = ""
        elif not isinstance(description, str):
            bad("task.description", f"must be a string, got {_got(description)}")
        language = task.get("language")
        if language is not None and not isinstance(language, str):
            bad("task.language", f"must be a string such as \"en\" or \"zh\", got {_got(language)}")
        colls = task.get("task_behavior_collections", _MISSING)
        if colls is _MISSING:
            bad(_COLLECTIONS, "missing")
            colls = None
        elif not isinstance(colls, list):
            bad(_COLLECTIONS, f"must be a list of collections, got {_got(colls)}")
            colls = None
        elif not colls:
            bad(_COLLECTIONS, "empty: a record needs at least one collection")
        scale = _rating_scale(task.get("rating_scale"), bad)

    items: list = []
    position = 0
    for ci, coll in enumerate(colls or ()):
        if not isinstance(coll, dict):
            bad(f"{_COLLECTIONS}[{ci}]", f"a collection must be an object, got {_got(coll)}")
            continue
        ctype = coll.get("type")
        if ctype is None:
            ctype = ""
        elif not isinstance(ctype, str):
            bad(f"{_COLLECTIONS}[{ci}].type", f"must be a string, got {_got(ctype)}")
        data = coll.get("data", _MISSING)
        if data is _MISSING:
            bad(f"{_COLLECTIONS}[{ci}].data", "missing")
            continue
        if not isinstance(data, list):
            bad(f"{_COLLECTIONS}[{ci}].data", f"must be a list of items, got {_got(data)}")
            continue
        if not data:
            bad(f"{_COLLECTIONS}[{ci}].data", "empty collection: a collection needs at least one item")
            continue
        for di, it in enumerate(data):
            item = _build_item(it, ctype, position, ci, di, bad)
            if item is not None:
                if scale and is_rating(ctype) and _off_scale(item.continuation, scale):
                    bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation",
                        f"{_shown(item.continuation)} is not on the rating scale "
                        f"(task.rating_scale: {min(scale):g} .. {max(scale):g})")
                items.append(item)
            position += 1
    if problems:
        return None, problems
    return Record(index, uid, profile, description, language, items), problems


def _rating_scale(value, bad):
    """The allowed ratings of task.rating_scale (a list of numbers) as a set, or None."""
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value)):
        bad("task.rating_scale", f"must be a list of numbers such as [1, 2, 3, 4, 5], got {_got(value)}")
        return None
    return {float(x) for x in value}


def _off_scale(text: str, scale: set) -> bool:
    try:
        return float(text) not in scale
    except ValueError:
        return True


def _future(seconds: float) -> bool:
    """Whether unix `seconds` lies after now (plus a little slack for clocks and time zones)."""
    return seconds > 1.6e9 and seconds > time.time() + FUTURE_SLACK


def _today() -> str:
    return _dt.datetime.now(_UTC).date().isoformat()


def _build_item(it, ctype, position, ci, di, bad):
    """The Item of one raw item, or None after reporting its problems through `bad`."""
    if type(it) is not dict and not isinstance(it, dict):
        bad(f"{_COLLECTIONS}[{ci}].data[{di}]", f"an item must be an object, got {_got(it)}")
        return None
    ok = True
    cont = it.get("continuation", _MISSING)
    if type(cont) is not str:
        ok = False
        if cont is _MISSING:
            bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation", "missing")
        else:
            hint = ""
            if isinstance(cont, (int, float)) and not isinstance(cont, bool) and math.isfinite(cont):
                hint = f" (write it in quotes: {json.dumps(str(cont))})"
            bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation", f"must be a string, got {_got(cont)}{hint}")
    elif not cont or cont.isspace():
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation", "empty continuation")

    prefix = it.get("continuation_prefix")
    if prefix is None:
        prefix = ""
    elif type(prefix) is not str:
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation_prefix", f"must be a string, got {_got(prefix)}")

    context = it.get("context")
    if context is None:
        context = []
    elif type(context) is not list:
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].context", f"must be a list of turns, got {_got(context)}")
    elif context and not _context_ok(context):
        ok = False
        _context_problems(context, f"{_COLLECTIONS}[{ci}].data[{di}].context", bad)

    stamp = it.get("timestamp")
    seconds = text = None
    if stamp is not None:
        try:
            seconds = parse_timestamp(stamp)
            text = stamp if type(stamp) is str else str(stamp)
        except ValueError as err:
            ok = False
            bad(f"{_COLLECTIONS}[{ci}].data[{di}].timestamp", f"cannot read {_shown(stamp)}: {err}")
        else:
            if _future(seconds):
                ok = False
                bad(f"{_COLLECTIONS}[{ci}].data[{di}].timestamp",
                    f"{_shown(stamp)} is in the future (after today, {_today()}); check the year, and that "
                    "unix times are seconds or milliseconds (not microseconds)")

    meta = it.get("metadata")
    if meta is None:
        meta = {}
    elif type(meta) is not dict:
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].metadata", f"must be an object, got {_got(meta)}")
    if not ITEM_KEYS.issuperset(it):
        extras = {k: v for k, v in it.items() if k not in ITEM_KEYS}
        if type(meta) is dict:
            meta = {**extras, **meta}
    if not ok:
        return None
    return Item(cont, prefix, context, seconds, text, ctype, meta, position)


def _context_ok(context: list) -> bool:
    for turn in context:
        if type(turn) is not dict or type(turn.get("content")) is not str:
            return False
        if type(turn.get("role")) is not str and type(turn.get("source")) is not str:
            return False
    return True


def _context_problems(context: list, base: str, bad) -> None:
    for ti, turn in enumerate(context):
        if not isinstance(turn, dict):
            bad(f"{base}[{ti}]", f"a turn must be an object with \"content\" and \"role\" or \"source\", got {_got(turn)}")
            continue
        content = turn.get("content", _MISSING)
        if content is _MISSING:
            bad(f"{base}[{ti}].content", "missing")
        elif not isinstance(content, str):
            bad(f"{base}[{ti}].content", f"must be a string, got {_got(content)}")
        role, source = turn.get("role"), turn.get("source")
        if not isinstance(role, str) and not isinstance(source, str):
            if role is None and source is None:
                bad(f"{base}[{ti}]", "needs a \"role\" or \"source\" string (who said it)")
            else:
                name = "role" if role is not None else "source"
                bad(f"{base}[{ti}].{name}", f"must be a string, got {_got(turn.get(name))}")


def _merge_problems(problems: list) -> Problem:
    """One Problem standing for all problems of a skipped record."""
    first = problems[0]
    message = first.message
    if len(problems) > 1:
        rest = "; ".join(f"field {p.field}: {p.message}" if p.field else p.message for p in problems[1:4])
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        message += f" (+{len(problems) - 1} more: {rest}{more})"
    return Problem(
        first.path, message, line=first.line, column=first.column, record=first.record, user=first.user,
        field=first.field, all_problems=list(problems),
    )


def load(path, on_error: str = "stop") -> LoadResult:
    """Read and validate a records file (JSON list, one record object, or JSON Lines).

    on_error="stop": any problem raises UsertwinError listing every problem (file, record, user, field).
    on_error="skip": bad records are left out, one Problem each in `skipped`; the rest are returned.
    """
    _check_on_error(on_error)
    warnings: list = []
    records: list = []
    skipped: list = []
    problems: list = []
    bad_records = 0
    total = 0
    no_task = 0
    for index, raw, _line, syntax in _entries(path, warnings):
        total += 1
        if syntax is not None:
            if on_error == "stop":
                raise UsertwinError(_jsonl_stop_message(syntax))
            skipped.append(syntax)
            continue
        record, found = _build(raw, index, path)
        if record is not None:
            records.append(record)
            continue
        bad_records += 1
        no_task += isinstance(raw, dict) and "task" not in raw
        if on_error == "skip":
            skipped.append(_merge_problems(found))
        else:
            problems.extend(found)
    if problems:
        lines = [f"{path}: {len(problems)} problem{'s' * (len(problems) != 1)} in {bad_records} of {total} "
                 f"record{'s' * (total != 1)}:"]
        lines += [f"  {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        if no_task == total:
            lines.append(
                "hint: no record has a \"task\"; is this raw data (or the seeds' sample format) that must be "
                "converted into records first?"
            )
        lines.append(f"hint: {SKIP_HINT}")
        raise UsertwinError("\n".join(lines))
    return LoadResult(records, skipped, warnings, Path(path))


# --------------------------------------------------------------------------------------------- repair


def _find_fix(s: str, err: json.JSONDecodeError):
    """(kind, position) of a safe local fix for the JSON syntax error `err` in `s`, or None.

    kinds: "quote" (escape the unescaped double quote at position, which ended a string too early),
    "comma" (delete the trailing comma at position), "control" (escape the raw control character).
    """
    msg, pos, n = err.msg, err.pos, len(s)
    if msg.startswith("Invalid control character"):
        return ("control", pos) if pos < n else None
    ch = s[pos] if pos < n else ""
    if msg.startswith("Extra data"):
        return ("comma", pos) if ch == "," and not s[pos + 1 :].strip() else None
    if msg.startswith(("Expecting value", "Expecting property name")):
        j = _prev_nonws(s, pos)
        if j < 0 or s[j] != ",":
            return None
        if ch and ch in "]}":
            return ("comma", j)
        # `"He said "hi", then left"`: the quote before the comma ended the string too early
        k = _prev_nonws(s, j)
        if ch and ch != '"' and k >= 0 and s[k] == '"' and "\n" not in s[k:pos] and _quote_ahead(s, pos):
            return ("quote", k)
        return None
    if msg.startswith(("Expecting ',' delimiter", "Expecting ':' delimiter")):
        if not ch:
            return None
        j = _prev_nonws(s, pos)
        if j < 0 or s[j] != '"' or "\n" in s[j:pos]:
            return None
        if ch == '"':
            # `"我觉得"很好""`: an inner quote right before the real closing quote
            after = _WS.match(s, pos + 1).end()
            if j == pos - 1 and (after >= n or s[after] in ",}]\n" or "\n" in s[pos + 1 : after]):
                return ("quote", j)
            return None
        if _quote_ahead(s, pos):
            return ("quote", j)
    return None


def _quote_ahead(s: str, pos: int) -> bool:
    """Whether a double quote follows `pos` on the same line (where the string can really end)."""
    end = s.find("\n", pos)
    return s.find('"', pos, len(s) if end < 0 else end) >= 0


_CONTROL_NAMES = {"\n": "line break", "\r": "carriage return", "\t": "tab"}
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class _Edits:
    """Edits applied to a text, to map positions in the current text back to the original."""

    def __init__(self):
        self.edits: list = []  # (original position, delta): delta > 0 inserted before it, < 0 deleted at it

    def original(self, cur: int) -> int:
        shift = 0
        for orig, delta in sorted(self.edits):
            at = orig + shift
            if (delta > 0 and cur >= at + delta) or (delta < 0 and cur >= at):
                shift += delta
            elif at > cur:
                break
        return cur - shift

    def current(self, orig: int) -> int:
        return orig + sum(d for o, d in self.edits if o < orig or (o == orig and d > 0))

    def add(self, orig: int, delta: int) -> None:
        self.edits.append((orig, delta))


def _lc(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _string_shown(original: str, fixed: str, edits: _Edits, open_orig: int) -> str:
    """The string opened by original[open_orig], as the original text wrote it (ends as in the fixed text)."""
    start = edits.current(open_orig)
    try:
        _, end = json.decoder.scanstring(fixed, start + 1)
    except (json.JSONDecodeError, ValueError):
        end = fixed.find("\n", start)
        end = len(fixed) if end < 0 else end
    text = original[open_orig : edits.original(end - 1) + 1].rstrip("\r\n")
    return text if len(text) <= 80 else text[:77] + "..."


def _opening_quote(s: str, close: int) -> int:
    """Position of the unescaped quote that opened the string closed at s[close]."""
    i = s.rfind('"', 0, close)
    while i > 0:
        backslashes = 0
        while i - 1 - backslashes >= 0 and s[i - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return i
        i = s.rfind('"', 0, i)
    return max(i, 0)


def _repair_doc(original: str, line_offset: int = 0, max_fixes: int = 10000):
    """(fixed text, changes) for one JSON document; raises json.JSONDecodeError when it cannot be fixed."""
    s = original
    edits = _Edits()
    changes: list = []  # str, or (location, position of the opening quote) for a quote fix
    for _ in range(max_fixes + 1):
        try:
            json.loads(s)
            break
        except json.JSONDecodeError as err:
            fix = _find_fix(s, err)
            if fix is None or len(changes) >= max_fixes:
                raise
            kind, pos = fix
            orig = edits.original(pos)
            line, col = _lc(original, orig)
            where_ = f"line {line + line_offset}, column {col}"
            if kind == "quote":
                open_orig = edits.original(_opening_quote(s, pos))
                s = s[:pos] + "\\" + s[pos:]
                edits.add(orig, 1)
                changes.append((where_, open_orig))
            elif kind == "comma":
                after = _WS.match(s, pos + 1).end()
                before = f"before '{s[after]}'" if after < len(s) else "after the end of the value"
                s = s[:pos] + s[pos + 1 :]
                edits.add(orig, -1)
                changes.append(f"{where_}: removed a trailing comma {before}")
            else:
                ch = s[pos]
                escape = _CONTROL_ESCAPES.get(ch, f"\\u{ord(ch):04x}")
                name = _CONTROL_NAMES.get(ch, f"control character U+{ord(ch):04X}")
                s = s[:pos] + escape + s[pos + 1 :]
                edits.add(orig, len(escape) - 1)
                changes.append(f"{where_}: escaped a raw {name} inside a string")
    notes = [
        c if isinstance(c, str)
        else f"{c[0]}: escaped an inner double quote in {_string_shown(original, s, edits, c[1])}"
        for c in changes
    ]
    return s, notes


def repair_text(text: str) -> tuple[str, list]:
    """Fix common hand-editing damage: unescaped double quotes inside strings, trailing commas, raw line
    breaks or tabs inside strings, a BOM. Returns (fixed text, changes); each change names the line and
    column in the original text. Valid JSON (or valid JSON Lines) comes back unchanged.

    Raises UsertwinError when a JSON document cannot be repaired; in JSON Lines a line that cannot be
    repaired is left as it is, with a note in the changes.
    """
    changes: list = []
    body = text
    if body.startswith("\ufeff"):
        body = body[1:]
        changes.append("line 1, column 1: removed a UTF-8 byte order mark (BOM)")
    try:
        json.loads(body)
        return body, changes
    except json.JSONDecodeError:
        pass
    if _looks_like_jsonl(body):
        out = []
        for lineno, line in enumerate(body.split("\n"), 1):
            core = line[:-1] if line.endswith("\r") else line
            if core.strip():
                try:
                    json.loads(core)
                except json.JSONDecodeError:
                    try:
                        fixed, notes = _repair_doc(core, line_offset=lineno - 1, max_fixes=1000)
                    except json.JSONDecodeError as err:
                        changes.append(f"line {lineno}, column {err.colno}: could not repair ({err.msg}); left as is")
                    else:
                        changes.extend(notes)
                        line = fixed + line[len(core) :]
            out.append(line)
        return "\n".join(out), changes
    try:
        fixed, notes = _repair_doc(body)
    except json.JSONDecodeError as err:
        raise UsertwinError(
            f"cannot repair automatically: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}\n"
            + _snippet(_line_of(err.doc, err.lineno), err.colno)
            + "\n(the line and column are those of the partly repaired text; fix this by hand)"
        ) from None
    return fixed, changes + notes


# --------------------------------------------------------------------------------------------- validate


@dataclass
class ValidationReport:
    records: int
    users: int
    items: int
    skipped: list = field(default_factory=list)  # list[Problem]
    warnings: list = field(default_factory=list)  # list[str]
    repairs: list = field(default_factory=list)  # list[str], the changes made by --repair
    path: str | None = None
    repaired_to: str | None = None

    def summary_lines(self) -> list:
        lines = [f"OK: {self.records} records, {self.users} users, {self.items} items"]
        if self.repaired_to is not None:
            if self.repairs:
                n = len(self.repairs)
                lines.append(f"repaired {n} problem{'s' * (n != 1)}; wrote {self.repaired_to}:")
                lines += [f"  {c}" for c in self.repairs]
            else:
                lines.append(f"nothing to repair; wrote an unchanged copy to {self.repaired_to}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.skipped:
            n = len(self.skipped)
            lines.append(f"skipped {n} bad record{'s' * (n != 1)}:")
            lines += [f"  {p}" for p in self.skipped[:MAX_LISTED]]
            if n > MAX_LISTED:
                lines.append(f"  ... and {n - MAX_LISTED} more")
        return lines


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def validate_file(path, repair_out=None, on_error: str = "stop") -> ValidationReport:
    """Check a records file; with `repair_out`, first write a repaired copy there and check that copy."""
    _check_on_error(on_error)
    repairs: list = []
    target = path
    if repair_out is not None:
        p = _check_path(path)
        out = Path(repair_out)
        if _same_file(p, out):
            raise UsertwinError(
                f"{repair_out}: the repaired copy must go to another file; repair never works in place"
            )
        if out.is_dir():
            raise UsertwinError(f"{repair_out}: is a directory; give a file name for the repaired copy")
        text = _decode(path, p.read_bytes())
        try:
            fixed, repairs = repair_text(text)
        except UsertwinError as err:
            raise UsertwinError(f"{path}: {err}") from None
        except RecursionError:
            raise UsertwinError(_too_deep(path)) from None
        with atomic_open(out) as f:
            f.write(fixed)
        target = repair_out
    result = load(target, on_error=on_error)
    from usertwin.data.timeline import (
        build_timelines,  # the same notes as prepare: merged users, sorted items
    )

    _, notes = build_timelines(result.records)
    return ValidationReport(
        records=len(result.records),
        users=len({r.user_id for r in result.records}),
        items=result.n_items,
        skipped=result.skipped,
        warnings=result.warnings + notes,
        repairs=repairs,
        path=str(path),
        repaired_to=None if repair_out is None else str(repair_out),
    )


# --------------------------------------------------------------------------------------------- writing


def _time_value(item: Item):
    text = item.time_text
    if text is not None:
        if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
            return int(text)
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) and repr(number) == text else text
    if item.timestamp is None:
        return None
    return int(item.timestamp) if float(item.timestamp).is_integer() else item.timestamp


def _item_to_raw(item: Item) -> dict:
    out: dict = {}
    if item.prefix:
        out["continuation_prefix"] = item.prefix
    out["continuation"] = item.continuation
    if item.context:
        out["context"] = item.context
    stamp = _time_value(item)
    if stamp is not None:
        out["timestamp"] = stamp
    if item.metadata:
        out["metadata"] = item.metadata
    return out


def record_to_raw(record: Record) -> dict:
    """The unified-format dict of a Record (items grouped into collections, keeping their order)."""
    collections: list = []
    for item in record.items:
        if not collections or collections[-1]["type"] != item.collection:
            collections.append({"type": item.collection, "data": []})
        collections[-1]["data"].append(_item_to_raw(item))
    task: dict = {"description": record.task}
    if record.language is not None:
        task["language"] = record.language
    task["task_behavior_collections"] = collections
    return {"user_hash": record.user_id, "user": {"id": record.user_id, "profile": record.profile}, "task": task}


def write(records, path) -> int:
    """Write records (raw dicts, or Record objects) as JSON Lines, atomically; returns the count."""
    return write_jsonl(path, (record_to_raw(r) if isinstance(r, Record) else r for r in records))
