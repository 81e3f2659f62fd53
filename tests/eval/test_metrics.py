"""Metrics against hand-computed values on tiny inputs (English, Chinese, Japanese)."""

from __future__ import annotations

import json
import math
import random

import pytest
import sacrebleu

from usertwin.errors import UsertwinError
from usertwin.eval import metrics as M

# ---------------------------------------------------------------- parse_rating


@pytest.mark.parametrize("text, expected", [
    ("I'd say 4.5 stars", 4.5),
    ("4", 4.0),
    ("Rating: 3.0/5", 3.0),
    ("４．５", 4.5),           # full-width digits and point
    ("评分：４", 4.0),
    ("4.3", 4.5),             # within half a step (0.25) of 4.5
    ("4.25", 4.0),            # a tie goes to the lower value
    ("5.2", 5.0),
    ("5.3", None),            # more than half a step beyond the scale
    ("0.2", None),
    (".5", 0.5),
    ("-1", None),
    ("8/10", None),           # the first number, 8, is off the scale
    ("3-4 stars", 3.0),
    ("four", None),
    ("", None),
    (None, None),
])
def test_parse_rating(text, expected):
    assert M.parse_rating(text) == expected


def test_parse_rating_other_scale():
    stars = [1, 2, 3, 4, 5]
    assert M.parse_rating("3.4", stars) == 3.0
    assert M.parse_rating("3.6", stars) == 4.0
    assert M.parse_rating("5.5", stars) == 5.0
    assert M.parse_rating("5.6", stars) is None
    assert M.parse_rating("0", stars) is None


# ---------------------------------------------------------------- rating metrics


def test_rating_metrics_by_hand():
    m = M.rating_metrics([4.0, 3.0, 5.0, 2.0], [3.5, 3.0, None, 4.0])
    # scored: errors 0.5, 0, 2 (the None is unparseable)
    assert m["n"] == 4 and m["n_scored"] == 3 and m["unparseable"] == 1
    assert m["unparseable_share"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 4) / 3))
    assert m["mae"] == pytest.approx(2.5 / 3)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["within_0.5"] == pytest.approx(2 / 3)


def test_rating_metrics_nothing_scored():
    m = M.rating_metrics([4.0, 3.0], [None, None])
    assert m["unparseable_share"] == 1.0 and m["rmse"] is None and m["accuracy"] is None
    assert M.rating_metrics([], [])["unparseable_share"] is None
    with pytest.raises(ValueError):
        M.rating_metrics([1.0], [])


# ---------------------------------------------------------------- text metrics


def _dp_lcs(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def test_lcs_matches_textbook_table():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 25))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 25))]
        assert M.lcs_length(a, b) == _dp_lcs(a, b)
    assert M.lcs_length(list("这部电影很好看"), list("很好看的电影")) == 3


def test_rouge_l_by_hand_english():
    # units: the cat sat on the mat / the cat lay on a mat; LCS = the cat on mat = 4; P = R = 4/6
    assert M.rouge_l("The cat sat on the mat", "the cat lay on a mat", "en") == pytest.approx(2 / 3)
    # LCS of a b c d / d c b a is 1: P = R = 1/4
    assert M.rouge_l("a b c d", "d c b a", "en") == pytest.approx(0.25)
    assert M.rouge_l("", "", "en") == 1.0 and M.rouge_l("a", "", "en") == 0.0


def test_rouge_l_by_hand_chinese():
    # 这部电影很好看 (7 chars) vs 很好看的电影 (6): LCS 很好看 = 3; F = 2 * 3 / (6 + 7)
    assert M.rouge_l("这部电影很好看", "很好看的电影", "zh") == pytest.approx(6 / 13)
    # 我不喜欢 (4) vs 我很喜欢它 (5): LCS 我喜欢 = 3; F = 6 / 9; spaces are not units
    assert M.rouge_l("我不喜欢", "我 很 喜欢 它", "zh") == pytest.approx(2 / 3)


