"""Choice items (usertwin.data.choices): options parsed from questions, Likert orders inferred, the
lovink-questionnaire converter, option distributions from one forward, choice metrics and baselines."""

from __future__ import annotations

import json
import math

import pytest
from helpers import FIXTURES

from usertwin.cli import main
from usertwin.data import records
from usertwin.data.choices import Choice, choice_of, distribution, infer_likert, likert_scales, parse_options
from usertwin.data.records import Item
from usertwin.data.timeline import assign_splits, build_timelines
from usertwin.errors import UsertwinError
from usertwin.eval import baselines, metrics

RAW = FIXTURES / "convert" / "lovink_questionnaire.json"
RUN = "安全的生活环境对我来说很重要。我避免任何会危及自身安全的事情"
SEVEN = ["完全不同意", "不同意", "有点不同意", "不确定", "有点同意", "同意", "完全同意"]
RACE = ["继续你的参赛，但是抽出时间陪伴与照顾TA", "按计划参赛，赛后再照顾TA", "让TA自行处理伤情，你专注自己的训练",
        "两人都不参加，把时间留给休息"]


def _q(question: str, answer: str, **extra) -> Item:
    return Item(continuation=answer, context=[{"source": "questionnaire", "content": question}],
                collection="questionnaire", metadata=extra)


# ---------------------------------------------------------------- parsing


def test_options_parsed_exactly_in_every_form():
    lines = "你会怎么安排？\nA. " + "\nB. ".join(RACE[:2]) + "\nC. " + RACE[2] + "\nD. " + RACE[3]
    assert [(o.letter, o.text, o.line) for o in parse_options(lines)] == [
        ("A", RACE[0], "A. " + RACE[0]), ("B", RACE[1], "B. " + RACE[1]),
        ("C", RACE[2], "C. " + RACE[2]), ("D", RACE[3], "D. " + RACE[3])]
    assert [(o.letter, o.text) for o in parse_options("你更喜欢哪种周末？A、在家看书 B、出门爬山 C、和朋友聚会")] == [
        ("A", "在家看书"), ("B", "出门爬山"), ("C", "和朋友聚会")]
    assert [(o.text, o.line) for o in parse_options("Which one? (A) tea; (B) coffee")] == [
        ("tea", "(A) tea"), ("coffee", "(B) coffee")]
    # a letter out of sequence stays in the text before it; one option or none is no list
    assert [o.text for o in parse_options("Pick:\nA) Plan I. rest\nB) Plan II")] == ["Plan I. rest", "Plan II"]
    assert parse_options("A. only one option") == []
    assert parse_options(RUN) == []
    assert parse_options("I like the U.S.A. a lot") == []


def test_likert_order_inferred_from_the_answers():
    assert infer_likert(["同意", "有点同意", "亲密关系复合", "不同意"]) == tuple(SEVEN)
    assert infer_likert(["同意", "不同意", "同意"]) == ("非常不同意", "不同意", "中立", "同意", "非常同意")
    assert infer_likert(["Agree", "strongly disagree"]) == (
        "strongly disagree", "disagree", "neutral", "Agree", "strongly agree")
    assert infer_likert(["同意", "同意", "好的"]) is None  # one level is no scale
    assert infer_likert(["yes", "no"]) is None


def test_choice_of_each_kind_and_free_text_stays_text():
    race = "你会怎么安排？\n" + "\n".join(f"{k}. {t}" for k, t in zip("ABCD", RACE))
    assert choice_of(_q(race, RACE[1])) == Choice(tuple(RACE), 1)
    assert choice_of(_q(race, "C")) == Choice(("A", "B", "C", "D"), 2)
    assert choice_of(_q(race, "(D)")) == Choice(("A", "B", "C", "D"), 3)
    assert choice_of(_q(race, "B. " + RACE[1])) == Choice(tuple("ABCD"[i] + ". " + RACE[i] for i in range(4)), 1)
    assert choice_of(_q(race, "都不选")) is None
    assert choice_of(_q(race, "x"), answer=None) == Choice(tuple(RACE), None)  # a new question: the texts
    scales = {"questionnaire": SEVEN}
    assert choice_of(_q(RUN, "有点同意"), scales) == Choice(tuple(SEVEN), 4, likert=True)
    assert choice_of(_q("你的人生电影会有什么反转？", "亲密关系复合"), scales) is None
    declared = {"likert": ["no", "maybe", "yes"], "choices": ["红", "蓝"]}
    assert choice_of(_q("Do you?", "maybe"), scales, declared) == Choice(("no", "maybe", "yes"), 1, likert=True)
    assert choice_of(_q("颜色？", "蓝"), scales, declared) == Choice(("红", "蓝"), 1)
    assert choice_of(_q("颜色？", "绿", choices=["绿", "黄"])) == Choice(("绿", "黄"), 0)


