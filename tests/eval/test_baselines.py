"""Rating and text baselines: exact predictions on a tiny records file, no leakage of val/test targets,
and the real numbers on ml-latest-small."""

from __future__ import annotations

import json
import math

import pytest
from conftest import shared
from helpers import write_records

from usertwin.config import Config
from usertwin.errors import UsertwinError
from usertwin.eval import baselines as B

# 25/25 split: with 4 items a user has 2 train, 1 val, 1 test (in time order); with 2 items: 1 val, 1 test
RATINGS = {
    "u1": [("M1", "4.0"), ("M2", "2.0"), ("M4", "5.0"), ("M3", "1.0")],
    "u2": [("M1", "2.0"), ("M3", "3.0"), ("M4", "1.0"), ("M2", "4.0")],
    "u3": [("M2", "5.0"), ("M3", "5.0"), ("M1", "0.5"), ("M9", "3.0")],
    "u4": [("M1", "1.0"), ("M2", "2.0")],  # no train rating at all
}
# the test baselines are fit on train + val: u1 4 2 5, u2 2 3 1, u3 5 5 0.5, u4 1 -> mu 28.5 / 10 = 2.85;
# users 11/3, 2.0, 3.5, 1.0; items M1 (4 2 0.5 1) 1.875, M2 (2 5) 3.5, M3 (3 5) 4.0, M4 (5 1) 3.0
TEST_ITEMS = {"u1": "M3", "u2": "M2", "u3": "M9", "u4": "M2"}
REFS = {"u1": 1.0, "u2": 4.0, "u3": 3.0, "u4": 2.0}
EXPECTED = {
    "global_mean": {"u1": 2.85, "u2": 2.85, "u3": 2.85, "u4": 2.85},
    "user_mean": {"u1": 11 / 3, "u2": 2.0, "u3": 3.5, "u4": 1.0},
    "item_mean": {"u1": 4.0, "u2": 3.5, "u3": 2.85, "u4": 3.5},
}


def _record(user, collection, items, language="en"):
    data = [{"continuation_prefix": f"{p} (1999) (Drama): " if p else "", "continuation": c,
             "timestamp": 1_000_000 + 100 * k} for k, (p, c) in enumerate(items)]
    return {"user_hash": user, "user": {"id": user, "profile": {"name": user}},
            "task": {"description": "Predict.", "language": language,
                     "task_behavior_collections": [{"type": collection, "data": data}]}}


def _write(tmp_path, records, name="records.json"):
    path = write_records(tmp_path / name, records, jsonl=False)
    return Config(data=str(path), val_ratio=0.25, test_ratio=0.25)


def _rating_cfg(tmp_path, ratings=RATINGS, name="records.json"):
    return _write(tmp_path, [_record(u, "movie_rating", items) for u, items in ratings.items()], name)


def _by_user(preds):
    return {name: {t.tl.user_id: p for t, p in pairs} for name, pairs in preds.items()}


def test_rating_baselines_exact(tmp_path):
    timelines, splits = B.load_split(_rating_cfg(tmp_path))
    assert splits["u1"] == ["train", "train", "val", "test"] and splits["u4"] == ["val", "test"]
    targets = B.targets_of(timelines, splits, "test")
    assert {t.tl.user_id: t.item.prefix.split()[0] for t in targets} == TEST_ITEMS
    got = _by_user(B.predictions(timelines, splits, "test"))
    for name, expected in EXPECTED.items():
        assert got[name] == pytest.approx(expected), name
    assert set(got) == set(B.RATING_BASELINES)  # no text baselines without text targets
    train_only = B.fit_ratings(B.train_ratings(timelines, splits))
    assert train_only.user_mean["u3"] == 5.0 and "u4" not in train_only.user_mean  # u4 has no train rating
    model = B.fit_ratings(B.train_ratings(timelines, splits, B.FIT_ON["test"]))
    assert model.user_mean["u4"] == 1.0  # its validation rating
    assert got["user_item_bias"]["u4"] == pytest.approx(model.predict("user_item_bias", "u4", (
        "movie_rating", "M2 (1999) (Drama): ")))
    val = _by_user(B.predictions(timelines, splits, "val"))  # validation targets: fit on train only
    assert val["global_mean"]["u1"] == 3.5 and val["user_mean"]["u2"] == 2.5


