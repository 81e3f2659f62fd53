"""Repair of hand-edited JSON: the safe local fixes that `jsontext.find_fix` finds, applied one at a time,
each change named by its line and column in the original text."""

from __future__ import annotations

import json

from usertwin.data.records.jsontext import WHITESPACE, find_fix, line_of, looks_like_jsonl, snippet
from usertwin.errors import UsertwinError

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
            fix = find_fix(s, err)
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
                after = WHITESPACE.match(s, pos + 1).end()
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
    if looks_like_jsonl(body):
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
            + snippet(line_of(err.doc, err.lineno), err.colno)
            + "\n(the line and column are those of the partly repaired text; fix this by hand)"
        ) from None
    return fixed, changes + notes