def test_text_metrics_rouge_is_mean_over_pairs():
    m = M.text_metrics(["The cat sat on the mat", "a b c d"], ["the cat lay on a mat", "d c b a"], "en")
    assert m["rouge_l"] == pytest.approx(100 * (2 / 3 + 0.25) / 2)


@pytest.mark.parametrize("language, tokenize, refs, hyps", [
    ("zh", "zh", ["这部电影很好看，演员也很棒。", "剧情有点拖沓"], ["这部电影很好看，演员一般。", "剧情拖沓"]),
    ("ja", "char", ["この映画はとても面白かった。", "退屈だった"], ["この映画は面白かった。", "とても退屈"]),
    ("en", "13a", ["The plot is slow but the acting is great.", "Loved it"],
     ["The plot is slow, the acting is fine.", "Loved it!"]),
])
def test_bleu_chrf_match_sacrebleu(language, tokenize, refs, hyps):
    m = M.text_metrics(refs, hyps, language)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert 0 < m["bleu"] < 100 and 0 < m["chrf"] < 100


def test_identical_text_scores_100():
    for lang, text in (("zh", "这部电影很好看"), ("ja", "この映画は面白い"), ("en", "a fine film with a great cast")):
        m = M.text_metrics([text, text], [text, text], lang)
        assert m["bleu"] == pytest.approx(100) and m["chrf"] == pytest.approx(100)
        assert m["rouge_l"] == pytest.approx(100) and m["length_ratio"] == pytest.approx(1)


def test_distinct_n_by_hand():
    # words a b a | a b: unigrams a b a a b -> 2 unique / 5; bigrams ab ba ab -> 2 / 3 (none across hyps)
    assert M.distinct_n(["a b a", "A b"], "en", 1) == pytest.approx(2 / 5)
    assert M.distinct_n(["a b a", "a b"], "en", 2) == pytest.approx(2 / 3)
    # characters 好好看 | 好看: 好 好 看 好 看 -> 2 / 5; 好好 好看 好看 -> 2 / 3
    assert M.distinct_n(["好好看", "好看"], "zh", 1) == pytest.approx(2 / 5)
    assert M.distinct_n(["好好看", "好看"], "zh", 2) == pytest.approx(2 / 3)
    assert M.distinct_n(["a", "b"], "en", 2) is None
    m = M.text_metrics(["x", "y"], ["a b a", "a b"], "en")
    assert m["distinct_1"] == pytest.approx(2 / 5) and m["distinct_2"] == pytest.approx(2 / 3)


def test_length_ratio_by_hand():
    # en words: hyps 3 + 2 -> mean 2.5; refs 6 + 2 -> mean 4
    m = M.text_metrics(["a b c d e f", "a b"], ["a b c", "a b"], "en")
    assert (m["hyp_len"], m["ref_len"]) == (2.5, 4.0)
    assert m["length_ratio"] == pytest.approx(0.625)
    # zh characters (spaces not counted): hyps 2 + 4 -> 3; refs 5 + 7 -> 6
    m = M.text_metrics(["很好看的片", "这部电影很好看"], ["好 看", "一般般吧"], "zh")
    assert m["length_ratio"] == pytest.approx(0.5)


def test_perplexity_weighted_by_tokens():
    assert M.perplexity([1.0, 2.0], [1, 3]) == pytest.approx(math.exp(1.75))  # (1*1 + 2*3) / 4
    assert M.perplexity([1.0, 2.0]) == pytest.approx(math.exp(1.5))
    assert M.perplexity([None, 2.0], [5, 1]) == pytest.approx(math.exp(2.0))
    assert M.perplexity([], []) is None
    m = M.text_metrics(["a"], ["a"], "en", losses=[1.0, 2.0], n_tokens=[1, 3])
    assert m["perplexity"] == pytest.approx(math.exp(1.75))


def test_text_metrics_empty():
    m = M.text_metrics([], [], "zh")
    assert m["n"] == 0 and m["bleu"] is None and "perplexity" not in m


# ---------------------------------------------------------------- buckets


