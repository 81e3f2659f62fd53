"""A generated text made into the answer a leaderboard file holds, as the research scripts' clean_generated_text
did before writing `continuations` (the raw generation is kept beside it: eval/scenario.py).

- Every text: never half a character. A multi-byte character cut by the token limit decodes to U+FFFD at the
  end (17 of 90 zero-shot DMSC continuations ended in one); those trailing replacement characters go.
- A rating: the first number written in it, on the scale (eval.metrics.parse_rating: "The rating of 4 out of 5
  stars" -> 4), written as the scale writes it ("4.0" on MovieLens' scale); no rating on the scale ("6.0" on a
  1-5 scale, "great movie") -> empty, so it is drawn again. The seeds took the first digit 0-5 they found, which
  made "6.0" a 0.
- A line of text (dialogue, review): the seeds' tags and labels go (the content of [ANSWER]...[/ANSWER] is
  kept, <think> blocks, chat-template tokens and a leading speaker label "NAME:" are removed), the text is cut
  where an echo of the prompt's instructions starts, whitespace is collapsed; fewer than 3 characters left is
  empty, as the seeds counted it (then drawn again).
- An answer to a questionnaire ("A", a Likert level) is short by nature: only tags and whitespace go.
"""

from __future__ import annotations

import re

from usertwin.data.records import is_rating
from usertwin.eval.metrics import parse_rating

REPLACEMENT = "\ufffd"  # what decoding writes for the bytes of a character cut short
MIN_CHARS = 3  # the seeds' "len(cleaned.strip()) < 3: empty" for dialogue and review lines

_ANSWER = re.compile(r"\[ANSWER\](.*?)(?:\[/ANSWER\]|$)", re.DOTALL)
_TAGS = (re.compile(r"<think>.*?</think>", re.DOTALL), re.compile(r"</?think>"),
         re.compile(r"<\|im_start\|>\w*\n?|<\|im_end\|>|<\|(?:user|assistant|system|endoftext|eot_id)\|>"),
         re.compile(r"\[/?ANSWER[^\]]*\]"))
# where an echo of the instructions starts: the text from there on goes (the seeds' truncate patterns)
_ECHOES = re.compile(r"注意[：:]|请直接给出|請直接給出|不需要解释|用 ?\[ANSWER\]|思考過程や説明は不要|"
                     r"Make sure\b|Your response should\b|Please verify\b|Ensure your response\b|"
                     r"Note: (?:do not|don't) (?:explain|include)", re.IGNORECASE)
_ROLE_WORDS = ("user", "assistant", "system", "用户", "助手", "ユーザー", "アシスタント")


def whole_characters(text: str) -> str:
    """`text` without the replacement characters a cut multi-byte character leaves at its end."""
    return text.rstrip(REPLACEMENT)


def clean(text: str, collection: str, scale=None, speakers=()) -> str:
    """The answer of a generated `text` for an item of `collection` (see the module's doc). `scale`: the allowed
    ratings as the data writes them; `speakers`: names a dialogue line may start with ("NAME: ...")."""
    text = whole_characters(text)
    if is_rating(collection):
        return rating_answer(text, scale) if scale else text.strip()
    text = _strip_tags(text)
    if collection == "questionnaire":
        return " ".join(text.split())
    text = _strip_speaker(text, speakers)
    echo = _ECHOES.search(text)
    text = " ".join((text[:echo.start()] if echo else text).split())
    return text if len(text) >= MIN_CHARS else ""


def rating_answer(text: str, scale) -> str:
    """The first number of `text` snapped onto `scale` and written as the scale writes it; "" when none is."""
    value = parse_rating(text, scale)
    if value is None:
        return ""
    return next(s for s in scale if abs(float(s) - value) < 1e-9)


def _strip_tags(text: str) -> str:
    found = [m.group(1).strip() for m in _ANSWER.finditer(text)]
    text = next((f for f in found if f), text)  # the first non-empty [ANSWER] block, as the seeds took it
    for tag in _TAGS:
        text = tag.sub("", text)
    return text.strip()


def _strip_speaker(text: str, speakers) -> str:
    """A leading "NAME:" / "NAME：" where NAME is a role word or one of the conversation's speakers."""
    names = {str(s).strip().lower() for s in (*_ROLE_WORDS, *speakers) if str(s).strip()}
    label = re.match(r"\s*([^:：\n]{1,40})[:：]", text)
    if label and label.group(1).strip().lower() in names:
        return text[label.end():].strip()
    return text