def test_distribution_sums_to_one_and_gives_the_expected_level():
    d = distribution(Choice(("a", "b", "c"), 2, likert=True), [math.log(1), math.log(2), math.log(1)])
    assert d == {"options": ["a", "b", "c"], "probs": [0.25, 0.5, 0.25], "chosen": 1, "answer": 2,
                 "correct": False, "likert": True, "expected_level": 2.0}


# ---------------------------------------------------------------- records and the converter


def test_convert_lovink_questionnaire_from_the_cli(tmp_path, capsys):
    out = tmp_path / "q.jsonl"
    assert main(["convert", "lovink-questionnaire", str(RAW), "-o", str(out)]) == 0
    assert capsys.readouterr().out == (
        f"lovink-questionnaire: 4 users, 32 items, no timestamps -> {out}\n"
        "note: the questionnaire has no timestamps: each user's answers keep file order, which is their time "
        "order (the time split's test targets are each user's last answers)\n")
    loaded = records.load(out)
    timelines, _ = build_timelines(loaded.records)
    assert [tl.user_id for tl in timelines] == ["user_1001", "user_1002", "user_1003", "user_1004"]
    assert {it.collection for tl in timelines for it in tl.items} == {"questionnaire"}
    assert [it.metadata["order"] for it in timelines[0].items] == list(range(8))
    assert likert_scales(timelines) == {"questionnaire": SEVEN}
    kinds = [None if c is None else ("likert" if c.likert else len(c.options))
             for c in (choice_of(it, likert_scales(timelines)) for it in timelines[0].items)]
    assert kinds == ["likert", None, "likert", 4, 3, "likert", 3, "likert"]


def test_declared_likert_kept_and_checked(tmp_path):
    rec = {"user_hash": "u", "task": {"description": "", "likert": ["no", "yes"], "task_behavior_collections": [
        {"type": "questionnaire", "data": [{"continuation": "yes", "choices": ["yes"]}]}]}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps([rec]))
    with pytest.raises(UsertwinError) as err:
        records.load(path)
    assert "record 0" in str(err.value) and "task.task_behavior_collections[0].data[0].choices" in str(err.value)
    assert "must be a list of two or more non-empty strings" in str(err.value)
    rec["task"]["task_behavior_collections"][0]["data"][0]["choices"] = ["yes", "no"]
    rec["task"]["likert"] = ["no", "no"]
    path.write_text(json.dumps([rec]))
    with pytest.raises(UsertwinError, match=r"task\.likert: lists an answer twice"):
        records.load(path)
    rec["task"]["likert"] = ["no", "yes"]
    path.write_text(json.dumps([rec]))
    got = records.load(path).records[0]
    assert got.choice_sets == {"likert": ["no", "yes"]}
    assert records.record_to_raw(got)["task"]["likert"] == ["no", "yes"]


# ---------------------------------------------------------------- predict, evaluate, baselines


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("lq") / "q.jsonl"
    assert main(["convert", "lovink-questionnaire", str(RAW), "-o", str(out)]) == 0
    return out


def test_option_probabilities_from_one_forward_sum_to_one(converted, tiny_model_dir, tmp_path):
    out = tmp_path / "val.jsonl"
    assert main(["predict", "--model", str(tiny_model_dir), "--data", str(converted), "--max_length", "2048",
                 "--split", "val", "-o", str(out), "--no-generate", "--no-progress",
                 "--cache_dir", str(tmp_path / "c")]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["user"], r["reference"]) for r in rows] == [
        ("user_1001", "A"), ("user_1002", "A"), ("user_1003", "B"), ("user_1004", "A")]
    for r in rows:
        c = r["choice"]
        assert c["options"] == ["A", "B", "C"] and c["answer"] == "ABC".index(r["reference"])
        assert abs(sum(c["probs"]) - 1) < 1e-5 and c["likert"] is False
        assert c["chosen"] == max(range(3), key=c["probs"].__getitem__)
    # the same probabilities as each option scored alone after the prompt (Engine.score, one prompt)
    from usertwin.config import from_mapping
    from usertwin.model.load import load_model
    from usertwin.sequences.prepare import prepare
    from usertwin.text.tokens import load_tokenizer
    from usertwin.twin.engine import Engine

    cfg = from_mapping({"model": str(tiny_model_dir), "data": str(converted), "max_length": 2048,
                        "cache_dir": str(tmp_path / "c")}, "test")
    tok = load_tokenizer(cfg.model)
    engine = Engine(cfg, load_model(cfg.model, "float32"), tok)
    prep = prepare(cfg, tok, progress=False)
    tl = prep.timelines[2]
    pos = prep.splits[tl.user_id].index("val")
    prompt = engine.target_prompt(tl, pos, 0, prep.lengths[tl.user_id]).ids
    alone = [engine.score(prompt, [engine.continuation_ids(o)])[0][0] for o in "ABC"]
    z = sum(math.exp(s) for s in alone)
    assert rows[2]["choice"]["probs"] == pytest.approx([math.exp(s) / z for s in alone], abs=1e-5)
    together = engine.choice_distributions([prompt], [Choice(("A", "B", "C"), 1)])[0]
    assert together["probs"] == pytest.approx(rows[2]["choice"]["probs"], abs=1e-5)


