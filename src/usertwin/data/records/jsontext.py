"""JSON text: UTF-8 decoding, walking a list of records, telling JSON Lines from JSON, and syntax errors
explained (the offending line, a caret, the likely cause). The diagnosis (`find_fix`) lives here because the
hints and the repair must agree on what `--repair` can fix."""

from __future__ import annotations

import json
import re
import unicodedata

from usertwin.errors import UsertwinError, where


def decode_utf8(path, data: bytes, line_offset: int = 0) -> str:
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


def snippet(line_text: str, column: int) -> str:
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


def line_of(text: str, lineno: int) -> str:
    lines = text.split("\n")
    return lines[lineno - 1] if 0 < lineno <= len(lines) else ""


def _prev_nonws(s: str, pos: int) -> int:
    j = pos - 1
    while j >= 0 and s[j] in " \t\r\n":
        j -= 1
    return j


def syntax_hint(s: str, err: json.JSONDecodeError, path, jsonl: bool = False) -> str:
    """A 'likely cause' line for a JSON syntax error, or ''."""
    repair = f"run: usertwin validate {path} --repair OUT"
    fix = find_fix(s, err)
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


def syntax_message(path, s: str, err: json.JSONDecodeError, *, line_offset: int = 0, jsonl: bool = False) -> str:
    line, col = err.lineno + line_offset, err.colno
    what = f"invalid JSON on line {line}, column {col}" if jsonl else f"invalid JSON at line {line}, column {col}"
    parts = [f"{where(path, line=line, column=col)}: {what}: {err.msg}", snippet(line_of(s, err.lineno), col)]
    hint = syntax_hint(s, err, path, jsonl)
    if hint:
        parts.append(hint)
    return "\n".join(parts)


DECODER = json.JSONDecoder()
WHITESPACE = re.compile(r"[ \t\n\r]*")


def walk_list(text: str, start: int):
    """Yield (element, line) of the JSON list starting at text[start] == '['; JSONDecodeError when broken."""
    decode = DECODER.raw_decode
    n = len(text)
    i = WHITESPACE.match(text, start + 1).end()
    line, last = 1 + text.count("\n", 0, i), i
    if i < n and text[i] == "]":
        i += 1
    else:
        while True:
            obj, j = decode(text, i)
            line += text.count("\n", last, i)
            last = i
            yield obj, line
            i = WHITESPACE.match(text, j).end()
            if i < n and text[i] == ",":
                i = WHITESPACE.match(text, i + 1).end()
                continue
            if i < n and text[i] == "]":
                i += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
    i = WHITESPACE.match(text, i).end()
    if i != n:
        raise json.JSONDecodeError("Extra data", text, i)


def looks_like_jsonl(text: str) -> bool:
    """Whether `text` (not valid JSON as a whole) is JSON Lines: its lines are records on their own."""
    start = WHITESPACE.match(text).end()
    if start >= len(text) or text[start] != "{":
        return False
    try:
        obj, end = DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        pass
    else:
        rest = WHITESPACE.match(text, end).end()
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


def too_deep(path, line=None) -> str:
    return (f"{where(path, line=line)}: JSON nested too deeply (lists or objects inside each other hundreds of "
            "levels deep); a record is only a few levels deep: is this a records file?")


def find_fix(s: str, err: json.JSONDecodeError):
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
            after = WHITESPACE.match(s, pos + 1).end()
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
