"""The LensKit rating baselines (damped bias, biased MF, item kNN): a prediction for every target, unseen users
and items through LensKit's fallback, reproducible from the seed, what each was fit on; and the item key
(`metadata.movie_id` where the data has one) shared by the baselines and predict's distractors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from helpers import write_records
from test_baselines import _by_user, _rating_cfg

from usertwin.cli import main
from usertwin.config import Config
from usertwin.data.records.format import Item, item_key
from usertwin.eval import baselines as B
from usertwin.eval.predict import distractors

LENSKIT = ("user_item_bias", "biased_mf", "item_knn")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """test_baselines' ratings: for the val split u4 has no fit rating (an unseen user); for the test split
    u3's M9 was never rated before (an unseen item)."""
    return B.load_split(_rating_cfg(tmp_path_factory.mktemp("tiny")))


def test_every_target_gets_a_finite_prediction_unseen_ones_from_the_damped_bias(tiny):
    timelines, splits = tiny
    for split, unseen in (("val", "u4"), ("test", "u3")):
        got = _by_user(B.predictions(timelines, splits, split))
        assert set(got) == set(B.RATING_BASELINES)
        for name in B.RATING_BASELINES:
            assert len(got[name]) == 4 and all(math.isfinite(p) for p in got[name].values()), (split, name)
        # MF and kNN cannot score an unseen user / item: LensKit's fallback gives the damped bias prediction
        for name in ("biased_mf", "item_knn"):
            assert got[name][unseen] == got["user_item_bias"][unseen], (split, name)
    model = B.fit_ratings(B.train_ratings(timelines, splits))
    bias = model.predict("user_item_bias", "nobody", ("movie_rating", "never rated"))
    assert bias == model.mu == 3.5  # no user, no item: both biases 0
    assert [model.predict(n, "nobody", ("movie_rating", "never rated")) for n in LENSKIT] == [3.5] * 3


def test_lenskit_baselines_reproduce_from_the_seed(tiny):
    timelines, splits = tiny
    train = B.train_ratings(timelines, splits, B.FIT_ON["test"])
    pairs = [(u, k) for u, k, _ in train] + [("u4", ("movie_rating", "M3 (1999) (Drama): "))]
    runs = [B.fit_ratings(train, seed=seed) for seed in (7, 7, 8)]
    preds = [{n: m.predict_many(n, pairs) for n in LENSKIT} for m in runs]
    assert preds[0] == preds[1]
    assert preds[0]["biased_mf"] != preds[2]["biased_mf"]  # the seed starts ALS's embeddings
    assert preds[0]["user_item_bias"] == preds[2]["user_item_bias"]  # nothing random in the bias model


def test_settings_reach_lenskit(tiny):
    timelines, splits = tiny
    train = B.train_ratings(timelines, splits, B.FIT_ON["test"])
    pairs = [(u, k) for u, k, _ in train]
    base = B.fit_ratings(train)
    for name, kwargs in (("user_item_bias", {"damping": 0}), ("biased_mf", {"features": 2}),
                         ("biased_mf", {"regularization": 1.0}), ("biased_mf", {"epochs": 1}),
                         ("item_knn", {"neighbours": 1})):
        assert B.fit_ratings(train, **kwargs).predict_many(name, pairs) != base.predict_many(name, pairs), kwargs


def test_fit_on_is_recorded_per_split(tmp_path):
    cfg = _rating_cfg(tmp_path)
    assert {m["fit_on"] for m in B.run_baselines(cfg, split="test").values()} == {"train + val"}
    val = B.run_baselines(cfg, split="val")
    assert set(val) == set(B.RATING_BASELINES) and {m["fit_on"] for m in val.values()} == {"train"}


