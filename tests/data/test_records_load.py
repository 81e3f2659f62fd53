"""records.load and iter_raw: the three file shapes, encodings, empty and missing files, on_error."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import shared
from helpers import RECORD_FILES, load_error, raw_record

from usertwin.data import records as R
from usertwin.data.records import Item, Record
from usertwin.errors import UsertwinError


def test_list_single_and_jsonl_give_the_same_records():
    listed = R.load(RECORD_FILES / "small.json")
    lines = R.load(RECORD_FILES / "small.jsonl")
    single = R.load(RECORD_FILES / "single.json")
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
    shutil.copy(RECORD_FILES / "small.jsonl", path)
    assert R.load(path).records == R.load(RECORD_FILES / "small.json").records


def test_jsonl_file_holding_a_pretty_printed_list_is_read_as_json(tmp_path):
    path = tmp_path / "pretty.jsonl"
    shutil.copy(RECORD_FILES / "small.json", path)
    result = R.load(path)
    assert result.records == R.load(RECORD_FILES / "small.json").records
    assert result.warnings == [f"{path}: holds one JSON document, not JSON Lines; read it as JSON"]


def test_iter_raw_gives_index_record_and_line():
    listed = [(i, raw["task"]["description"], line) for i, raw, line in R.iter_raw(RECORD_FILES / "small.json")]
    assert listed == [(0, "Rate and review movies as this user.", 2), (1, "写短评", 28)]
    lines = [(i, line) for i, _, line in R.iter_raw(RECORD_FILES / "small.jsonl")]
    assert lines == [(0, 1), (1, 2)]


def test_bom_is_stripped_with_a_warning(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([raw_record("u7")]).encode())
    result = R.load(path)
    assert [r.user_id for r in result.records] == ["u7"]
    assert result.warnings == [f"{path}: starts with a UTF-8 byte order mark (BOM); ignored it"]

    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(raw_record("u8")).encode() + b"\n")
    result = R.load(lines)
    assert [r.user_id for r in result.records] == ["u8"]
    assert result.warnings == [f"{lines}: starts with a UTF-8 byte order mark (BOM); ignored it"]


def test_non_utf8_byte_names_line_and_column(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n  {"user_hash": "u1",\n   "x": "caf\xe9"}]\n')
    assert load_error(path) == (
        f"{path}:3:13: not valid UTF-8 (byte 0xe9 at line 3, column 13); save it as UTF-8"
    )


def test_non_utf8_chinese_suggests_gbk(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(json.dumps(raw_record("u1")).encode() + b"\n" + '{"c": "好看"}\n'.encode("gbk"))
    message = load_error(path)
    assert message.startswith(f"{path}:2:8: not valid UTF-8 (byte 0xba at line 2, column 8); ")
    assert "GBK/GB18030" in message and "iconv -f GB18030 -t UTF-8" in message


def test_empty_missing_and_directory_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(" \n\n")
    assert load_error(empty) == (
        f"{empty}: the file is empty; expected a JSON list of records, one record object, "
        "or JSON Lines (one record per line)"
    )
    empty_lines = tmp_path / "empty.jsonl"
    empty_lines.write_text("\n")
    assert load_error(empty_lines) == f"{empty_lines}: the file is empty; expected JSON Lines (one record object per line)"
    assert load_error(tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: no such file"
    assert load_error(tmp_path) == f"{tmp_path}: is a directory; give a records file (.json or .jsonl)"


def test_top_level_scalar_is_rejected(tmp_path):
    path = tmp_path / "n.json"
    path.write_text("42\n")
    assert load_error(path) == (
        f"{path}: the top level is a number; expected a JSON list of records, one record object, "
        "or JSON Lines (one record per line)"
    )


def test_bad_on_error_value():
    with pytest.raises(UsertwinError, match="on_error must be 'stop' or 'skip', got 'ignore'"):
        R.load(RECORD_FILES / "small.json", on_error="ignore")


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


def test_from_raw_checks_a_record_given_as_data_like_a_file_record():
    from usertwin.data.records import from_raw

    raw = {"user_hash": "u", "task": {"description": "d", "task_behavior_collections": [
        {"type": "movie_rating", "data": [{"continuation": "4.0", "timestamp": 100}]}]}}
    record = from_raw(raw, "the history")
    assert (record.user_id, [it.continuation for it in record.items]) == ("u", ["4.0"])
    raw["task"]["task_behavior_collections"][0]["data"][0].pop("continuation")
    with pytest.raises(UsertwinError) as e:
        from_raw(raw, "the history")
    assert str(e.value) == ("the history: 1 problem:\n  the history, record 0 (user 'u'), field "
                            "task.task_behavior_collections[0].data[0].continuation: missing")