def test_activity_buckets():
    assert M.activity_labels() == ["1-20", "21-50", "51-200", "201+"]
    got = {n: M.activity_bucket(n) for n in (1, 20, 21, 50, 51, 200, 201, 5000)}
    assert got == {1: "1-20", 20: "1-20", 21: "21-50", 50: "21-50", 51: "51-200", 200: "51-200",
                   201: "201+", 5000: "201+"}
    assert M.activity_bucket(None) == "unknown"
    assert M.activity_bucket(7, edges=(5,)) == "6+" and M.activity_labels((5,)) == ["1-5", "6+"]


# ---------------------------------------------------------------- rows


def _rating_row(ref, pred, user_items, **extra):
    row = {"user": "u", "target_index": 0, "split": "test", "collection": "movie_rating", "item": "M (1999): ",
           "language": "en", "reference": ref, "predictions": [pred] if pred is not None else [],
           "loss": 1.0, "n_tokens": 2, "history_len": 3, "user_items": user_items}
    row.update(extra)
    return row


def _rows():
    scale = list(M.DEFAULT_SCALE)
    return [
        _rating_row("4.0", "I'd say 3.5", 10, rating={"scale": scale, "most_likely": 4.0, "expected": 3.75},
                    pick={"k": 3, "chosen": 0, "correct": True, "scores": [-1, -2, -3, -4]}),
        _rating_row("2.0", "two", 30, rating={"scale": scale, "most_likely": 3.0, "expected": 2.5},
                    pick={"k": 1, "chosen": 1, "correct": False}),
        _rating_row("5.0", "５", 300, loss=3.0, n_tokens=6),  # no `rating`: collection name decides
        {"user": "z", "collection": "movie_review", "language": "zh", "item": "霸王别姬: ",
         "reference": "这部电影很好看", "predictions": ["很好看的电影"], "loss": 2.0, "n_tokens": 4, "user_items": 300},
        {"user": "z", "collection": "movie_review", "language": "zh", "item": "活着: ",
         "reference": "我不喜欢", "predictions": [], "loss": 0.5, "n_tokens": 4, "user_items": 300},
    ]


def test_evaluate_rows_by_hand():
    out = M.evaluate_rows(_rows())
    json.dumps(out)  # JSON-serialisable
    assert out["n_rows"] == 5 and out["activity_edges"] == [20, 50, 200]
    ov = out["overall"]
    r = ov["rating"]
    assert r["n"] == 3
    # generated: 3.5 vs 4, unparseable vs 2, 5 vs 5
    g = r["generated"]
    assert (g["n"], g["n_scored"], g["unparseable"]) == (3, 2, 1)
    assert g["rmse"] == pytest.approx(math.sqrt(0.25 / 2)) and g["mae"] == pytest.approx(0.25)
    assert g["accuracy"] == 0.5 and g["within_0.5"] == 1.0
    # most likely: 4 vs 4, 3 vs 2; expected 3.75 vs 4, 2.5 vs 2 (only rows with `rating`)
    assert r["most_likely"]["n"] == 2 and r["most_likely"]["mae"] == pytest.approx(0.5)
    assert r["expected"]["rmse"] == pytest.approx(math.sqrt((0.0625 + 0.25) / 2))
    # the expected rating is a mean, almost never a scale value: no exact accuracy (it would be ~0 whatever the
    # model); within 0.5 still says something. The most likely rating is a scale value and keeps it.
    assert "accuracy" not in r["expected"] and r["expected"]["within_0.5"] == 1.0
    assert r["most_likely"]["accuracy"] == 0.5
    # perplexity over rating rows: losses 1, 1, 3 weighted by 2, 2, 6
    assert r["perplexity"] == pytest.approx(math.exp((2 + 2 + 18) / 10))
    # text: one generated zh row, the other has no predictions (counts for perplexity only)
    t = ov["text"]["zh"]
    assert (t["n"], t["n_generated"]) == (2, 1)
    assert t["rouge_l"] == pytest.approx(100 * 6 / 13)
    assert t["perplexity"] == pytest.approx(math.exp((8 + 2) / 8))
    # perplexity of everything; pick accuracy 1/2, chance mean(1/4, 1/2)
    assert ov["all"]["perplexity"] == pytest.approx(math.exp((22 + 10) / 18))
    assert ov["all"]["pick"] == {"n": 2, "accuracy": 0.5, "chance": pytest.approx(0.375)}
    # buckets: 10 -> 1-20, 30 -> 21-50, 300 -> 201+ (rating + text)
    assert list(out["by_activity"]) == ["1-20", "21-50", "201+"]
    assert out["by_activity"]["1-20"]["rating"]["generated"]["rmse"] == pytest.approx(0.5)
    assert out["by_activity"]["21-50"]["rating"]["generated"]["unparseable_share"] == 1.0
    b = out["by_activity"]["201+"]
    assert b["rating"]["n"] == 1 and b["text"]["zh"]["n"] == 2 and "pick" not in b["all"]


