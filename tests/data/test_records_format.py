"""records.format: writing Records back as JSON Lines and the raw dicts they came from."""

from __future__ import annotations

from helpers import RECORD_FILES

from usertwin.data import records as R
from usertwin.data.records import Item, Record


def test_write_then_load_round_trip(tmp_path):
    loaded = R.load(RECORD_FILES / "small.json").records
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


def test_record_to_raw_writes_a_role_other_than_user():
    items = [Item("a", collection="dialogue")]
    character = R.record_to_raw(Record(0, "c1", {"name": "BIANCA"}, "d", "en", items, role="character"))
    assert character["task"]["role"] == "character"
    assert "role" not in R.record_to_raw(Record(0, "u1", {}, "d", "en", items))["task"]