def test_cli_prints_and_writes_what_each_baseline_was_fit_on(tmp_path, capsys):
    cfg = _rating_cfg(tmp_path)
    out = tmp_path / "b.json"
    assert main(["baselines", "--data", cfg.data, "--val_ratio", "0.25", "--test_ratio", "0.25", "--split", "val",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = {}
    for line in printed.splitlines():
        lines.setdefault(line.split()[0] if line.strip() else "", line)  # the metrics table comes first
    # val targets M4 5.0, M4 1.0, M1 0.5, M1 1.0 against the train mean 3.5: RMSE sqrt(23.75 / 4), MAE 9.5 / 4
    assert lines["global_mean"].split()[:5] == ["global_mean", "4", "4", "2.437", "2.375"]
    fit_lines = [line for line in printed.splitlines() if "LensKit" in line]
    assert [line.split()[:2] for line in fit_lines] == [["user_item_bias", "train"], ["biased_mf", "train"],
                                                         ["item_knn", "train"]]
    assert "BiasScorer, damping 5" in fit_lines[0] and "seed 42" in fit_lines[1]
    assert "(train: what the twin's prompts show as history for val targets)" in printed
    written = json.loads(out.read_text())
    assert list(written) == list(B.RATING_BASELINES)
    assert {m["fit_on"] for m in written.values()} == {"train"} and written["global_mean"]["n"] == 4


# ---------------------------------------------------------------- the item key

EMMA = "Emma (1996) (Drama): "


def _rated(user, movies):
    """A movie_rating record; movies: (title prefix, movie_id or None, rating)."""
    data = [{"continuation_prefix": p, "continuation": r, "timestamp": 1_000_000 + 100 * k,
             **({"metadata": {"movie_id": m}} if m is not None else {})} for k, (p, m, r) in enumerate(movies)]
    return {"user_hash": user, "user": {"id": user, "profile": {"name": user}},
            "task": {"description": "Predict.", "task_behavior_collections": [{"type": "movie_rating", "data": data}]}}


def test_item_key_is_the_movie_id_where_the_data_has_one():
    assert item_key(Item("4.0", EMMA, collection="movie_rating", metadata={"movie_id": 838})) == (
        "movie_rating", "movie_id", "838")
    assert item_key(Item("4.0", EMMA, collection="movie_rating")) == ("movie_rating", EMMA)
    # a line without a prefix is about nothing of its own: Cornell's movie_id names the film it is said in
    assert item_key(Item("Hi.", "", collection="dialogue", metadata={"movie_id": "m0"})) == ("dialogue", "")
    assert B.item_key is item_key  # one function for the baselines and the distractors


def test_two_films_with_one_title_are_two_items(tmp_path):
    records = [_rated("a", [(EMMA, 838, "5.0"), ("Heat (1995) (Action): ", 6, "4.0")]),
               _rated("b", [(EMMA, 26_000, "1.0"), (EMMA, 838, "4.0")]),
               _rated("c", [(EMMA, 26_000, "2.0"), ("Heat (1995) (Action): ", 6, "3.0")])]
    path = write_records(tmp_path / "emma.jsonl", records)
    timelines, _ = B.load_split(Config(data=str(path)))
    splits = {tl.user_id: ["train"] * len(tl.items) for tl in timelines}
    train = B.train_ratings(timelines, splits)
    assert len({k for _, k, _ in train}) == 3 and len({tl.items[0].prefix for tl in timelines}) == 1
    model = B.fit_ratings(train)
    emma, other_emma = ("movie_rating", "movie_id", "838"), ("movie_rating", "movie_id", "26000")
    assert len(model.item_ids) == 3
    assert model.item_mean[emma] == 4.5 and model.item_mean[other_emma] == 1.5  # not one Emma of mean 3.0


def test_distractors_come_from_the_same_film_not_the_same_title(tmp_path):
    """a's target is Emma 838; c rated Emma 838 too (2.0); five users rated the other Emma. Grouped by title,
    a's one distractor would be c's 2.0 one time in six; by movie id it is always c's."""
    others = [_rated(f"b{j}", [(EMMA, 26_000, r)]) for j, r in enumerate(("0.5", "1.0", "1.5", "3.0", "3.5"))]
    records = [_rated("a", [(EMMA, 838, "4.0")]), _rated("c", [(EMMA, 838, "2.0")]), *others]
    path = write_records(tmp_path / "emma.jsonl", records)
    timelines, _ = B.load_split(Config(data=str(path)))
    prep = SimpleNamespace(timelines=timelines, splits={tl.user_id: ["test"] for tl in timelines})
    for seed in range(6):
        picks = distractors(prep, "test", 1, seed)
        assert picks[("a", 0)] == ["2.0"] and picks[("c", 0)] == ["4.0"], seed
        # b0's film has four other ratings: its distractor is one of them, never a rating of Emma 838
        assert picks[("b0", 0)][0] in {"1.0", "1.5", "3.0", "3.5"}, seed


def test_a_repeated_rating_counts_once_with_its_latest_value_in_lenskit():
    """LensKit refuses repeated (user, item) interactions; the triples are in timeline order."""
    key = ("movie_rating", "A: ")
    train = [("u", key, 1.0), ("v", key, 3.0), ("u", key, 5.0)]
    model = B.fit_ratings(train, damping=0)
    assert model.item_mean[key] == 3.0  # the means count every rating
    # LensKit sees u 5.0 and v 3.0: mu 4, b_item 0, b_u 1
    assert model.predict("user_item_bias", "u", key) == 5.0
    assert model.predict("biased_mf", "v", key) == pytest.approx(3.0, abs=0.05)


def test_report_rows_name_what_a_baseline_was_fit_on():
    from usertwin.eval.report.tables import metrics_table

    table = metrics_table([], {"item_knn": {"n": 4, "rmse": 1.0, "mae": 0.5, "fit_on": "train + val"},
                               "older_file": {"n": 4, "rmse": 1.2, "mae": 0.9}})
    assert [(r["name"], r["label"]) for r in table.rows] == [("item_knn", "item_knn (fit on train + val)"),
                                                            ("older_file", "older_file")]
    assert table.columns == ["rmse", "mae"]  # fit_on is a label, not a column
