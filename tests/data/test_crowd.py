"""Crowd context (data/crowd.py): other users' ratings in each item's line, never the target's own, never
anything the split's baselines are not fit on; the same rule at training and wherever the twin is used."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from conftest import shared

from usertwin.config import Config
from usertwin.data import crowd, records
from usertwin.data.records import Item
from usertwin.data.records.format import item_key
from usertwin.data.timeline import Timeline, assign_splits, build_timelines
from usertwin.errors import UsertwinError
from usertwin.text.render import Renderer


def _item(movie: int, rating: float, t: int) -> Item:
    return Item(continuation=f"{rating:.1f}", prefix=f"Movie {movie} (2000) (Drama): ", timestamp=t,
                collection="movie_rating", metadata={"movie_id": movie, "rating": rating}, position=t)


def _timelines(table: dict) -> list[Timeline]:
    """{user: [(movie, rating), ...] in time order} -> timelines."""
    return [Timeline(u, {}, "Predict ratings.", "en", [_item(m, r, t) for t, (m, r) in enumerate(rows)])
            for u, rows in table.items()]


def _cfg(**kw) -> Config:
    return Config(**{"test_ratio": 0.25, "val_ratio": 0.25, **kw})


# 4 items a user: positions 0, 1 train, 2 val, 3 test (time split 50/25/25)
TABLE = {"a": [(1, 4.0), (2, 3.0), (3, 5.0), (4, 2.0)],
         "b": [(1, 2.0), (3, 1.0), (4, 5.0), (2, 4.0)],
         "c": [(4, 3.0), (1, 5.0), (2, 1.0), (3, 4.0)]}


def test_split_rule_counts_exactly_what_the_baselines_see():
    tls = _timelines(TABLE)
    splits = assign_splits(tls, _cfg())
    assert splits["a"] == ["train", "train", "val", "test"]
    crowd.annotate_split(tls, splits, "item")
    a, b, c = tls
    # a's train item movie 1: others' train ratings of movie 1 = b (2.0, train) and c (5.0, train)
    assert a.crowd[0] == crowd.Crowd(2, 3.5)
    # a's val item movie 3: others' *train* ratings of movie 3 = b's 1.0 (c's 4.0 is test)
    assert a.crowd[2] == crowd.Crowd(1, 1.0)
    # a's test item movie 4: others' train + val = b's 5.0 (val) and c's 3.0 (train)
    assert a.crowd[3] == crowd.Crowd(2, 4.0)
    # b's test item movie 2: a's 3.0 (train) and c's 1.0 (val); never b's own
    assert b.crowd[3] == crowd.Crowd(2, 2.0)
    # c's test item movie 3: a's 5.0 (val) and b's 1.0 (train)
    assert c.crowd[3] == crowd.Crowd(2, 3.0)


def test_user_running_statistics_hold_only_earlier_items():
    tls = _timelines(TABLE)
    crowd.annotate_split(tls, assign_splits(tls, _cfg()), "item_and_user")
    a = tls[0]
    assert a.crowd[0].user_count == 0 and a.crowd[0].user_mean is None
    assert (a.crowd[3].user_count, a.crowd[3].user_mean) == (3, 4.0)  # 4, 3, 5: never the target's 2


def test_rendered_line_and_buckets(tokenizer):
    tls = _timelines(TABLE)
    crowd.annotate_split(tls, assign_splits(tls, _cfg()), "item_and_user")
    r = Renderer(_cfg(crowd_context="item_and_user"), tokenizer)
    text = r.user_text(tls[0], 3)
    assert text == ("Movie 4 (2000) (Drama):\nOthers: 4.0 avg, 2-4 ratings\n"
                    "You so far: 4.0 avg, 2-4 ratings\nPredict the rating this user gives to this movie:")
    assert r.user_text(tls[0], 0).splitlines()[1:3] == ["Others: 3.5 avg, 2-4 ratings", "You so far: no ratings"]
    plain = Renderer(_cfg(crowd_context="none"), tokenizer)
    assert "Others" not in plain.user_text(tls[0], 3)  # crowd_context none shows nothing
    assert [crowd.count_bucket(n) for n in (1, 2, 4, 5, 19, 20, 99, 100, 199, 200, 5000)] == \
           ["1", "2-4", "2-4", "5-9", "10-19", "20-49", "50-99", "100-199", "100-199", "200+", "200+"]


def test_unknown_crowd_setting_is_refused(tokenizer):
    with pytest.raises(UsertwinError, match="crowd_context"):
        Renderer(_cfg(crowd_context="everything"), tokenizer)


# ---------------------------------------------------------------- leakage on real data


@pytest.fixture(scope="module")
def ml_timelines(tmp_path_factory):
    from usertwin.cli import main

    out = tmp_path_factory.mktemp("crowd") / "ml.jsonl"
    assert main(["convert", "movielens", str(shared("movielens", "ml-latest-small")), "-o", str(out),
                 "--no-progress"]) == 0
    tls, _ = build_timelines(records.load(out).records)
    return tls


def _annotated(tls, mutate=None):
    tls = [dataclasses.replace(tl, items=list(tl.items)) for tl in tls]
    splits = assign_splits(tls, Config())
    if mutate:
        for tl in tls:
            tl.items = [mutate(it, label) for it, label in zip(tl.items, splits[tl.user_id])]
    crowd.annotate_split(tls, splits, "item_and_user")
    return tls, splits


def _rerate(which: str, seed: int):
    rng = random.Random(seed)

    def mutate(item, label):
        if label != which:
            return item
        return dataclasses.replace(item, continuation=f"{rng.choice([0.5, 1.0, 2.5, 5.0]):.1f}")
    return mutate


def test_real_movielens_test_ratings_never_reach_any_statistics(ml_timelines):
    """Re-rating every test target at random changes no item's crowd statistics: a test rating is in no pool."""
    base, splits = _annotated(ml_timelines)
    moved, _ = _annotated(ml_timelines, _rerate("test", 1))
    assert sum(len(tl.crowd) for tl in base) == 100_836
    changed = [(tl.user_id, p) for tl, m in zip(base, moved) for p in tl.crowd
               if (tl.crowd[p].count, tl.crowd[p].mean) != (m.crowd[p].count, m.crowd[p].mean)]
    assert changed == []


