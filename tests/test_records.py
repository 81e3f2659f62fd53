"""records: loading, validation, repair and writing of the unified format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import shared
from helpers import write_records

from usertwin.data import records as R
from usertwin.data.records import Item, Problem, Record
from usertwin.data.records.jsontext import _display_width
from usertwin.errors import UsertwinError

FIX = Path(__file__).parent / "fixtures" / "records"


def rec(user="u1", items=None, **task):
    """A minimal valid raw record."""
    items = items if items is not None else [{"continuation": "ok"}]
    return {"user_hash": user, "task": {"task_behavior_collections": [{"type": "r", "data": items}], **task}}


def error_of(path, **kw) -> str:
    with pytest.raises(UsertwinError) as err:
        R.load(path, **kw)
    return str(err.value)


# ------------------------------------------------------------------------------------------- formats


def test_list_single_and_jsonl_give_the_same_records():
    listed = R.load(FIX / "small.json")
    lines = R.load(FIX / "small.jsonl")
    single = R.load(FIX / "single.json")
    assert listed.records == lines.records
    assert single.records == listed.records[:1]
    assert listed.warnings == lines.warnings == single.warnings == []
    assert listed.skipped == []

    alice, wang = listed.records
    assert alice == Record(
        index=0,
        user_id="u1",
        profile={"name": "Alice", "age": 30},
        task="Rate and review movies as this user.",
        language="en",
        items=[
            Item("4.0", "Toy Story (1995) (Animation, Comedy): ", [], 964982703.0, "964982703", "movie_rating",
                 {"movie_id": "1", "stars": 4}, 0),
            Item("3.5", "Heat (1995) (Action, Crime): ", [], 964982703.0, "2000-07-30T18:45:03Z", "movie_rating",
                 {}, 1),
            Item("Heat, twice.", "", [{"source": "Bob", "content": "Seen anything good?"}], 965001600.0,
                 "2000-07-31", "dialogue", {}, 2),
        ],
    )
    # user id from the profile name; milliseconds; escaped quotes kept
    assert (wang.index, wang.user_id, wang.language) == (1, "小王", "zh")
    assert wang.items == [Item('他说"好看"就走了', "霸王别姬: ", [], 1117584000.0, "1117584000000", "movie_review",
                               {}, 0)]
    assert listed.n_items == 4


@pytest.mark.parametrize("name", ["records.json", "records.txt", "records"])
def test_json_lines_detected_whatever_the_extension(tmp_path, name):
    path = tmp_path / name
    shutil.copy(FIX / "small.jsonl", path)
    assert R.load(path).records == R.load(FIX / "small.json").records


def test_jsonl_file_holding_a_pretty_printed_list_is_read_as_json(tmp_path):
    path = tmp_path / "pretty.jsonl"
    shutil.copy(FIX / "small.json", path)
    result = R.load(path)
    assert result.records == R.load(FIX / "small.json").records
    assert result.warnings == [f"{path}: holds one JSON document, not JSON Lines; read it as JSON"]


def test_iter_raw_gives_index_record_and_line():
    listed = [(i, raw["task"]["description"], line) for i, raw, line in R.iter_raw(FIX / "small.json")]
    assert listed == [(0, "Rate and review movies as this user.", 2), (1, "写短评", 28)]
    lines = [(i, line) for i, _, line in R.iter_raw(FIX / "small.jsonl")]
    assert lines == [(0, 1), (1, 2)]


def test_bom_is_stripped_with_a_warning(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([rec("u7")]).encode())
    result = R.load(path)
    assert [r.user_id for r in result.records] == ["u7"]
    assert result.warnings == [f"{path}: starts with a UTF-8 byte order mark (BOM); ignored it"]

    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec("u8")).encode() + b"\n")
    result = R.load(lines)
    assert [r.user_id for r in result.records] == ["u8"]
    assert result.warnings == [f"{lines}: starts with a UTF-8 byte order mark (BOM); ignored it"]


def test_non_utf8_byte_names_line_and_column(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n  {"user_hash": "u1",\n   "x": "caf\xe9"}]\n')
    assert error_of(path) == (
        f"{path}:3:13: not valid UTF-8 (byte 0xe9 at line 3, column 13); save it as UTF-8"
    )


def test_non_utf8_chinese_suggests_gbk(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(json.dumps(rec("u1")).encode() + b"\n" + '{"c": "好看"}\n'.encode("gbk"))
    message = error_of(path)
    assert message.startswith(f"{path}:2:8: not valid UTF-8 (byte 0xba at line 2, column 8); ")
    assert "GBK/GB18030" in message and "iconv -f GB18030 -t UTF-8" in message


def test_empty_missing_and_directory_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(" \n\n")
    assert error_of(empty) == (
        f"{empty}: the file is empty; expected a JSON list of records, one record object, "
        "or JSON Lines (one record per line)"
    )
    empty_lines = tmp_path / "empty.jsonl"
    empty_lines.write_text("\n")
    assert error_of(empty_lines) == f"{empty_lines}: the file is empty; expected JSON Lines (one record object per line)"
    assert error_of(tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: no such file"
    assert error_of(tmp_path) == f"{tmp_path}: is a directory; give a records file (.json or .jsonl)"


def test_top_level_scalar_is_rejected(tmp_path):
    path = tmp_path / "n.json"
    path.write_text("42\n")
    assert error_of(path) == (
        f"{path}: the top level is a number; expected a JSON list of records, one record object, "
        "or JSON Lines (one record per line)"
    )


def test_bad_on_error_value():
    with pytest.raises(UsertwinError, match="on_error must be 'stop' or 'skip', got 'ignore'"):
        R.load(FIX / "small.json", on_error="ignore")


# ------------------------------------------------------------------------------------------- syntax errors


def test_unescaped_quote_in_chinese_string_is_named():
    path = FIX / "unescaped_quote.json"
    line = path.read_text(encoding="utf-8").split("\n")[11]
    assert line.index("好") + 1 == 67
    message = error_of(path)
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
    path = FIX / "trailing_comma.json"
    message = error_of(path)
    lines = message.split("\n")
    assert lines[0] == f"{path}:3:90: invalid JSON at line 3, column 90: Expecting value"
    assert lines[3] == (
        "likely cause: a trailing comma before ']' or '}' (JSON allows none); delete it, "
        f"or run: usertwin validate {path} --repair OUT"
    )


def test_truncated_file_hint():
    path = FIX / "truncated.json"
    lines = error_of(path).split("\n")
    assert lines[0] == f"{path}:3:88: invalid JSON at line 3, column 88: Expecting ',' delimiter"
    assert lines[3] == (
        "likely cause: the file ends too early (truncated, or cut off while copying); check that it is complete"
    )


def test_unterminated_string_is_truncation(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[{"user_hash": "u1", "task": {"description": "abc')
    assert error_of(path).split("\n")[-1] == (
        "likely cause: the file ends too early (truncated, or cut off while copying); check that it is complete"
    )


def test_long_line_is_shown_as_a_window(tmp_path):
    path = tmp_path / "minified.json"
    path.write_text(json.dumps([rec(f"u{i}") for i in range(20)])[:-1] + ",]")
    _, shown, caret, _ = error_of(path).split("\n")
    assert shown.startswith("    ...") and len(shown) < 120
    assert shown[caret.index("^")] == "]"


def test_jsonl_broken_line_stop_names_the_line():
    path = FIX / "broken_line.jsonl"
    lines = error_of(path).split("\n")
    assert lines[0] == f"{path}:3:105: invalid JSON on line 3, column 105: Expecting ',' delimiter"
    assert lines[3] == "likely cause: unbalanced brackets: a ']' where a ',' or '}' was expected"
    assert lines[4] == (
        "each line of a JSON Lines file must be one complete record; use --on-error skip to skip bad records"
    )


def test_jsonl_broken_line_skip_keeps_the_rest():
    path = FIX / "broken_line.jsonl"
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
    good = [json.dumps(rec(f"u{i}")) for i in (1, 2, 3)]
    path.write_text("\n".join(['{"user_hash": "u0",'] + good) + "\n")
    assert error_of(path).split("\n")[0] == (
        f"{path}:1:20: invalid JSON on line 1, column 20: Expecting property name enclosed in double quotes"
    )
    result = R.load(path, on_error="skip")
    assert [r.user_id for r in result.records] == ["u1", "u2", "u3"]
    assert [(p.line, p.record) for p in result.skipped] == [(1, 0)]


def test_jsonl_comma_after_a_record_hint(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(rec("u1")) + ",\n" + json.dumps(rec("u2")) + "\n")
    assert error_of(path).split("\n")[3] == (
        "likely cause: a comma after the end of the value (JSON Lines need none); delete it, "
        f"or run: usertwin validate {path} --repair OUT"
    )


def test_jsonl_unescaped_quote_hint(tmp_path):
    path = tmp_path / "q.jsonl"
    line = json.dumps(rec("u1", [{"continuation": "他说QQ好看QQ就走了"}]), ensure_ascii=False).replace("QQ", '"')
    path.write_text(json.dumps(rec("u0")) + "\n" + line + "\n", encoding="utf-8")
    col = line.index("好") + 1
    lines = error_of(path).split("\n")
    assert lines[0] == f"{path}:2:{col}: invalid JSON on line 2, column {col}: Expecting ',' delimiter"
    assert "unescaped double quote" in lines[3]


# ------------------------------------------------------------------------------------------- repair


def test_repair_text_fixes_the_unescaped_quote():
    text = (FIX / "unescaped_quote.json").read_text(encoding="utf-8")
    fixed, changes = R.repair_text(text)
    assert changes == [
        'line 12, column 66: escaped an inner double quote in "他说"好看"就走了"',
        'line 12, column 69: escaped an inner double quote in "他说"好看"就走了"',
    ]
    raw = json.loads(fixed)
    assert raw[0]["task"]["task_behavior_collections"][0]["data"][0] == {
        "continuation_prefix": "霸王别姬: ", "continuation": '他说"好看"就走了', "timestamp": "2005-06-01"
    }
    # nothing else changed
    assert fixed.replace('\\"', '"') == text


@pytest.mark.parametrize(
    "text, fixed, changes",
    [
        ('{"t": "He said "hi", then left"}', '{"t": "He said \\"hi\\", then left"}',
         ['line 1, column 16: escaped an inner double quote in "He said "hi", then left"',
          'line 1, column 19: escaped an inner double quote in "He said "hi", then left"']),
        ('{"t": "我觉得"很好""}', '{"t": "我觉得\\"很好\\""}',
         ['line 1, column 11: escaped an inner double quote in "我觉得"很好""',
          'line 1, column 14: escaped an inner double quote in "我觉得"很好""']),
        ('[1,\n 2,\n]', "[1,\n 2\n]", ["line 2, column 3: removed a trailing comma before ']'"]),
        ('{"a": [1,], "b": 2,}', '{"a": [1], "b": 2}',
         ["line 1, column 9: removed a trailing comma before ']'",
          "line 1, column 19: removed a trailing comma before '}'"]),
        ('{"a": 1},\n{"b": 2}\n', '{"a": 1}\n{"b": 2}\n',
         ["line 1, column 9: removed a trailing comma after the end of the value"]),
        ('{"t": "a\tb"}', '{"t": "a\\tb"}', ["line 1, column 9: escaped a raw tab inside a string"]),
        ('\ufeff[1]', "[1]", ["line 1, column 1: removed a UTF-8 byte order mark (BOM)"]),
    ],
)
def test_repair_text_cases(text, fixed, changes):
    assert R.repair_text(text) == (fixed, changes)
    if "}\n{" in fixed:  # JSON Lines
        assert all(json.loads(line) for line in fixed.splitlines())
    else:
        json.loads(fixed)


@pytest.mark.parametrize(
    "text",
    [
        (FIX / "small.json").read_text(encoding="utf-8"),
        (FIX / "small.jsonl").read_text(encoding="utf-8"),
        '{"a": "x\\", \\"y", "b": ["\\"", ",", "]"], "c": "他说\\"好看\\""}',
        "[]",
    ],
)
def test_repair_text_leaves_valid_json_alone(text):
    assert R.repair_text(text) == (text, [])


def test_repair_text_jsonl_line_by_line():
    text = '{"a": 1}\n{"t": "他说"好看"就走了"}\r\n\n{"x": [1,]}\n{"bad": }\n'
    fixed, changes = R.repair_text(text)
    assert fixed == '{"a": 1}\n{"t": "他说\\"好看\\"就走了"}\r\n\n{"x": [1]}\n{"bad": }\n'
    assert changes == [
        'line 2, column 10: escaped an inner double quote in "他说"好看"就走了"',
        'line 2, column 13: escaped an inner double quote in "他说"好看"就走了"',
        "line 4, column 9: removed a trailing comma before ']'",
        "line 5, column 9: could not repair (Expecting value); left as is",
    ]


def test_repair_text_gives_up_clearly():
    with pytest.raises(UsertwinError) as err:
        R.repair_text('[{"a": }]')
    assert str(err.value).split("\n")[0] == (
        "cannot repair automatically: invalid JSON at line 1, column 8: Expecting value"
    )


def test_validate_file_repairs_into_a_copy(tmp_path):
    src = tmp_path / "hand.json"
    shutil.copy(FIX / "unescaped_quote.json", src)
    before = src.read_bytes()
    out = tmp_path / "fixed.json"
    report = R.validate_file(src, repair_out=out)
    assert src.read_bytes() == before
    assert (report.records, report.users, report.items) == (1, 1, 1)
    assert report.repairs == [
        'line 12, column 66: escaped an inner double quote in "他说"好看"就走了"',
        'line 12, column 69: escaped an inner double quote in "他说"好看"就走了"',
    ]
    assert report.summary_lines() == [
        "OK: 1 records, 1 users, 1 items",
        f"repaired 2 problems; wrote {out}:",
        '  line 12, column 66: escaped an inner double quote in "他说"好看"就走了"',
        '  line 12, column 69: escaped an inner double quote in "他说"好看"就走了"',
        "warning: 1 user(s) have a single item ('u1'): kept, with no history; in the time split it is a train target",
    ]
    assert R.load(out).records[0].items[0].continuation == '他说"好看"就走了'
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*.tmp"))


def test_validate_file_refuses_to_repair_in_place(tmp_path):
    src = tmp_path / "hand.json"
    shutil.copy(FIX / "unescaped_quote.json", src)
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "hand.json"):
        with pytest.raises(UsertwinError, match="never works in place"):
            R.validate_file(src, repair_out=out)
    assert src.read_bytes() == before


def test_validate_file_without_repair_raises_like_load():
    with pytest.raises(UsertwinError, match="unescaped double quote"):
        R.validate_file(FIX / "unescaped_quote.json")


def test_validate_file_summary_with_skips_and_warnings(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + "\n".join([json.dumps(rec("u1")), json.dumps(rec("u2", [{"continuation": ""}])),
                     json.dumps(rec("u1"))]).encode()
    )
    report = R.validate_file(path, on_error="skip")
    assert report.summary_lines() == [
        "OK: 2 records, 1 users, 2 items",
        f"warning: {path}: starts with a UTF-8 byte order mark (BOM); ignored it",
        "warning: user 'u1': records 0 and 2 share this user id; merged their items into one timeline "
        "(profile from record 0)",
        "skipped 1 bad record:",
        f"  {path}, record 1 (user 'u2'), field task.task_behavior_collections[0].data[0].continuation: "
        "empty continuation",
    ]


# ------------------------------------------------------------------------------------------- schema


def schema_error(tmp_path, records) -> str:
    return error_of(write_records(tmp_path / "data.json", records, jsonl=False))


def test_missing_continuation(tmp_path):
    items = [{"continuation": "a"}] * 5 + [{"continuation_prefix": "x: "}]
    message = schema_error(tmp_path, [rec("u0"), rec("u1"), rec("u2"), rec("u9", items)])
    assert message == "\n".join([
        f"{tmp_path / 'data.json'}: 1 problem in 1 of 4 records:",
        f"  {tmp_path / 'data.json'}, record 3 (user 'u9'), field "
        "task.task_behavior_collections[0].data[5].continuation: missing",
        "hint: use --on-error skip to skip bad records",
    ])


def test_continuation_not_a_string(tmp_path):
    message = schema_error(tmp_path, [rec("u1", [{"continuation": 4.0}])])
    assert (
        "record 0 (user 'u1'), field task.task_behavior_collections[0].data[0].continuation: "
        'must be a string, got a number (4.0) (write it in quotes: "4.0")'
    ) in message


def test_empty_collection(tmp_path):
    message = schema_error(tmp_path, [rec("u5", [])])
    assert "record 0 (user 'u5'), field task.task_behavior_collections[0].data: empty collection" in message


def test_missing_task_behavior_collections(tmp_path):
    message = schema_error(tmp_path, [rec("u1"), {"user_hash": "u2", "task": {"description": "d"}}])
    assert f"{tmp_path / 'data.json'}, record 1 (user 'u2'), field task.task_behavior_collections: missing" in message


def test_unparseable_timestamp(tmp_path):
    message = schema_error(tmp_path, [rec("u3", [{"continuation": "a"}, {"continuation": "b", "timestamp": "soon"}])])
    assert (
        "record 0 (user 'u3'), field task.task_behavior_collections[0].data[1].timestamp: cannot read \"soon\": "
        "not a date or time: 'soon'"
    ) in message


def test_all_problems_of_all_records_are_reported_together(tmp_path):
    bad_items = [
        {"continuation": "  "},
        {"continuation": "ok", "context": [{"content": "hi"}, {"role": 1, "content": 2}, 3]},
        {"continuation": "ok", "metadata": [1], "continuation_prefix": 5},
    ]
    raws = [
        rec("u1", bad_items),
        {"user": "x", "task": {"description": 3, "language": 1, "task_behavior_collections": {}}},
        [1],
        rec("u4"),
    ]
    path = write_records(tmp_path / "data.json", raws, jsonl=False)
    message = error_of(path)
    base = f"  {path}, record 0 (user 'u1'), field task.task_behavior_collections[0]"
    other = f"  {path}, record 1, field"
    assert message.split("\n") == [
        f"{path}: 12 problems in 3 of 4 records:",
        f"{base}.data[0].continuation: empty continuation",
        f'{base}.data[1].context[0]: needs a "role" or "source" string (who said it)',
        f"{base}.data[1].context[1].content: must be a string, got a number (2)",
        f"{base}.data[1].context[1].role: must be a string, got a number (1)",
        f'{base}.data[1].context[2]: a turn must be an object with "content" and "role" or "source", '
        "got a number (3)",
        f"{base}.data[2].continuation_prefix: must be a string, got a number (5)",
        f"{base}.data[2].metadata: must be an object, got a list",
        f'{other} user: must be an object, got a string ("x")',
        f"{other} task.description: must be a string, got a number (3)",
        f'{other} task.language: must be a string such as "en" or "zh", got a number (1)',
        f"{other} task.task_behavior_collections: must be a list of collections, got an object",
        f"  {path}, record 2: a record must be a JSON object {{...}}, got a list",
        "hint: use --on-error skip to skip bad records",
    ]
    assert message.endswith("use --on-error skip to skip bad records")


def test_problem_listing_is_capped(tmp_path):
    message = schema_error(tmp_path, [rec(f"u{i}", [{"continuation": ""}]) for i in range(25)])
    lines = message.split("\n")
    assert lines[0] == f"{tmp_path / 'data.json'}: 25 problems in 25 of 25 records:"
    assert len(lines) == 1 + 20 + 1 + 1
    assert lines[20].startswith(f"  {tmp_path / 'data.json'}, record 19 (user 'u19')")
    assert lines[21] == "  ... and 5 more"
    assert lines[22] == "hint: use --on-error skip to skip bad records"


def test_raw_data_gets_a_convert_hint(tmp_path):
    message = schema_error(tmp_path, {"review0": {"text": "x"}})
    assert message.split("\n")[-2] == (
        "hint: no record has a \"task\"; is this raw data (or the seeds' sample format) that must be converted "
        "into records first?"
    )


def test_skip_drops_bad_records_and_keeps_the_rest(tmp_path):
    raws = [rec("u0"), rec("u1", [{"continuation": 3}, {"continuation": "b", "timestamp": True}]), rec("u2")]
    path = write_records(tmp_path / "data.json", raws, jsonl=False)
    result = R.load(path, on_error="skip")
    assert [(r.index, r.user_id) for r in result.records] == [(0, "u0"), (2, "u2")]
    (problem,) = result.skipped
    assert (problem.record, problem.user, problem.field) == (1, "u1", "task.task_behavior_collections[0].data[0].continuation")
    assert str(problem) == (
        f"{path}, record 1 (user 'u1'), field task.task_behavior_collections[0].data[0].continuation: "
        'must be a string, got a number (3) (write it in quotes: "3") (+1 more: field '
        "task.task_behavior_collections[0].data[1].timestamp: cannot read true: True is a boolean, not a timestamp)"
    )
    assert len(problem.all_problems) == 2


def test_unknown_item_keys_go_into_metadata_and_metadata_wins(tmp_path):
    path = write_records(tmp_path / "d.json", [rec("u1", [{"continuation": "x", "stars": 4, "rating": 5,
                                                             "metadata": {"rating": 4.5}}])], jsonl=False)
    assert R.load(path).records[0].items[0].metadata == {"stars": 4, "rating": 4.5}


def test_personality_of_the_research_scripts_is_merged_into_dimensions(tmp_path):
    raw = rec("u1")
    raw["user"] = {
        "profile": {"name": "HP", "dimensions": {"ios": 3}},
        "personality": {"structured": {"big_five": {"Openness": 3.5}, "ios": 9}},
    }
    path = write_records(tmp_path / "d.json", [raw], jsonl=False)
    record = R.load(path).records[0]
    assert record.profile == {"name": "HP", "dimensions": {"ios": 3, "big_five": {"Openness": 3.5}}}
    assert raw["user"]["profile"] == {"name": "HP", "dimensions": {"ios": 3}}


def test_optional_fields_may_be_null(tmp_path):
    item = {"continuation": "x", "continuation_prefix": None, "context": None, "timestamp": None, "metadata": None}
    raw = {"user": {"id": "u1", "profile": None}, "task": {"description": None, "language": None,
                                                          "task_behavior_collections": [{"data": [item]}]}}
    record = R.load(write_records(tmp_path / "d.json", raw, jsonl=False)).records[0]
    assert record == Record(0, "u1", {}, "", None, [Item("x", "", [], None, None, "", {}, 0)])


# ------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    "value, expected",
    [
        (964982703, 964982703.0),
        (964982703.5, 964982703.5),
        (964982703000, 964982703.0),
        ("964982703", 964982703.0),
        ("964982703123", 964982703.123),
        ("2000-07-30T18:45:03Z", 964982703.0),
        ("2000-07-30T18:45:03.250Z", 964982703.25),
        ("2000-07-31T02:45:03+08:00", 964982703.0),
        ("2000-07-30T13:45:03-0500", 964982703.0),
        ("2000-07-30 18:45:03", 964982703.0),
        ("2000-07-30 18:45", 964982700.0),
        ("2000-07-30", 964915200.0),
        ("2000/07/30", 964915200.0),
        ("2000/7/30", 964915200.0),
        (" 2000-07-30 ", 964915200.0),
    ],
)
def test_parse_timestamp(value, expected):
    assert R.parse_timestamp(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("garbage", "not a date or time: 'garbage'"),
        ("", "empty timestamp"),
        ("2000-13-01", "not a valid date or time: '2000-13-01' (month must be in 1..12)"),
        (True, "True is a boolean, not a timestamp"),
        (None, "null is not a timestamp"),
        ([2000], "a list is not a timestamp"),
        (float("nan"), "nan is not a finite number"),
        ("nan", "not a date or time: 'nan'"),
        ("1e400", "'1e400' is not a finite number"),
        ("1_000", "not a date or time: '1_000'"),
    ],
)
def test_parse_timestamp_rejects(value, reason):
    with pytest.raises(ValueError) as err:
        R.parse_timestamp(value)
    assert str(err.value).startswith(reason)


def test_user_id_of_precedence():
    full = {"user_hash": "h", "user": {"id": "i", "hash": "uh", "profile": {"name": "n"}}}
    assert R.user_id_of(full, 3) == "h"
    assert R.user_id_of({**full, "user_hash": ""}, 3) == "i"
    assert R.user_id_of({"user_hash": "  ", "user": {"id": None, "hash": "uh", "profile": {"name": "n"}}}, 3) == "uh"
    assert R.user_id_of({"user": {"id": "", "profile": {"name": "n"}}}, 3) == "n"
    assert R.user_id_of({"user": {"id": 42}}, 3) == "42"
    assert R.user_id_of({"user_hash": 0}, 3) == "0"
    assert R.user_id_of({"user": {"profile": {"name": ""}}}, 3) == "record-3"
    assert R.user_id_of({"user": "x"}, 5) == "record-5"
    assert R.user_id_of([1], 7) == "record-7"


def test_problem_str():
    assert str(Problem("data.json", "bad", line=12, column=40)) == "data.json:12:40: bad"
    field = "task.task_behavior_collections[0].data[5].continuation"
    assert str(Problem("data.json", "missing", record=3, user="u9", field=field)) == (
        f"data.json, record 3 (user 'u9'), field {field}: missing"
    )


# ------------------------------------------------------------------------------------------- writing


def test_write_then_load_round_trip(tmp_path):
    loaded = R.load(FIX / "small.json").records
    out = tmp_path / "out" / "records.jsonl"
    assert R.write((R.record_to_raw(r) for r in loaded), out) == 2
    assert R.load(out).records == loaded
    # Record objects are accepted too, and the file is JSON Lines with readable Chinese
    assert R.write(loaded, out) == 2
    text = out.read_text(encoding="utf-8")
    assert len(text.splitlines()) == 2 and "他说" in text
    assert not list(out.parent.glob(".*.tmp"))


def test_record_to_raw_keeps_item_order_across_collections():
    items = [Item("a", collection="x", position=0), Item("b", collection="y", position=1),
             Item("c", collection="x", timestamp=5.0, position=2)]
    raw = R.record_to_raw(Record(0, "u1", {"name": "n"}, "desc", None, items))
    assert raw == {
        "user_hash": "u1",
        "user": {"id": "u1", "profile": {"name": "n"}},
        "task": {"description": "desc", "task_behavior_collections": [
            {"type": "x", "data": [{"continuation": "a"}]},
            {"type": "y", "data": [{"continuation": "b"}]},
            {"type": "x", "data": [{"continuation": "c", "timestamp": 5}]},
        ]},
    }


# ------------------------------------------------------------------------------------------- real data


def test_seed_samples_grouped_into_records_load(tmp_path):
    samples = json.loads(shared("seed_examples", "all_samples.json").read_text(encoding="utf-8"))
    by_user: dict = {}
    for s in samples:
        raw = by_user.setdefault(s["user_hash"], {
            "user_hash": s["user_hash"],
            "user": s["user_object"],
            "task": {"description": s["task_description"], "language": "ja",
                     "task_behavior_collections": [{"type": "dialogue", "data": []}]},
        })
        raw["task"]["task_behavior_collections"][0]["data"].append(
            {"context": s["context"], "continuation": s["next_question"]})
    path = tmp_path / "seeds.jsonl"
    assert R.write(by_user.values(), path) == 5
    report = R.validate_file(path)
    assert report.summary_lines() == ["OK: 5 records, 5 users, 159 items"]
    first = R.load(path).records[0]
    assert set(first.profile["dimensions"]) >= {"big_five", "kiss18", "atq", "sms"}
    assert first.items[0].context[0]["role"] in ("user", "assistant")
