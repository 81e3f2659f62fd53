"""The issue's acceptance checks on real data: ml-latest-small, converted, prepared and dumped."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest
from conftest import shared

from usertwin.cli import main


@pytest.fixture(scope="module")
def ml_records(tmp_path_factory):
    raw = shared("movielens", "ml-latest-small")
    out = tmp_path_factory.mktemp("ml") / "records.jsonl"
    assert main(["convert", "movielens", str(raw), "-o", str(out), "--no-progress"]) == 0
    return out


def test_convert_counts(ml_records):
    lines = ml_records.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 610
    items = sum(len(c["data"]) for line in lines for c in json.loads(line)["task"]["task_behavior_collections"])
    assert items == 100_836


def test_dump_every_item_once_no_leakage_split_shares(ml_records, tokenizer_dir, tmp_path):
    dump = tmp_path / "dump.jsonl"
    assert main(["inspect", "--data", str(ml_records), "--model", str(tokenizer_dir), "-n", "0",
                 "--no-progress", "--dump", str(dump)]) == 0
    targets = Counter()
    per_user = defaultdict(Counter)
    with open(dump, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            targets[(r["user"], r["target_index"])] += 1
            per_user[r["user"]][r["split"]] += 1
            assert all(h < r["target_index"] for h in r["history_indices"])
            assert r["history_indices"] == sorted(set(r["history_indices"]))
    assert len(targets) == 100_836 and set(targets.values()) == {1}
    assert len(per_user) == 610
    for counts in per_user.values():
        n = sum(counts.values())
        for split, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
            assert abs(counts[split] - share * n) <= 1
    # every user's items are numbered 0..n-1 exactly once
    for user, counts in per_user.items():
        n = sum(counts.values())
        assert all(targets[(user, i)] == 1 for i in range(n))