def test_rating_metrics_of_baselines(tmp_path):
    out = B.run_baselines(_rating_cfg(tmp_path))
    # global mean 2.85 against refs 1, 4, 3, 2: errors 1.85, 1.15, 0.15, 0.85
    g = out["global_mean"]
    assert g["n"] == 4 and g["rmse"] == pytest.approx(math.sqrt((1.85**2 + 1.15**2 + 0.15**2 + 0.85**2) / 4))
    assert g["mae"] == pytest.approx(4.0 / 4) and g["within_0.5"] == pytest.approx(0.25)
    u = out["user_mean"]  # 11/3, 2.0, 3.5, 1.0 against 1, 4, 3, 2: errors 8/3, 2, 0.5, 1
    assert u["mae"] == pytest.approx((8 / 3 + 2 + 0.5 + 1) / 4) and "accuracy" not in u  # a mean: no exact accuracy
    val = B.run_baselines(_rating_cfg(tmp_path), split="val")
    assert val["global_mean"]["n"] == 4  # the val targets: M4 5.0, M4 1.0, M1 0.5, M1 1.0


def test_damped_bias_is_lenskits_formula(tmp_path):
    """user_item_bias is LensKit's BiasScorer fit on our (user, item key, rating) triples: b_i = sum(r - mu) /
    (n_i + d), then b_u = sum(r - mu - b_i) / (n_u + d); an unseen user or item has bias 0."""
    timelines, splits = B.load_split(_rating_cfg(tmp_path))
    m = B.fit_ratings(B.train_ratings(timelines, splits), damping=1)
    key = lambda p: ("movie_rating", f"{p} (1999) (Drama): ")  # noqa: E731
    # train: u1 M1 4, M2 2; u2 M1 2, M3 3; u3 M2 5, M3 5 -> mu 3.5
    # b_i with d = 1: M1 (0.5 - 1.5) / 3 = -1/3, M2 (-1.5 + 1.5) / 3 = 0, M3 (-0.5 + 1.5) / 3 = 1/3
    # b_u1 = ((4 - 3.5 + 1/3) + (2 - 3.5 - 0)) / 3 = -2/9
    assert m.mu == 3.5
    assert m.predict("user_item_bias", "u1", key("M3")) == pytest.approx(3.5 - 2 / 9 + 1 / 3, abs=1e-6)
    assert m.predict("user_item_bias", "u1", key("M1")) == pytest.approx(3.5 - 2 / 9 - 1 / 3, abs=1e-6)
    assert m.predict("user_item_bias", "nobody", key("M3")) == pytest.approx(3.5 + 1 / 3, abs=1e-6)
    assert m.predict("user_item_bias", "nobody", ("movie_rating", "new")) == 3.5
    # u3 rated M2 5, M3 5: b_u3 = ((5 - 3.5 - 0) + (5 - 3.5 - 1/3)) / 3 = 8/9
    assert m.predict("user_item_bias", "u3", key("M3")) == pytest.approx(3.5 + 8 / 9 + 1 / 3, abs=1e-6)
    assert B.fit_ratings([("u", ("c", "a"), 5.0), ("v", ("c", "b"), 2.0)], damping=0).predict(
        "user_item_bias", "u", ("c", "a")) == 5.0  # 3.5 + 1.5 + 1.5 = 6.5, clipped to 5


def _changed(ratings, splits: tuple):
    """The ratings of the given splits replaced (the split labels depend only on the number of items:
    4 items -> train, train, val, test; 2 items -> val, test)."""
    labels = {4: ("train", "train", "val", "test"), 2: ("val", "test")}
    return {u: [(p, ("0.5" if c != "0.5" else "5.0") if lab in splits else c)
                for (p, c), lab in zip(items, labels[len(items)])] for u, items in ratings.items()}