def test_real_movielens_val_ratings_reach_only_test_items(ml_timelines):
    """Re-rating the validation items changes train and val items' statistics nowhere (they count train
    only, as the validation baselines are fit on train), and test items' only through other users."""
    base, splits = _annotated(ml_timelines)
    moved, _ = _annotated(ml_timelines, _rerate("val", 2))
    touched = {"train": 0, "val": 0, "test": 0}
    for tl, m in zip(base, moved):
        for p, stats in tl.crowd.items():
            if (stats.count, stats.mean) != (m.crowd[p].count, m.crowd[p].mean):
                touched[splits[tl.user_id][p]] += 1
    assert touched["train"] == touched["val"] == 0 and touched["test"] > 1000


def test_real_movielens_test_statistics_equal_the_baselines_fit_data(ml_timelines):
    """A test target's statistics are the count and mean of the ratings the test baselines are fit on
    (every user's train + val items), less the target user's own: recomputed here from scratch."""
    base, splits = _annotated(ml_timelines)
    fit = {}
    for tl in base:
        for it, label in zip(tl.items, splits[tl.user_id]):
            if label != "test":
                fit.setdefault(item_key(it), []).append((tl.user_id, float(it.continuation)))
    checked = 0
    for tl in base[:60]:
        for p, label in enumerate(splits[tl.user_id]):
            if label != "test":
                continue
            others = [r for u, r in fit.get(item_key(tl.items[p]), []) if u != tl.user_id]
            stats = tl.crowd[p]
            assert stats.count == len(others)
            assert stats.mean == pytest.approx(sum(others) / len(others)) if others else stats.mean is None
            checked += 1
    assert checked == 1_313


def test_own_rating_is_never_counted_even_when_others_share_the_item():
    table = {"a": [(1, 1.0), (1, 1.0), (1, 1.0), (1, 5.0)], "b": [(1, 3.0)] * 4}
    tls = _timelines(table)
    crowd.annotate_split(tls, assign_splits(tls, _cfg()), "item")
    # a's test item counts b's train + val ratings of movie 1 (3 of them), none of a's own
    assert tls[0].crowd[3] == crowd.Crowd(3, 3.0)


