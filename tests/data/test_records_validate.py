"""records.validate: validate_file checks a file, repairs into a copy (never in place), and summarises."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import RECORD_FILES, raw_record

from usertwin.data import records as R
from usertwin.errors import UsertwinError


def test_validate_file_repairs_into_a_copy(tmp_path):
    src = tmp_path / "hand.json"
    shutil.copy(RECORD_FILES / "unescaped_quote.json", src)
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
    shutil.copy(RECORD_FILES / "unescaped_quote.json", src)
    before = src.read_bytes()
    for out in (src, tmp_path / "." / "hand.json"):
        with pytest.raises(UsertwinError, match="never works in place"):
            R.validate_file(src, repair_out=out)
    assert src.read_bytes() == before


def test_validate_file_without_repair_raises_like_load():
    with pytest.raises(UsertwinError, match="unescaped double quote"):
        R.validate_file(RECORD_FILES / "unescaped_quote.json")


def test_validate_file_summary_with_skips_and_warnings(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + "\n".join([json.dumps(raw_record("u1")), json.dumps(raw_record("u2", [{"continuation": ""}])),
                     json.dumps(raw_record("u1"))]).encode()
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
