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
# train ratings: u1 4 2, u2 2 3, u3 5 5 -> mu 3.5; users 3.0, 2.5, 5.0; items M1 3.0, M2 3.5, M3 4.0
TEST_ITEMS = {"u1": "M3", "u2": "M2", "u3": "M9", "u4": "M2"}
REFS = {"u1": 1.0, "u2": 4.0, "u3": 3.0, "u4": 2.0}
EXPECTED = {
    "global_mean": {"u1": 3.5, "u2": 3.5, "u3": 3.5, "u4": 3.5},
    "user_mean": {"u1": 3.0, "u2": 2.5, "u3": 5.0, "u4": 3.5},
    "item_mean": {"u1": 4.0, "u2": 3.5, "u3": 3.5, "u4": 3.5},
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
    model = B.fit_ratings(B.train_ratings(timelines, splits))
    assert model.user_mean["u3"] == 5.0  # u3's only train ratings are 5 and 5
    assert "u4" not in model.user_mean and got["user_item_bias"]["u4"] == pytest.approx(3.5 + model.item_bias[
        ("movie_rating", "M2 (1999) (Drama): ")])


def test_rating_metrics_of_baselines(tmp_path):
    out = B.run_baselines(_rating_cfg(tmp_path))
    # global mean 3.5 against refs 1, 4, 3, 2: errors 2.5, 0.5, 0.5, 1.5
    g = out["global_mean"]
    assert g["n"] == 4 and g["rmse"] == pytest.approx(math.sqrt((6.25 + 0.25 + 0.25 + 2.25) / 4))
    assert g["mae"] == pytest.approx(5 / 4) and g["within_0.5"] == pytest.approx(0.5)
    u = out["user_mean"]  # 3.0, 2.5, 5.0, 3.5 against 1, 4, 3, 2: errors 2, 1.5, 2, 1.5
    assert u["mae"] == pytest.approx(7 / 4) and u["accuracy"] == 0.0
    val = B.run_baselines(_rating_cfg(tmp_path), split="val")
    assert val["global_mean"]["n"] == 4  # the val targets: M4 5.0, M4 1.0, M1 0.5, M1 1.0


def test_bias_model_one_round_by_hand(tmp_path):
    timelines, splits = B.load_split(_rating_cfg(tmp_path))
    m = B.fit_ratings(B.train_ratings(timelines, splits), lambda_item=1, lambda_user=1, rounds=1)
    key = lambda p: ("movie_rating", f"{p} (1999) (Drama): ")  # noqa: E731
    # b_i = sum(r - mu) / (1 + n_i) with b_u = 0: M1 (0.5 - 1.5) / 3, M2 (-1.5 + 1.5) / 3, M3 (-0.5 + 1.5) / 3
    assert m.mu == 3.5
    assert [m.item_bias[key(p)] for p in ("M1", "M2", "M3")] == pytest.approx([-1 / 3, 0, 1 / 3])
    # b_u1 = ((4 - 3.5 + 1/3) + (2 - 3.5 - 0)) / 3 = -2/9
    assert m.user_bias["u1"] == pytest.approx(-2 / 9)
    assert m.predict("user_item_bias", "u1", key("M3")) == pytest.approx(3.5 - 2 / 9 + 1 / 3)
    assert m.predict("user_item_bias", "nobody", ("movie_rating", "new")) == 3.5
    # clipped to the range of train ratings (2 .. 5)
    m.user_bias["u3"] = 10.0
    assert m.predict("user_item_bias", "u3", key("M3")) == 5.0


def _changed(ratings):
    """Every val/test rating replaced (the split labels depend only on the number of items)."""
    out = {}
    for u, items in ratings.items():
        n_train = 2 if len(items) == 4 else 0
        out[u] = items[:n_train] + [(p, "0.5" if c != "0.5" else "5.0") for p, c in items[n_train:]]
    return out


def test_rating_baselines_never_see_val_or_test(tmp_path):
    fits, preds = [], []
    for name, ratings in (("a.json", RATINGS), ("b.json", _changed(RATINGS))):
        timelines, splits = B.load_split(_rating_cfg(tmp_path, ratings, name))
        fits.append(B.fit_ratings(B.train_ratings(timelines, splits)))
        preds.append(_by_user(B.predictions(timelines, splits, "test")))
    assert fits[0] == fits[1]
    assert preds[0] == preds[1]


def test_no_train_ratings_is_a_clear_error(tmp_path):
    cfg = _rating_cfg(tmp_path, {"u4": RATINGS["u4"]})
    with pytest.raises(UsertwinError, match="no train ratings"):
        B.run_baselines(cfg)


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


def test_text_baseline_ignores_val_test_continuations(tmp_path):
    changed = {u: (items[:2] + [(p, c + " changed") for p, c in items[2:]], lang)
               for u, (items, lang) in REVIEWS.items()}
    runs = []
    for name, reviews in (("a.json", REVIEWS), ("b.json", changed)):
        timelines, splits = B.load_split(_text_cfg(tmp_path, reviews, name))
        runs.append(_by_user(B.predictions(timelines, splits, "test"))["item_most_frequent"])
    assert runs[0] == runs[1]


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
    assert r["predictions"] == ["2.5000"] and r["reference"] == "4.0" and r["target_index"] == 3
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
    # the numbers recorded in usertwin/baselines.py
    assert rmse == {"global_mean": 1.0680, "user_mean": 0.9799, "item_mean": 1.0291, "user_item_bias": 0.9141}
    assert mae == {"global_mean": 0.8371, "user_mean": 0.7610, "item_mean": 0.7929, "user_item_bias": 0.7089}
    assert out["user_item_bias"]["rmse"] <= out["global_mean"]["rmse"]


def test_movielens_no_leak(movielens):
    timelines, splits = movielens
    before_fit = B.fit_ratings(B.train_ratings(timelines, splits))
    before = B.predictions(timelines, splits, "test")
    before = {n: [p for _, p in pairs] for n, pairs in before.items()}
    saved = []
    try:
        for tl in timelines:
            for item, label in zip(tl.items, splits[tl.user_id]):
                if label != "train":
                    saved.append((item, item.continuation))
                    item.continuation = "5.0" if item.continuation != "5.0" else "0.5"
        after_fit = B.fit_ratings(B.train_ratings(timelines, splits))
        after = {n: [p for _, p in pairs] for n, pairs in B.predictions(timelines, splits, "test").items()}
    finally:
        for item, text in saved:
            item.continuation = text
    assert len(saved) == 30_250
    assert after_fit == before_fit
    assert after == before
