"""Make a leaderboard scenario folder from a records file (for `usertwin predict --scenario`).

    python scripts/make_scenario.py RECORDS.jsonl -o DIR [--users N] [--targets K] [--cold C]

DIR/train.json: the first N users' records without their last K items (time order when every item has a
timestamp, else file order); DIR/test_leaderboard.json: the same users with only those K items, their
continuations removed (the targets), then C more users with their last K items as targets (cold-start users:
absent from train.json); DIR/answers.json: the test file with the continuations kept, to score against.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    doc = json.loads(text)
    return doc if isinstance(doc, list) else [doc]


def _split(record: dict, k: int) -> tuple[dict, dict]:
    """(record without its last k items, record with only them); collections keep their order."""
    flat = [(ci, it) for ci, c in enumerate(record["task"]["task_behavior_collections"]) for it in c["data"]]
    order = list(range(len(flat)))
    if all("timestamp" in it for _, it in flat):
        order.sort(key=lambda n: flat[n][1]["timestamp"])
    held = set(order[len(order) - k:])
    train, test = copy.deepcopy(record), copy.deepcopy(record)
    for part, keep in ((train, lambda n: n not in held), (test, lambda n: n in held)):
        colls = part["task"]["task_behavior_collections"]
        for ci, c in enumerate(colls):
            c["data"] = [copy.deepcopy(it) for n, (cj, it) in enumerate(flat) if cj == ci and keep(n)]
        part["task"]["task_behavior_collections"] = [c for c in colls if c["data"]]
    return train, test


def make_scenario(records_path, out_dir, users: int, targets: int, cold: int) -> dict:
    recs = _records(Path(records_path))
    if len(recs) < users + cold:
        raise SystemExit(f"{records_path} holds {len(recs)} records; --users {users} + --cold {cold} need more")
    train, answers = [], []
    for rec in recs[:users]:
        a, b = _split(rec, targets)
        train.append(a)
        answers.append(b)
    answers += [_split(rec, targets)[1] for rec in recs[users:users + cold]]
    test = copy.deepcopy(answers)
    for rec in test:
        for c in rec["task"]["task_behavior_collections"]:
            for it in c["data"]:
                it.pop("continuation", None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in (("train.json", train), ("test_leaderboard.json", test), ("answers.json", answers)):
        (out / name).write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return {"train_users": len(train), "test_users": len(test),
            "targets": sum(len(c["data"]) for r in test for c in r["task"]["task_behavior_collections"])}


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", help="a records file (JSON list or JSON Lines)")
    p.add_argument("-o", "--output", required=True, help="the scenario folder to write")
    p.add_argument("--users", type=int, default=5, help="users with history in train.json (default 5)")
    p.add_argument("--targets", type=int, default=2, help="each such user's last items held out (default 2)")
    p.add_argument("--cold", type=int, default=1, help="cold-start users after them: no train.json record, their last items targets (default 1)")
    a = p.parse_args()
    print(make_scenario(a.records, a.output, a.users, a.targets, a.cold))


if __name__ == "__main__":
    main()
