"""Choice items: answers that pick one of a known set -- a Likert level or one of a question's listed options.

A questionnaire item is a question (the item's last context turn, else its continuation_prefix) and the user's
answer (its continuation). It is a *choice item* when its answer is one of a finite set of candidates, found in
this order:

1. the item's own `choices` key (a list of option texts; kept in the item's metadata);
2. options listed in the question: lines or runs such as "A. ...", "A、...", "A) ...", "(A) ...", "（A）..."
   with consecutive letters from A (`parse_options`). The candidates are written the way the answer is: the
   option texts when the answer is one of them ("继续你的参赛..."), the letters when the answer is a letter
   ("B"), the whole "B. ..." lines when the answer is one;
3. the record's `task.choices` (a list of option texts, unordered) when the answer is one of them;
4. a Likert scale when the answer is one of its levels: the record's `task.likert` (the levels in order,
   lowest first), else the scale inferred from the answers of the item's collection (`infer_likert`): the
   smallest known order (`LIKERT_SCALES`: 非常不同意 ... 非常同意, strongly disagree ... strongly agree, ...)
   that holds every Likert-looking answer of the collection. Level i of K is the number i + 1 (1..K).

Anything else -- an answer that is none of the candidates, a question without options -- stays free text.
A choice item is scored like a rating: the log-likelihood of every candidate as the continuation, all in one
batched forward after the shared prompt, normalised to probabilities that sum to 1 (`distribution`).

    {"task": {"description": "...", "likert": ["非常不同意", "不同意", "中立", "同意", "非常同意"],
              "choices": ["是", "否"],
              "task_behavior_collections": [{"type": "questionnaire", "data": [
                  {"context": [{"source": "questionnaire", "content": "你会怎么安排？\\nA. 参赛\\nB. 休息"}],
                   "continuation": "参赛"},
                  {"context": [...], "continuation": "同意"},
                  {"context": [...], "continuation": "蓝色", "choices": ["红色", "蓝色"]}]}]}}
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

# Known Likert orders, lowest level first. `infer_likert` takes the smallest one holding every answer that
# looks like a level (ties: the first listed), so a collection answered with 同意 / 有点同意 gets the 7-level
# scale the research data uses, and one answered with agree / disagree the 5-level one.
LIKERT_SCALES = (
    ("非常不同意", "不同意", "中立", "同意", "非常同意"),
    ("完全不同意", "不同意", "不确定", "同意", "完全同意"),
    ("非常不同意", "比较不同意", "一般", "比较同意", "非常同意"),
    ("完全不同意", "不同意", "有点不同意", "不确定", "有点同意", "同意", "完全同意"),
    ("非常不同意", "不同意", "有点不同意", "中立", "有点同意", "同意", "非常同意"),
    ("strongly disagree", "disagree", "neutral", "agree", "strongly agree"),
    ("strongly disagree", "disagree", "neither agree nor disagree", "agree", "strongly agree"),
    ("strongly disagree", "disagree", "somewhat disagree", "neither agree nor disagree", "somewhat agree",
     "agree", "strongly agree"),
    ("strongly disagree", "disagree", "slightly disagree", "neutral", "slightly agree", "agree", "strongly agree"),
)

# an option marker: "(A)" / "（A）", or "A" followed by . ． 、 ) ） : ：, at the start of the text or a line,
# or after whitespace or sentence punctuation (inline lists: "你会怎么做？A. 参赛 B. 休息")
_MARK = re.compile(r"(?:^|(?<=[\s?？。!！:：;；]))(?:[(（]([A-Z])[)）]|([A-Z])[.．、)）:：])[ \t]*", re.M)


def norm(text: str) -> str:
    """An answer or level as compared: NFKC (full-width to ASCII), stripped, lowercased."""
    return unicodedata.normalize("NFKC", str(text)).strip().lower()


@dataclass(frozen=True)
class Option:
    letter: str  # "A"
    text: str  # the option's text, stripped
    line: str  # marker and text as the question writes them, "A. 参赛"


def parse_options(question: str) -> list[Option]:
    """The lettered options of a question, in order; [] when it lists fewer than two (A, B, ... consecutive).

    A marker whose letter is not the next expected one ("I. " inside an option's text) stays part of the
    text before it."""
    marks, expected = [], "A"
    for m in _MARK.finditer(question or ""):
        letter = m.group(1) or m.group(2)
        if letter == expected:
            marks.append(m)
            expected = chr(ord(expected) + 1)
    if len(marks) < 2:
        return []
    out = []
    for j, m in enumerate(marks):
        end = marks[j + 1].start() if j + 1 < len(marks) else len(question)
        text = question[m.end():end].strip().rstrip(";；,，").strip()
        if not text:
            return []  # "A. B. C." with nothing to choose between is no option list
        out.append(Option(m.group(1) or m.group(2), text, question[m.start():m.end()] + text))
    return out


def infer_likert(answers) -> tuple[str, ...] | None:
    """The smallest known Likert order (`LIKERT_SCALES`) holding every answer that is a level of some known
    order, written as the answers write them where they do; None when fewer than two distinct levels occur."""
    known = {norm(level) for scale in LIKERT_SCALES for level in scale}
    seen: dict[str, str] = {}
    for a in answers:
        if norm(a) in known:
            seen.setdefault(norm(a), str(a).strip())
    if len(seen) < 2:
        return None
    fits = [s for s in LIKERT_SCALES if set(seen) <= {norm(level) for level in s}]
    if not fits:
        return None
    best = min(fits, key=len)  # min keeps the first listed of equal length
    return tuple(seen.get(norm(level), level) for level in best)


@dataclass(frozen=True)
class Choice:
    """The candidates of one choice item, written as its answers are, and which one the user picked."""

    options: tuple[str, ...]
    answer: int | None  # index of the item's continuation among `options`; None for a new question
    likert: bool = False  # ordered levels: option i is level i + 1 of len(options)


def question_of(item) -> str:
    """The question an item answers: its last context turn, else its continuation prefix."""
    if item.context:
        return str(item.context[-1].get("content", ""))
    return item.prefix or ""


def _index(answer: str | None, candidates) -> int | None:
    if answer is None:
        return None
    a = norm(answer)
    return next((i for i, c in enumerate(candidates) if norm(c) == a), None)


def _from_options(options: list[Option], answer: str | None) -> Choice | None:
    texts = tuple(o.text for o in options)
    if answer is None:
        return Choice(texts, None)
    for form in (texts, tuple(o.letter for o in options), tuple(o.line for o in options)):
        i = _index(answer, form)
        if i is not None:
            return Choice(form, i)
    a = norm(answer).strip("()（）.．、:： ")
    i = _index(a, [o.letter for o in options])  # "(B)", "B." as the answer
    return Choice(tuple(o.letter for o in options), i) if i is not None else None


def choice_of(item, likert: dict | None = None, declared: dict | None = None,
              answer: str | None = ...) -> Choice | None:
    """The item's Choice, or None when it is free text (see the module's docstring for the order).

    `likert`: collection type -> levels (`likert_scales`); `declared`: the record's task.likert / task.choices
    (a Timeline's `choice_sets`); `answer`: default the item's continuation; None asks for a new question's
    candidates (then only declared or listed options, never a Likert guess from an answer)."""
    answer = item.continuation if answer is ... else answer
    declared = declared or {}
    own = (item.metadata or {}).get("choices")
    if isinstance(own, list) and len(own) >= 2:
        i = _index(answer, own)
        return Choice(tuple(str(o) for o in own), i) if (i is not None or answer is None) else None
    options = parse_options(question_of(item))
    if options:
        return _from_options(options, answer)
    listed = declared.get("choices")
    if listed and (i := _index(answer, listed)) is not None:
        return Choice(tuple(listed), i)
    scale = declared.get("likert") or (likert or {}).get(item.collection)
    if scale and (i := _index(answer, scale)) is not None:
        return Choice(tuple(scale), i, likert=True)
    return None


def likert_scales(timelines) -> dict:
    """collection type -> the Likert levels inferred from the answers of that collection's items (those
    without listed or declared options), for every collection that has one."""
    answers: dict[str, list] = {}
    for tl in timelines:
        for it in tl.items:
            if not it.is_rating and not parse_options(question_of(it)) and "choices" not in (it.metadata or {}):
                answers.setdefault(it.collection, []).append(it.continuation)
    out = {}
    for coll, texts in answers.items():
        scale = infer_likert(texts)
        if scale:
            out[coll] = list(scale)
    return out


def distribution(choice: Choice, scores: list[float]) -> dict:
    """A choice item's candidates scored by log-likelihood -> probabilities summing to 1, the most likely
    candidate (`chosen`), the real one (`answer`), and for Likert items the expected level (1..K)."""
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    z = sum(weights)
    probs = [w / z for w in weights]
    chosen = max(range(len(probs)), key=probs.__getitem__)
    out = {"options": list(choice.options), "probs": [round(p, 6) for p in probs], "chosen": chosen,
           "answer": choice.answer, "correct": None if choice.answer is None else chosen == choice.answer,
           "likert": choice.likert}
    if choice.likert:
        out["expected_level"] = round(sum((i + 1) * p for i, p in enumerate(probs)), 6)
    return out


def most_frequent(counts: Counter, options) -> int | None:
    """Index of the option counted most often (ties: the earlier option); None when none was counted."""
    best = max(range(len(options)), key=lambda i: (counts.get(norm(options[i]), 0), -i))
    return best if counts.get(norm(options[best]), 0) else None