def _predicted(tmp_path, ratings, name, split):
    timelines, splits = B.load_split(_rating_cfg(tmp_path, ratings, name))
    return _by_user(B.predictions(timelines, splits, split))


def test_rating_baselines_see_what_the_twin_sees_and_never_the_targets(tmp_path):
    """Test targets: fit on train + val (the twin's history there), never on test; validation targets: on
    train only."""
    base = _predicted(tmp_path, RATINGS, "a.json", "test")
    assert _predicted(tmp_path, _changed(RATINGS, ("test",)), "b.json", "test") == base
    assert _predicted(tmp_path, _changed(RATINGS, ("val",)), "c.json", "test") != base
    val = _predicted(tmp_path, RATINGS, "d.json", "val")
    assert _predicted(tmp_path, _changed(RATINGS, ("val", "test")), "e.json", "val") == val


def test_no_train_ratings_is_a_clear_error(tmp_path):
    cfg = _rating_cfg(tmp_path, {"u4": RATINGS["u4"]})  # a validation and a test rating: nothing to fit val on
    with pytest.raises(UsertwinError, match="no ratings to fit the rating baselines on"):
        B.run_baselines(cfg, split="val")


# ---------------------------------------------------------------- text


REVIEWS = {
    "r1": ([("A", "great film"), ("B", "too long"), ("C", "loved it"), ("A", "fine")], "en"),
    "r2": ([("A", "great film"), ("A", "dull"), ("B", "too long"), ("B", "so so")], "en"),
    "r3": ([("A", "好看"), ("B", "太长了"), ("C", "一般"), ("D", "很好看")], "zh"),
}


def _text_cfg(tmp_path, reviews=REVIEWS, name="reviews.json"):
    return _write(tmp_path, [_record(u, "movie_review", items, lang) for u, (items, lang) in reviews.items()], name)


def test_text_baselines_exact(tmp_path):
    timelines, splits = B.load_split(_text_cfg(tmp_path))
    got = _by_user(B.predictions(timelines, splits, "test"))
    assert set(got) == set(B.TEXT_BASELINES)
    # the latest earlier item (the val one here: the user's own history)
    assert got["copy_last_item"] == {"r1": "loved it", "r2": "too long", "r3": "一般"}
    # train continuations of item A: great film x2, 好看 x1; of B: too long x2, 太长了; D never in train
    assert got["item_most_frequent"] == {"r1": "great film", "r2": "too long", "r3": "great film"}
    out = B.run_baselines(_text_cfg(tmp_path))
    assert set(out) == {"copy_last_item [en]", "copy_last_item [zh]", "item_most_frequent [en]",
                        "item_most_frequent [zh]"}
    zh = out["copy_last_item [zh]"]
    assert zh["n"] == 1 and zh["language"] == "zh"
    assert zh["rouge_l"] == 0.0 and zh["length_ratio"] == pytest.approx(2 / 3)  # 一般 vs 很好看
    assert out["copy_last_item [en]"]["rouge_l"] == 0.0


def test_text_baseline_ignores_the_scored_continuations(tmp_path):
    runs = []
    for name, first_changed in (("a.json", 4), ("b.json", 3), ("c.json", 2)):  # nothing / test / val and test
        reviews = {u: (items[:first_changed] + [(p, c + " changed") for p, c in items[first_changed:]], lang)
                   for u, (items, lang) in REVIEWS.items()}
        timelines, splits = B.load_split(_text_cfg(tmp_path, reviews, name))
        runs.append(_by_user(B.predictions(timelines, splits, "test"))["item_most_frequent"])
    assert runs[0] == runs[1]  # test continuations are never seen
    # validation continuations are (the twin's history holds them): r1's validation review of C
    by_item, _ = B.most_frequent_continuations(timelines, splits, B.FIT_ON["test"])
    train_only, _ = B.most_frequent_continuations(timelines, splits)
    key_c = ("movie_review", "C (1999) (Drama): ")
    assert by_item[key_c] == "loved it changed" and key_c not in train_only


