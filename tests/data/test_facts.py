"""What a twin keeps from its data (data/facts.py): the rating scale is the ratings seen and every value the
records declare in task.rating_scale, written as the data writes ratings."""

from __future__ import annotations

import json

from helpers import write_rating_users

from usertwin.data import records
from usertwin.data.facts import rating_distribution, rating_scale, twin_facts
from usertwin.data.timeline import build_timelines


def _timelines(path):
    (timelines, _) = build_timelines(records.load(path).records)
    return timelines


def test_a_declared_rating_no_user_gave_is_on_the_scale(tmp_path):
    path = write_rating_users(tmp_path / "r.jsonl", (6, 5), lambda u, i: f"Movie {i}: ", lambda u, i: 2 + i % 3)
    assert rating_scale(_timelines(path)) == ["2.0", "3.0", "4.0"]  # nothing declared: the ratings seen
    raws = [json.loads(line) for line in path.read_text().splitlines()]
    for raw in raws:
        raw["task"]["rating_scale"] = [1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]
    path.write_text("".join(json.dumps(r) + "\n" for r in raws))
    scale = rating_scale(_timelines(path))
    assert scale == ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"]
    assert twin_facts(_timelines(path))["rating_scale"] == scale
    dist = rating_distribution(scale, [0.0] * len(scale))
    assert dist["probs"][1] > 0 and dist["scale"][1] == 1.5  # 1.5 gets its probability


def test_integer_ratings_keep_their_form(tmp_path):
    path = write_rating_users(tmp_path / "r.jsonl", (4,), lambda u, i: f"Movie {i}: ", lambda u, i: 1 + i)
    raws = [json.loads(line) for line in path.read_text().splitlines()]
    for raw in raws:
        for it in raw["task"]["task_behavior_collections"][0]["data"]:
            it["continuation"] = it["continuation"].split(".")[0]  # "3", as some data writes ratings
        raw["task"]["rating_scale"] = [1, 2, 3, 4, 5]
    path.write_text("".join(json.dumps(r) + "\n" for r in raws))
    assert rating_scale(_timelines(path)) == ["1", "2", "3", "4", "5"]