def _row(user, options, chosen, answer, likert, expected=None, items=5):
    c = {"options": options, "probs": [1 / len(options)] * len(options), "chosen": chosen, "answer": answer,
         "likert": likert}
    if expected is not None:
        c["expected_level"] = expected
    return {"user": user, "target_index": 0, "collection": "questionnaire", "language": "zh", "reference": "x",
            "predictions": [], "loss": 1.0, "n_tokens": 2, "user_items": items, "choice": c}


def test_choice_accuracy_and_likert_mae_on_a_hand_made_file(tmp_path, capsys):
    rows = [_row("a", SEVEN, 5, 5, True, 5.5), _row("b", SEVEN, 4, 1, True, 3.0),
            _row("c", ["A", "B", "C", "D"], 2, 0, False), _row("d", ["x", "y"], 1, 1, False),
            {"user": "e", "target_index": 0, "collection": "questionnaire", "language": "zh",
             "reference": "亲密关系复合", "predictions": ["复合"], "loss": 2.0, "n_tokens": 3, "user_items": 5}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert main(["evaluate", str(path), "-o", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    got = json.loads((tmp_path / "m.json").read_text())
    m = metrics.evaluate_rows(rows)["overall"]  # levels 6 and 2: expected 5.5 and 3.0 miss by 0.5 and 1.0
    assert m["choice"] == {"n": 4, "accuracy": 0.5, "chance": (2 / 7 + 1 / 4 + 1 / 2) / 4, "likert_n": 2,
                           "likert_mae": 1.5, "likert_mae_expected": 0.75}
    assert m["text"]["zh"]["n"] == 1  # only the free-text answer is text
    assert "choice items (Likert levels, listed options)" in out
    assert got["overall"]["choice"] == m["choice"]


def test_choice_baselines_exact_values(converted, capsys):
    timelines, _ = build_timelines(records.load(converted).records)
    from usertwin.config import from_mapping

    splits = assign_splits(timelines, from_mapping({"data": str(converted)}, "test"))
    assert splits["user_1001"] == ["train"] * 6 + ["val", "test"]
    test = baselines.choice_baselines(timelines, splits, "test")
    # test targets: the last Likert question, answered 同意, 有点同意, 同意, 有点不同意; never asked before, so
    # question_most_frequent falls back to the collection's most frequent level (同意, 5 of 12 fit levels)
    assert test["question_most_frequent"] == {"n": 4, "accuracy": 0.5, "chance": 1 / 7, "likert_n": 4,
                                              "likert_mae": 1.0, "likert_mae_expected": None}
    # each user's most frequent level: 有点同意, 同意, 不同意 (tie: the lower level), 不同意 (tie)
    assert test["user_most_frequent_level"] == {"n": 4, "accuracy": 0.0, "chance": 1 / 7, "likert_n": 4,
                                                "likert_mae": 1.75, "likert_mae_expected": None}
    val = baselines.choice_baselines(timelines, splits, "val")
    assert val == {"question_most_frequent": {"n": 4, "accuracy": 0.75, "chance": 1 / 3, "likert_n": 0,
                                              "likert_mae": None, "likert_mae_expected": None}}
    assert main(["baselines", "--data", str(converted)]) == 0
    out = capsys.readouterr().out
    assert "question_most_frequent    4         4     0.500   0.143       1.000" in out
    assert "text\n" not in out  # every test target is a choice item
