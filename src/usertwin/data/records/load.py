"""Loading a records file (JSON list, one record object, or JSON Lines streamed line by line) into Records."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.data.records.format import MAX_LISTED, SKIP_HINT, json_kind
from usertwin.data.records.jsontext import (
    DECODER,
    WHITESPACE,
    decode_utf8,
    looks_like_jsonl,
    syntax_hint,
    syntax_message,
    too_deep,
    walk_list,
)
from usertwin.data.records.schema import Problem, build_record, merge_problems
from usertwin.errors import UsertwinError


@dataclass
class LoadResult:
    records: list  # list[Record]
    skipped: list  # list[Problem], one per skipped record (on_error="skip")
    warnings: list  # list[str]
    path: Path
    skipped_items: list = field(default_factory=list)  # list[Problem], one per item left out of a kept record

    @property
    def n_items(self) -> int:
        return sum(len(r.items) for r in self.records)


def check_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsertwinError(f"{path}: is a directory; give a records file (.json or .jsonl)")
    if not p.exists():
        raise UsertwinError(f"{path}: no such file")
    return p


def _warn(warnings: list, message: str) -> None:
    if message not in warnings:
        warnings.append(message)


def _read_text(path, p: Path, warnings: list) -> str:
    data = p.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        _warn(warnings, f"{path}: starts with a UTF-8 byte order mark (BOM); ignored it")
    text = decode_utf8(path, data)
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
    p = check_path(path)
    name = p.name.lower()
    if name.endswith((".jsonl", ".ndjson")):
        fallback = yield from _stream_jsonl(path, p, warnings)
        if not fallback:
            return
        warnings.append(f"{path}: holds one JSON document, not JSON Lines; read it as JSON")
    text = _read_text(path, p, warnings)
    start = WHITESPACE.match(text).end()
    if text[start] == "[":
        try:
            for index, (obj, line) in enumerate(walk_list(text, start)):
                yield index, obj, line, None
        except json.JSONDecodeError:
            _raise_syntax(path, text)
        except RecursionError:
            raise UsertwinError(too_deep(path)) from None
        return
    try:
        obj, end = DECODER.raw_decode(text, start)
        if WHITESPACE.match(text, end).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, WHITESPACE.match(text, end).end())
    except RecursionError:
        raise UsertwinError(too_deep(path)) from None
    except json.JSONDecodeError:
        if not looks_like_jsonl(text):
            _raise_syntax(path, text)
        yield from _text_jsonl(path, text)
        return
    if not isinstance(obj, dict):
        raise UsertwinError(
            f"{path}: the top level is {json_kind(obj)}; expected a JSON list of records, one record object, "
            "or JSON Lines (one record per line)"
        )
    yield 0, obj, 1 + text.count("\n", 0, start), None


def _raise_syntax(path, text: str):
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise UsertwinError(syntax_message(path, text, err)) from None
    raise UsertwinError(f"{path}: invalid JSON")  # not reached: the walker and json.loads agree


def _line_problem(path, line_text: str, lineno: int, index: int):
    """(raw, None) for a good JSON Lines line, (None, Problem) for a broken one."""
    line_text = line_text.rstrip("\r\n")  # an error at the line's end is on this line, not the next
    try:
        return json.loads(line_text), None
    except RecursionError:
        return None, Problem(path, "JSON nested too deeply", line=lineno, record=index,
                             explanation=too_deep(path, lineno))
    except json.JSONDecodeError as err:
        msg = syntax_message(path, line_text, err, line_offset=lineno - 1, jsonl=True)
        hint = syntax_hint(line_text, err, path, jsonl=True)
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
            line_text = decode_utf8(path, data, lineno - 1)
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
    check_on_error(on_error)
    sink = [] if warnings is None else warnings
    for index, raw, line, prob in _entries(path, sink):
        if prob is not None:
            if on_error == "stop":
                raise UsertwinError(_jsonl_stop_message(prob))
            continue
        yield index, raw, line


def _jsonl_stop_message(prob: Problem) -> str:
    return f"{prob.explanation}\neach line of a JSON Lines file must be one complete record; {SKIP_HINT}"


def check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise UsertwinError(f"on_error must be 'stop' or 'skip', got {on_error!r}")


def load(path, on_error: str = "stop", targets: bool = False) -> LoadResult:
    """Read and validate a records file (JSON list, one record object, or JSON Lines).

    targets=True: the file holds targets (a scenario's test_leaderboard.json): an item may have no
    continuation (missing or null; its Item's continuation is ""). Anywhere else a continuation is required.

    on_error="stop": any problem raises UsertwinError listing every problem (file, record, user, field).
    on_error="skip": a bad item is left out of its record, one Problem each in `skipped_items` (record, line,
    user, item, field); a record that is bad as a whole (no user id, not an object, a bad task or collection,
    no good item) is left out, one Problem each in `skipped`; the rest are returned.
    """
    check_on_error(on_error)
    warnings: list = []
    records: list = []
    skipped: list = []
    skipped_items: list = []
    problems: list = []
    bad_records = 0
    total = 0
    no_task = 0
    for index, raw, line, syntax in _entries(path, warnings):
        total += 1
        if syntax is not None:
            if on_error == "stop":
                raise UsertwinError(_jsonl_stop_message(syntax))
            skipped.append(syntax)
            continue
        dropped = [] if on_error == "skip" else None
        record, found = build_record(raw, index, path, dropped, targets)
        if record is not None:
            records.append(record)
            # a left-out item is named by the line its record starts on, as well as record, user, item and field
            skipped_items += [dataclasses.replace(p, line=line) for p in dropped or ()]
            continue
        bad_records += 1
        no_task += isinstance(raw, dict) and "task" not in raw
        if on_error == "skip":
            skipped.append(merge_problems(found))
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
    return LoadResult(records, skipped, warnings, Path(path), skipped_items)


def from_raw(raw, source: str, index: int = 0):
    """One record given as data (a dict in the unified format, e.g. a user described to a twin), checked
    exactly as a file's record is; messages name `source` where they would name a file."""
    record, found = build_record(raw, index, source)
    if record is None:
        lines = [f"{source}: {len(found)} problem{'s' * (len(found) != 1)}:"]
        lines += [f"  {p}" for p in found[:MAX_LISTED]]
        raise UsertwinError("\n".join(lines))
    return record
