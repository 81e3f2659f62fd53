"""records.schema: every problem of every record named by record, user and field; user ids; Problem."""

from __future__ import annotations

import pytest
from helpers import load_error, raw_record, write_records

from usertwin.data import records as R
from usertwin.data.records import Item, Problem, Record
from usertwin.errors import UsertwinError


def schema_error(tmp_path, records) -> str:
    return load_error(write_records(tmp_path / "data.json", records, jsonl=False))


def test_missing_continuation(tmp_path):
    items = [{"continuation": "a"}] * 5 + [{"continuation_prefix": "x: "}]
    message = schema_error(tmp_path, [raw_record("u0"), raw_record("u1"), raw_record("u2"), raw_record("u9", items)])
    assert message == "\n".join([
        f"{tmp_path / 'data.json'}: 1 problem in 1 of 4 records:",
        f"  {tmp_path / 'data.json'}, record 3 (user 'u9'), field "
        "task.task_behavior_collections[0].data[5].continuation: missing",
        "hint: use --on_error skip to skip bad records",
    ])


def test_continuation_not_a_string(tmp_path):
    message = schema_error(tmp_path, [raw_record("u1", [{"continuation": 4.0}])])
    assert (
        "record 0 (user 'u1'), field task.task_behavior_collections[0].data[0].continuation: "
        'must be a string, got a number (4.0) (write it in quotes: "4.0")'
    ) in message


def test_empty_collection(tmp_path):
    message = schema_error(tmp_path, [raw_record("u5", [])])
    assert "record 0 (user 'u5'), field task.task_behavior_collections[0].data: empty collection" in message


def test_missing_task_behavior_collections(tmp_path):
    message = schema_error(tmp_path, [raw_record("u1"), {"user_hash": "u2", "task": {"description": "d"}}])
    assert f"{tmp_path / 'data.json'}, record 1 (user 'u2'), field task.task_behavior_collections: missing" in message


def test_unparseable_timestamp(tmp_path):
    message = schema_error(tmp_path, [raw_record("u3", [{"continuation": "a"}, {"continuation": "b", "timestamp": "soon"}])])
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
        raw_record("u1", bad_items),
        {"user": "x", "task": {"description": 3, "language": 1, "task_behavior_collections": {}}},
        [1],
        raw_record("u4"),
    ]
    path = write_records(tmp_path / "data.json", raws, jsonl=False)
    message = load_error(path)
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
        "hint: use --on_error skip to skip bad records",
    ]
    assert message.endswith("use --on_error skip to skip bad records")


def test_problem_listing_is_capped(tmp_path):
    message = schema_error(tmp_path, [raw_record(f"u{i}", [{"continuation": ""}]) for i in range(25)])
    lines = message.split("\n")
    assert lines[0] == f"{tmp_path / 'data.json'}: 25 problems in 25 of 25 records:"
    assert len(lines) == 1 + 20 + 1 + 1
    assert lines[20].startswith(f"  {tmp_path / 'data.json'}, record 19 (user 'u19')")
    assert lines[21] == "  ... and 5 more"
    assert lines[22] == "hint: use --on_error skip to skip bad records"


def test_raw_data_gets_a_convert_hint(tmp_path):
    message = schema_error(tmp_path, {"review0": {"text": "x"}})
    assert message.split("\n")[-2] == (
        "hint: no record has a \"task\"; is this raw data (or the seeds' sample format) that must be converted "
        "into records first?"
    )


def test_skip_drops_bad_records_and_keeps_the_rest(tmp_path):
    raws = [raw_record("u0"), raw_record("u1", [{"continuation": 3}, {"continuation": "b", "timestamp": True}]), raw_record("u2")]
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
    path = write_records(tmp_path / "d.json", [raw_record("u1", [{"continuation": "x", "stars": 4, "rating": 5,
                                                             "metadata": {"rating": 4.5}}])], jsonl=False)
    assert R.load(path).records[0].items[0].metadata == {"stars": 4, "rating": 4.5}


def test_personality_of_the_research_scripts_is_merged_into_dimensions(tmp_path):
    raw = raw_record("u1")
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


def test_task_role_is_read_and_an_unknown_role_refused(tmp_path):
    """task.role names the twin in the prompt ("this character"); absent it is "user"; a role the prompt
    cannot name stops loading with file, record, user and field, like every other bad field."""
    path = write_records(tmp_path / "d.json", [raw_record("u1", role="character"), raw_record("u2")], jsonl=False)
    assert [r.role for r in R.load(path).records] == ["character", "user"]
    assert R.validate_file(path).summary_lines()[0] == "OK: 2 records, 2 users, 2 items"
    bad = write_records(tmp_path / "bad.json", [raw_record("u1"), raw_record("u2", role="actor")], jsonl=False)
    assert (f"{bad}, record 1 (user 'u2'), field task.role: unknown role \"actor\"; choose one of user, character"
            in load_error(bad))
    with pytest.raises(UsertwinError, match="field task.role: unknown role"):
        R.validate_file(bad)
    bad = write_records(tmp_path / "num.json", [raw_record("u3", role=1)], jsonl=False)
    assert ("record 0 (user 'u3'), field task.role: must be a string, one of user, character; got a number (1)"
            in load_error(bad))
    skipped = R.load(tmp_path / "bad.json", on_error="skip")
    assert [r.user_id for r in skipped.records] == ["u1"] and skipped.skipped[0].field == "task.role"
