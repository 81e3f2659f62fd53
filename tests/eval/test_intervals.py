"""95% intervals by resampling users (usertwin.eval.intervals) and `usertwin evaluate --against`."""

from __future__ import annotations

import json
import math

import pytest

from usertwin.cli import main
from usertwin.eval import intervals as I


def row(user, index, reference, expected, correct=None, split="test", item=None):
    r = {"user": user, "target_index": index, "split": split, "item": item or f"movie {index}",
         "collection": "movie_rating", "reference": str(reference), "rating": {"expected": expected}}
    if correct is not None:
        r["pick"] = {"k": 3, "chosen": 0 if correct else 1, "correct": correct}
    return r


def test_a_constant_error_has_an_interval_of_one_point():
    rows = [row(u, i, 4.0, 4.5, correct=True) for u in "abc" for i in range(5)]
    iv = I.intervals(rows)
    assert iv["users"] == 3 and iv["resamples"] == I.RESAMPLES and iv["few_users"]
    assert iv["rating_expected_rmse"] == {"value": pytest.approx(0.5), "ci95": pytest.approx([0.5, 0.5])}
    assert iv["rating_expected_mae"]["ci95"] == pytest.approx([0.5, 0.5])
    assert iv["pick_accuracy"] == {"value": 1.0, "ci95": [1.0, 1.0]}


def test_users_are_resampled_not_targets():
    # user a is always right, user b always off by 2: a resample draws {a, a}, {a, b} or {b, b}, so the RMSE's
    # interval spans 0 to 2. Resampling the 200 targets as independent would give a narrow band around sqrt(2).
    rows = [row("a", i, 3.0, 3.0) for i in range(100)] + [row("b", i, 3.0, 5.0) for i in range(100)]
    iv = I.intervals(rows)
    assert iv["rating_expected_rmse"]["value"] == pytest.approx(math.sqrt(2))
    assert iv["rating_expected_rmse"]["ci95"] == pytest.approx([0.0, 2.0])
    assert "pick_accuracy" not in iv  # no row has a pick


def test_the_same_rows_give_the_same_interval_and_one_user_gives_none():
    rows = [row(u, i, (i % 5) + 1, 3.0 + 0.1 * i * (n + 1), correct=(i + n) % 3 == 0)
            for n, u in enumerate("abcdef") for i in range(7)]
    first, again, reordered = I.intervals(rows), I.intervals(rows), I.intervals(list(reversed(rows)))
    assert first == again
    lo, hi = first["rating_expected_rmse"]["ci95"]
    assert lo < first["rating_expected_rmse"]["value"] < hi  # users differ: a real spread
    for m in I.METRICS:
        assert reordered[m]["ci95"] == pytest.approx(first[m]["ci95"])  # the seed, not the row order, decides
    assert I.intervals([r for r in rows if r["user"] == "a"]) is None
    assert I.format_intervals(None) == "95% intervals: need targets of at least two users"


def test_paired_difference_on_the_targets_both_files_hold():
    users = [str(u) for u in range(25)]
    a = [row(u, i, 4.0, 4.0 + 0.1 * (int(u) % 3), correct=True) for u in users for i in range(4)]
    b = [row(u, i, 4.0, 5.0, correct=False) for u in users for i in range(4)]
    b.append(row("x", 0, 4.0, 1.0))  # a target only the second file holds
    cmp = I.paired(a, b)
    assert (cmp["targets"], cmp["only_a"], cmp["only_b"], cmp["users"], cmp["few_users"]) == (100, 0, 1, 25, False)
    rmse = cmp["rating_expected_rmse"]
    assert rmse["b"] == pytest.approx(1.0) and rmse["difference"] == pytest.approx(rmse["a"] - 1.0)
    assert rmse["ci95"][1] < 0 and I.verdict("rating_expected_rmse", rmse) == "lower"
    assert cmp["pick_accuracy"]["difference"] == 1.0 and I.verdict("pick_accuracy", cmp["pick_accuracy"]) == "higher"
    same = I.paired(a, a)["rating_expected_rmse"]
    assert same["ci95"] == [0.0, 0.0] and I.verdict("rating_expected_rmse", same) == "the same"


def test_paired_noise_is_not_called_a_difference():
    # the two files trade errors user by user: on average equal, so the interval must straddle 0
    users = [str(u) for u in range(30)]
    a = [row(u, 0, 3.0, 3.0 + (1.0 if int(u) % 2 else 0.0)) for u in users]
    b = [row(u, 0, 3.0, 3.0 + (0.0 if int(u) % 2 else 1.0)) for u in users]
    e = I.paired(a, b)["rating_expected_rmse"]
    assert e["difference"] == pytest.approx(0.0)
    assert e["ci95"][0] < 0 < e["ci95"][1] and I.verdict("rating_expected_rmse", e) == "not separable from noise"


