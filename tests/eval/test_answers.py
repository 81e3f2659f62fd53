"""A generated text made into a leaderboard answer (usertwin.eval.answers), as the research scripts cleaned theirs."""

from __future__ import annotations

import pytest

from usertwin.eval.answers import clean, whole_characters

FIVE = ["1", "2", "3", "4", "5"]
MOVIELENS = [f"{x / 2:.1f}" for x in range(1, 11)]


@pytest.mark.parametrize("text, scale, answer", [
    ("The rating of 4 out of 5 stars for this movie.", FIVE, "4"),  # zero-shot outputs went in raw
    ("6.0", FIVE, ""),  # off the scale: empty, so it is drawn again (the seeds' regex made it a 0)
    ("4", MOVIELENS, "4.0"),  # written as the scale writes it
    ("[ANSWER]3.5[/ANSWER]", MOVIELENS, "3.5"),
    ("great movie", MOVIELENS, ""),
    ("４．５ stars", MOVIELENS, "4.5"),
])
def test_a_rating_answer_is_the_rating_on_the_scale(text, scale, answer):
    assert clean(text, "movie_rating", scale) == answer


@pytest.mark.parametrize("text, collection, answer", [
    ("[ANSWER]这部电影很好看[/ANSWER]", "movie_review", "这部电影很好看"),
    ("<think>she liked it</think>\nAlice: I   love it!", "dialogue", "I love it!"),
    ("Assistant: sure thing", "dialogue", "sure thing"),
    ("<|im_start|>assistant\nそうですね、行きましょう<|im_end|>", "dialogue", "そうですね、行きましょう"),
    ("Great film. Make sure your answer is formatted as asked.", "movie_review", "Great film."),
    ("剧情不错，演员很棒。注意：不需要解释或思考过程", "movie_review", "剧情不错，演员很棒。"),
    ("ok", "dialogue", ""),  # under 3 characters: empty, as the seeds counted it
    ("Bob: hi there", "dialogue", "Bob: hi there"),  # not a speaker of this conversation: kept
    ("很好看的电影\ufffd\ufffd", "movie_review", "很好看的电影"),  # a character cut at the token limit
    ("A", "questionnaire", "A"),  # a choice answer is short by nature
    ("[ANSWER] 非常同意 [/ANSWER]", "questionnaire", "非常同意"),
])
def test_a_line_of_text_loses_tags_labels_and_echoes(text, collection, answer):
    assert clean(text, collection, None, speakers=["Alice"]) == answer


def test_never_half_a_character():
    """Decoding the bytes of a multi-byte character cut short writes U+FFFD; only those at the end go."""
    cut = "好".encode()[:2].decode("utf-8", errors="replace")
    assert cut == "\ufffd" and whole_characters("很好" + cut) == "很好"
    assert whole_characters("a\ufffdb") == "a\ufffdb"


def test_a_prediction_row_never_ends_in_half_a_character():
    """predict's rows (predictions-SPLIT.jsonl) hold whole characters too."""
    from usertwin.data.records import Item
    from usertwin.data.timeline import Sample, Timeline
    from usertwin.eval.predict import _row
    from usertwin.sequences.fit import Prompt
    from usertwin.twin.targets import Outcome, Target

    tl = Timeline("u", {}, "", "zh", [Item("好看", prefix="X: ", collection="movie_review")])
    o = Outcome(Target(tl, 0, ["好看"]), Prompt(Sample("u", 0, []), [1, 2]), {"好看": (-2.0, 2)}, "zh",
                predictions=["很好\ufffd", "不错"])
    assert _row(o, {})["predictions"] == ["很好", "不错"]