# ---------------------------------------------------------------- new items at use


def test_new_items_count_every_rating_of_the_others():
    tls = _timelines(TABLE)
    pools = crowd.annotate_split(tls, assign_splits(tls, _cfg()), "item")
    a = tls[0]
    new = dataclasses.replace(_item(3, 0.0, 9), continuation="")
    stats = pools.with_new(a, new, "item")
    assert stats[4] == crowd.Crowd(2, 2.5)  # movie 3: b's 1.0 (train), c's 4.0 (test) -- never a's own 5.0
    assert {p: stats[p] for p in a.crowd} == a.crowd  # the existing items keep the split rule's statistics
    saved = crowd.Pools.saved(crowd.Pool.from_json(json.loads(json.dumps(pools.train_val.to_json()))))
    stranger = Timeline("z", {}, "", "en", [])
    assert saved.with_new(stranger, new, "item")[0] == crowd.Crowd(2, 3.0)  # train + val only: a's 5.0, b's 1.0
    assert saved.with_new(a, new, "none") == a.crowd


# ---------------------------------------------------------------- end to end: train, predict, Twin, inspect


def _user_raw(uid: str, n: int) -> dict:
    items = [{"continuation_prefix": f"Movie {(i + int(uid)) % 5} (2000) (Drama): ",
              "continuation": f"{(i * int(uid)) % 5 + 1}.0", "timestamp": 1_000_000 + 60 * i,
              "metadata": {"movie_id": (i + int(uid)) % 5}} for i in range(n)]
    return {"user_hash": uid, "user": {"profile": {"name": f"user {uid}"}},
            "task": {"description": "Predict ratings.", "language": "en",
                     "task_behavior_collections": [{"type": "movie_rating", "data": items}]}}


@pytest.fixture(scope="module")
def crowd_run(tmp_path_factory, tiny_model_dir):
    from usertwin.cli import main

    tmp = tmp_path_factory.mktemp("crowd_run")
    data = tmp / "r.jsonl"
    data.write_text("".join(json.dumps(_user_raw(u, n)) + "\n" for u, n in {"1": 12, "2": 10, "3": 8}.items()))
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(run),
                 "--max_length", "400", "--crowd_context", "item", "--no-progress"]) == 0
    assert main(["predict", "--run", str(run), "--no-progress", "--max_new_tokens", "2", "--pick", "0"]) == 0
    return run, data