def test_non_numeric_reference_is_text():
    row = _rating_row("great", "fine", 5)
    assert not M.is_rating_row(row)
    out = M.evaluate_rows([row])
    assert "rating" not in out["overall"] and out["overall"]["text"]["en"]["n"] == 1


def test_format_table_and_read_rows(tmp_path):
    table = M.format_table(M.evaluate_rows(_rows()))
    for needle in ("ratings", "all generated", "201+ generated", "text", "all [zh]", "pick the real one", "0.375"):
        assert needle in table
    named = {"global_mean": M.rating_metrics([4.0], [3.5]), "copy": M.text_metrics(["a b"], ["a b"], "en")}
    table = M.format_table(named)
    assert "global_mean" in table and "copy [en]" in table
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()) + "\n", encoding="utf-8")
    assert M.read_rows(path) == _rows()
    path.write_text('{"user": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(UsertwinError, match=r"predictions.jsonl:2"):
        M.read_rows(path)


def test_register_metric_refuses_what_the_tables_cannot_show(monkeypatch):
    monkeypatch.setattr(M, "METRICS", list(M.METRICS))
    with pytest.raises(ValueError, match="already registered"):
        M.register_metric(M.MetricSpec("text", "bleu", better="higher"))
    with pytest.raises(ValueError, match="higher-is-better"):  # the report ranks a key the same everywhere
        M.register_metric(M.MetricSpec("text", "accuracy", better="lower"))
    with pytest.raises(ValueError, match="group"):
        M.register_metric(M.MetricSpec("speed", "tokens"))
    with pytest.raises(ValueError, match="better must be"):
        M.register_metric(M.MetricSpec("text", "meteor", better="more"))
    spec = M.register_metric(M.MetricSpec("rating", "spearman", better="higher"))
    assert M.spec_of("spearman") is spec and M.ordered_keys()[-1] == "spearman"
    table = M.format_table({"global_mean": {**M.rating_metrics([4.0, 3.0], [3.5, 3.0]), "spearman": 0.25}})
    assert table.splitlines()[1].split()[-1] == "spearman" and table.splitlines()[3].split()[-1] == "0.250"


def test_rating_metrics_of_means_leave_out_exact_accuracy():
    on = M.rating_metrics([4.0, 3.0], [4.0, 3.2])
    off = M.rating_metrics([4.0, 3.0], [4.0, 3.2], on_scale=False)
    assert on["accuracy"] == 0.5 and "accuracy" not in off
    assert {k: v for k, v in on.items() if k != "accuracy"} == off
    assert [s.key for s in M.METRICS if s.on_scale] == ["accuracy"]
    # the headline metrics the report's verdict leads with, and their arrows
    assert [(s.group, s.key) for s in M.METRICS if s.headline] == [
        ("rating", "rmse"), ("rating", "mae"), ("text", "bleu"), ("text", "chrf"), ("text", "perplexity"),
        ("pick", "accuracy"), ("choice", "accuracy"), ("choice", "likert_mae")]
    assert M.spec_of("rmse").arrow == "↓" and M.spec_of("chrf").arrow == "↑" and M.spec_of("n").arrow == ""