def test_a_metric_is_compared_only_where_both_rows_have_it():
    a = [row(u, i, 4.0, 4.0, correct=True) for u in "ab" for i in range(3)]
    b = [row(u, i, 4.0, 3.0) for u in "ab" for i in range(3)]  # no picks
    cmp = I.paired(a, b)
    assert "pick_accuracy" not in cmp and cmp["rating_expected_rmse"]["difference"] == pytest.approx(-1.0)


def test_evaluate_prints_intervals_and_compares_against_another_file(tmp_path, capsys):
    users = [str(u) for u in range(21)]
    a = [row(u, i, 4.0, 4.2, correct=True) for u in users for i in range(3)]
    b = [row(u, i, 4.0, 4.9, correct=i == 0) for u in users for i in range(3)]
    pa, pb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pa.write_text("".join(json.dumps(r) + "\n" for r in a))
    pb.write_text("".join(json.dumps(r) + "\n" for r in b))
    assert main(["evaluate", str(pa), "-o", str(tmp_path / "m.json"), "--against", str(pb)]) == 0
    out = capsys.readouterr().out
    assert "95% intervals (1,000 resamples of the 21 users" in out and "coarse" not in out
    assert "expected-rating RMSE: 0.200 [0.200, 0.200]" in out
    assert f"{pa} minus {pb} on the 63 targets both hold" in out
    assert "expected-rating RMSE: 0.200 vs 0.900, difference -0.700 [-0.700, -0.700]: lower" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["intervals"]["users"] == 21 and m["against"]["file"] == str(pb)
    assert m["against"]["pick_accuracy"]["difference"] == pytest.approx(2 / 3)


def test_evaluate_against_a_missing_file_names_it(tmp_path, capsys):
    pa = tmp_path / "a.jsonl"
    pa.write_text(json.dumps(row("a", 0, 4.0, 4.0)) + "\n")
    assert main(["evaluate", str(pa), "--against", str(tmp_path / "nope.jsonl")]) != 0
    assert f"{tmp_path / 'nope.jsonl'} does not exist" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    assert main(["evaluate", str(pa), "--against", str(run)]) != 0
    assert f"run: usertwin predict --run {run} --split test" in capsys.readouterr().err


def test_the_report_keeps_intervals_out_of_its_metric_columns():
    from usertwin.eval.report.tables import flatten_metrics

    flat = flatten_metrics({"overall": {"rating": {"expected": {"rmse": 0.8}}},
                            "intervals": {"users": 3, "rating_expected_rmse": {"value": 0.8, "ci95": [0.7, 0.9]}},
                            "against": {"targets": 4}})
    assert flat == {"rating.expected.rmse": 0.8}


def text_row(user, index, reference, hypothesis, language="en"):
    return {"user": user, "target_index": index, "split": "test", "item": f"movie {index}", "collection": "review",
            "language": language, "reference": reference, "predictions": [hypothesis]}


REVIEWS = ["the plot was thin but the actors carried it", "a slow start and a wonderful ending",
           "too long, and the music was too loud", "I laughed all the way through"]


def test_text_intervals_are_corpus_scores_of_the_resampled_users():
    from usertwin.eval.metrics import evaluate_rows

    rows = [text_row(f"u{u}", i, REVIEWS[(u + i) % 4], REVIEWS[(u * i) % 4]) for u in range(6) for i in range(4)]
    iv = I.intervals(rows)
    corpus = evaluate_rows(rows)["overall"]["text"]["en"]
    # the point value is evaluate's corpus chrF / BLEU of the whole file, and the interval holds it
    for name in ("chrf", "bleu"):
        entry = iv[f"text_en_{name}"]
        assert entry["value"] == pytest.approx(corpus[name])
        assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
    assert iv["labels"]["text_en_chrf"] == "chrF [en]" and "rating_expected_rmse" not in iv


def test_paired_chrf_between_a_perfect_and_a_wrong_writer():
    perfect = [text_row(f"u{u}", i, REVIEWS[i], REVIEWS[i], "zh") for u in range(5) for i in range(4)]
    wrong = [text_row(f"u{u}", i, REVIEWS[i], "zzz qqq", "zh") for u in range(5) for i in range(4)]
    cmp = I.paired(perfect, wrong)
    chrf = cmp["text_zh_chrf"]
    assert chrf["a"] == pytest.approx(100.0) and chrf["ci95"][0] > 0
    assert I.verdict("text_zh_chrf", chrf) == "higher"
    assert "chrF [zh]: 100.000 vs" in I.format_paired(cmp, "perfect", "wrong")