def test_twin_prompts_equal_predicts_and_new_items_count_the_others(crowd_run, capsys):
    from usertwin import Twin
    from usertwin.sequences.fit import prompt_hash

    run, data = crowd_run
    assert json.loads((run / "data_summary.json").read_text())["crowd"] == {
        "mode": "item", "items": 30, "with_others": 30, "test_items": 5, "test_with_others": 5}
    saved = json.loads((run / "crowd.json").read_text())
    assert sum(n for _, n, _ in saved["items"]) == 25  # train + val of 30 ratings: 10 + 8 + 7 (5 test)
    twin = Twin.load(run, records=data)
    rows = [json.loads(x) for x in (run / "predictions-test.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    for r in rows:
        assert prompt_hash(twin.prompt(r["user"], target=r["target_index"], room=2)) == r["prompt_hash"]
    text = twin.engine.tokenizer.decode(twin.prompt("1", item="Movie 3 (2000) (Drama): "))
    # movie 3, new for user 1: user 2 rated it 3.0 and 3.0, user 3 1.0 and 1.0 (every rating of the others)
    assert "Movie 3 (2000) (Drama):\nOthers: 2.0 avg, 2-4 ratings\nPredict" in text
    # a described history is all past: movie 0 counts every rating of the others (5, 5 by user 1; 2, 2 by
    # users 2 and 3), less the described user's own when the id is a known user's
    history = [{"continuation_prefix": "Movie 0 (2000) (Drama): ", "continuation": "4.0"}]
    for user, line in ((None, "Others: 3.0 avg, 5-9 ratings"), ("2", "Others: 3.5 avg, 2-4 ratings")):
        ids = twin.prompt(user=user, profile={}, history=history, item="Movie 9 (2000) (Drama): ")
        assert f"Movie 0 (2000) (Drama):\n{line}\nPredict" in twin.engine.tokenizer.decode(ids)
    alone = Twin.load(run)  # no records: the run's crowd.json (train + val only)
    described = alone.engine.tokenizer.decode(alone.prompt(profile={}, history=[], item="Movie 3 (2000) (Drama): "))
    # crowd.json holds train + val of all three users, and knows no one's own: user 1's 3.0, 3.0 count too
    assert "Movie 3 (2000) (Drama):\nOthers: 2.3 avg, 5-9 ratings\nPredict" in described


def test_inspect_shows_the_crowd_lines(crowd_run, tiny_model_dir, capsys):
    from usertwin.cli import main

    _, data = crowd_run
    assert main(["inspect", "--data", str(data), "--model", str(tiny_model_dir), "--crowd_context", "item",
                 "--split", "test", "-n", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Others: " in out
    # every one of the 30 ratings shows a line, and each of the 5 movies is in every user's train items, so every
    # item's pool holds other users' ratings of it
    assert ("crowd context (item): 30 items show other users' ratings; 100.0% have some (100.0% of the 5 test "
            "items), the rest say no ratings") in out


def test_user_statistics_on_data_without_ratings_are_refused():
    from usertwin.data.applies import Facts, settle

    with pytest.raises(UsertwinError, match="--crowd_context item_and_user would be ignored: it needs items that "
                                            "carry a rating"):
        settle(Config(crowd_context="item_and_user"), Facts(dialogue=True))
    assert settle(Config(crowd_context="item_and_user"), Facts(rated=True))[1] == []
    assert settle(Config(), Facts(dialogue=True))[1] == []  # the default shows nothing there, and says nothing


def test_a_run_from_before_crowd_context_keeps_its_prompts(crowd_run, tmp_path):
    """config.yaml of an older run has no crowd_context: it rendered without it, whatever today's default."""
    import shutil

    from usertwin.rundir import RunDir

    run, _ = crowd_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    text = (old / "config.yaml").read_text()
    assert "crowd_context: item" in text
    (old / "config.yaml").write_text("\n".join(x for x in text.splitlines() if not x.startswith("crowd_context")))
    assert RunDir(old).load_config().crowd_context == "none"
    assert RunDir(run).load_config().crowd_context == "item"


def test_a_scenario_target_counts_the_train_files_other_users(tmp_path, tiny_model_dir):
    """predict --scenario: the target (not in train.json) counts every rating of the other users there; the
    user's train items keep their statistics by the split rule."""
    from usertwin.config import Config, from_mapping
    from usertwin.eval.scenario import read_scenario, target_prompt, target_timeline
    from usertwin.twin.api import Twin

    train = [_user_raw(u, n) for u, n in {"1": 12, "2": 10, "3": 8}.items()]
    test = _user_raw("1", 1)
    test["task"]["task_behavior_collections"][0]["data"] = [
        {"continuation_prefix": "Movie 0 (2000) (Drama): ", "timestamp": 2_000_000, "metadata": {"movie_id": 0}}]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test_leaderboard.json").write_text(json.dumps([test]))
    cfg = from_mapping({"model": str(tiny_model_dir), "max_length": 1024, "crowd_context": "item"}, "test", Config())
    twin = Twin.load(cfg=cfg)
    (t,) = read_scenario(tmp_path, twin).targets
    tl = target_timeline(t, twin)
    assert tl.crowd[12] == crowd.Crowd(4, 2.0)  # movie 0: users 2 and 3 rated it 2.0 twice each, all of it
    assert {p: tl.crowd[p] for p in range(12)} == t.train.crowd  # the train items: the split rule's
    assert "Movie 0 (2000) (Drama):\nOthers: 2.0 avg, 2-4 ratings\nPredict" in \
        twin.engine.tokenizer.decode(target_prompt(t, twin, 4).ids)