def test_copy_last_item_same_collection_and_first_item(tmp_path):
    rec = _record("m", "movie_rating", [("A", "4.0"), ("B", "3.0")])
    rec["task"]["task_behavior_collections"].append(
        {"type": "movie_review", "data": [{"continuation_prefix": "A: ", "continuation": "nice", "timestamp": 50},
                                          {"continuation_prefix": "B: ", "continuation": "meh",
                                           "timestamp": 1_000_150}]})
    timelines, splits = B.load_split(_write(tmp_path, [rec]))
    tl = timelines[0]
    targets = {t.position: t for t in B.targets_of(timelines, {tl.user_id: ["train"] * 4}, "train")}
    # time order: review "nice" (50), rating 4.0, rating 3.0, review "meh"
    assert [it.continuation for it in tl.items] == ["nice", "4.0", "3.0", "meh"]
    assert B.copy_last_item(targets[3]) == "nice" and B.copy_last_item(targets[0]) == ""


def test_baseline_rows(tmp_path):
    rows = list(B.baseline_rows(_rating_cfg(tmp_path)))
    assert len(rows) == 4 * len(B.RATING_BASELINES)
    r = next(r for r in rows if r["baseline"] == "user_mean" and r["user"] == "u2")
    assert r["predictions"] == ["2.0000"] and r["reference"] == "4.0" and r["target_index"] == 3  # u2: 2, 3, 1
    assert r["split"] == "test" and r["user_items"] == 4 and r["collection"] == "movie_rating"
    json.dumps(rows)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    from usertwin.data.convert import convert_to_file

    raw = shared("movielens", "ml-latest-small")
    out = tmp_path_factory.mktemp("ml") / "records.jsonl"
    convert_to_file("movielens", raw, out, progress=False)
    return B.load_split(Config(data=str(out)))


def test_movielens_baselines(movielens):
    timelines, splits = movielens
    out = B.score(B.predictions(timelines, splits, "test"))
    assert {m["n"] for m in out.values()} == {15_125}
    rmse = {k: round(m["rmse"], 4) for k, m in out.items()}
    mae = {k: round(m["mae"], 4) for k, m in out.items()}
    # the numbers recorded in usertwin/eval/baselines.py (fit on train + val)
    assert rmse == {"global_mean": 1.0673, "user_mean": 0.9614, "item_mean": 1.0187, "user_item_bias": 0.892,
                    "biased_mf": 0.8779, "item_knn": 0.889}
    assert mae == {"global_mean": 0.8363, "user_mean": 0.7477, "item_mean": 0.7851, "user_item_bias": 0.6888,
                   "biased_mf": 0.6739, "item_knn": 0.6795}


def test_movielens_no_leak(movielens):
    timelines, splits = movielens
    means = lambda m: (m.mu, m.user_mean, m.item_mean, m.item_ids)  # noqa: E731
    before_fit = means(B.fit_ratings(B.train_ratings(timelines, splits, B.FIT_ON["test"])))
    before = B.predictions(timelines, splits, "test")
    before = {n: [p for _, p in pairs] for n, pairs in before.items()}
    saved = []
    try:
        for tl in timelines:
            for item, label in zip(tl.items, splits[tl.user_id]):
                if label == "test":
                    saved.append((item, item.continuation))
                    item.continuation = "5.0" if item.continuation != "5.0" else "0.5"
        after_fit = means(B.fit_ratings(B.train_ratings(timelines, splits, B.FIT_ON["test"])))
        after = {n: [p for _, p in pairs] for n, pairs in B.predictions(timelines, splits, "test").items()}
    finally:
        for item, text in saved:
            item.continuation = text
    assert len(saved) == 15_125
    assert after_fit == before_fit
    assert after == before
