"""records.jsontext: JSON syntax errors named by line and column, with the offending line, a caret and the
likely cause; broken JSON Lines lines stop or are skipped."""

from __future__ import annotations

import json

import pytest
from helpers import RECORD_FILES, load_error, raw_record

from usertwin.data import records as R
from usertwin.data.records.jsontext import _display_width
from usertwin.errors import UsertwinError


def test_unescaped_quote_in_chinese_string_is_named():
    path = RECORD_FILES / "unescaped_quote.json"
    line = path.read_text(encoding="utf-8").split("\n")[11]
    assert line.index("好") + 1 == 67
    message = load_error(path)
    first, shown, caret, hint = message.split("\n")
    assert first == f"{path}:12:67: invalid JSON at line 12, column 67: Expecting ',' delimiter"
    assert '"continuation": "他说"好看"就走了"' in shown
    # the caret sits under 好 (wide characters count twice on a terminal)
    assert caret.index("^") == _display_width(shown[: shown.index("好")])
    assert hint == (
        'likely cause: an unescaped double quote (") inside a string; '
        f"run: usertwin validate {path} --repair OUT"
    )


def test_trailing_comma_hint():
    path = RECORD_FILES / "trailing_comma.json"
    message = load_error(path)
    lines = message.split("\n")
    assert lines[0] == f"{path}:3:90: invalid JSON at line 3, column 90: Expecting value"
    assert lines[3] == (
        "likely cause: a trailing comma before ']' or '}' (JSON allows none); delete it, "
        f"or run: usertwin validate {path} --repair OUT"
    )


def test_truncated_file_hint():
    path = RECORD_FILES / "truncated.json"
    lines = load_error(path).split("\n")
    assert lines[0] == f"{path}:3:88: invalid JSON at line 3, column 88: Expecting ',' delimiter"
    assert lines[3] == (
        "likely cause: the file ends too early (truncated, or cut off while copying); check that it is complete"
    )


def test_unterminated_string_is_truncation(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[{"user_hash": "u1", "task": {"description": "abc')
    assert load_error(path).split("\n")[-1] == (
        "likely cause: the file ends too early (truncated, or cut off while copying); check that it is complete"
    )


def test_long_line_is_shown_as_a_window(tmp_path):
    path = tmp_path / "minified.json"
    path.write_text(json.dumps([raw_record(f"u{i}") for i in range(20)])[:-1] + ",]")
    _, shown, caret, _ = load_error(path).split("\n")
    assert shown.startswith("    ...") and len(shown) < 120
    assert shown[caret.index("^")] == "]"


def test_jsonl_broken_line_stop_names_the_line():
    path = RECORD_FILES / "broken_line.jsonl"
    lines = load_error(path).split("\n")
    assert lines[0] == f"{path}:3:105: invalid JSON on line 3, column 105: Expecting ',' delimiter"
    assert lines[3] == "likely cause: unbalanced brackets: a ']' where a ',' or '}' was expected"
    assert lines[4] == (
        "each line of a JSON Lines file must be one complete record; use --on_error skip to skip bad records"
    )


def test_jsonl_broken_line_skip_keeps_the_rest():
    path = RECORD_FILES / "broken_line.jsonl"
    result = R.load(path, on_error="skip")
    assert [(r.index, r.user_id) for r in result.records] == [(0, "u1"), (1, "u2"), (3, "u4")]
    assert len(result.skipped) == 1
    assert str(result.skipped[0]) == (
        f"{path}:3:105, record 2: invalid JSON: Expecting ',' delimiter "
        "(likely cause: unbalanced brackets: a ']' where a ',' or '}' was expected)"
    )
    assert [i for i, _, _ in R.iter_raw(path, on_error="skip")] == [0, 1, 3]
    with pytest.raises(UsertwinError, match="broken_line.jsonl:3:105"):
        list(R.iter_raw(path))


def test_json_lines_with_a_broken_first_line_is_still_json_lines(tmp_path):
    path = tmp_path / "records.txt"
    good = [json.dumps(raw_record(f"u{i}")) for i in (1, 2, 3)]
    path.write_text("\n".join(['{"user_hash": "u0",'] + good) + "\n")
    assert load_error(path).split("\n")[0] == (
        f"{path}:1:20: invalid JSON on line 1, column 20: Expecting property name enclosed in double quotes"
    )
    result = R.load(path, on_error="skip")
    assert [r.user_id for r in result.records] == ["u1", "u2", "u3"]
    assert [(p.line, p.record) for p in result.skipped] == [(1, 0)]


def test_jsonl_comma_after_a_record_hint(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(raw_record("u1")) + ",\n" + json.dumps(raw_record("u2")) + "\n")
    assert load_error(path).split("\n")[3] == (
        "likely cause: a comma after the end of the value (JSON Lines need none); delete it, "
        f"or run: usertwin validate {path} --repair OUT"
    )


def test_jsonl_unescaped_quote_hint(tmp_path):
    path = tmp_path / "q.jsonl"
    line = json.dumps(raw_record("u1", [{"continuation": "他说QQ好看QQ就走了"}]), ensure_ascii=False).replace("QQ", '"')
    path.write_text(json.dumps(raw_record("u0")) + "\n" + line + "\n", encoding="utf-8")
    col = line.index("好") + 1
    lines = load_error(path).split("\n")
    assert lines[0] == f"{path}:2:{col}: invalid JSON on line 2, column {col}: Expecting ',' delimiter"
    assert "unescaped double quote" in lines[3]
