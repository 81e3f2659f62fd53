"""A batch of targets scored in one call: for each, its prompt (as training renders it), the log-likelihood
of every text asked about after it (the reference, distractors, a choice item's options; for a rating item
every rating of the twin's scale too), the rating distribution, and optionally generated texts.

A target is read after its own prompt (history cut oldest first to fit, `--scoring target`), or inside a
timeline unit's window that holds it (`--scoring window`: one read of the window for all its targets, as
validation reads them). `usertwin predict` and the trainer's validation RMSE (eval/predict.py,
eval/valrating.py) score through here."""

from __future__ import annotations

from dataclasses import dataclass, field

from usertwin.config import GenerateSettings
from usertwin.data.timeline import Sample, Timeline
from usertwin.sequences.fit import Prompt
from usertwin.text.tokens import ItemLengths


@dataclass
class Target:
    timeline: Timeline
    pos: int  # the item's position in the timeline
    texts: list[str]  # scored after the prompt, the reference first; the scale is added for a rating item
    lengths: ItemLengths | None = None  # the timeline's measured item lengths, when at hand
    window: object | None = None  # a window (sequences.prepare's Sequence) holding the target: read in it
    split: str = "predict"
    meta: object = None  # the caller's own, handed back


@dataclass
class Outcome:
    target: Target
    prompt: Prompt
    scores: dict  # text -> (sum of log-probabilities, tokens)
    language: str
    rating: dict | None = None  # the scale's distribution, for a rating item
    predictions: list[str] = field(default_factory=list)


def score_targets(twin, targets: list[Target], gen: GenerateSettings | None = None, room: int = 0,
                  seed: int | None = None) -> list[Outcome]:
    """Every target's likelihoods in one pair of forwards (Engine.score_windows: a lone prompt is a window
    whose texts start at its end), then -- with `gen` -- its generations, every sample i drawn with seed + i.
    `room`: tokens kept free after a lone prompt."""
    engine = twin.engine
    asked = [(t, _texts(engine.scale, t)) for t in targets]
    prompts, scores = _scored(engine, asked, room)
    out = [_outcome(engine, t, texts, p, sc) for (t, texts), p, sc in zip(asked, prompts, scores)]
    if gen is not None:
        add_predictions(twin, out, gen, seed)
    return out


def add_predictions(twin, out: list[Outcome], gen: GenerateSettings, seed: int | None = None,
                    running: int | None = None) -> None:
    """Each outcome's generations, sample i drawn with seed + i; `running`: decoded continuously, at most that
    many prompts at once (Engine.generate_ids)."""
    if not out:
        return
    texts = twin.engine.generate_texts([o.prompt.ids for o in out], gen, None if seed is None else [seed] * len(out),
                                       running=running)
    for o, samples in zip(out, texts):
        o.predictions = samples


def _texts(scale: list[str] | None, t: Target) -> list[str]:
    """The target's texts, then the scale's ratings not among them (a rating item)."""
    extra = scale if scale and t.timeline.items[t.pos].is_rating else []
    return list(t.texts) + [s for s in extra if s not in t.texts]


def _scored(engine, asked: list, room: int) -> tuple[list[Prompt], list[list[tuple]]]:
    """Each target's prompt and its texts' (log-probability, tokens): a lone target after its own prompt (history
    cut oldest first to leave `room`), a windowed one inside its window, each window read once for all its
    targets (a target's history is what comes before it in its window)."""
    ids, groups, slots, prompts, windows = [], [], [], [], {}
    for t, texts in asked:
        cands = [engine.continuation_ids(x) for x in texts]
        if t.window is None:
            prompt = engine.target_prompt(t.timeline, t.pos, room, t.lengths)
            k = len(ids)
            ids.append(prompt.ids)
            groups.append([(len(prompt.ids), cands)])
        else:
            if id(t.window) not in windows:
                windows[id(t.window)] = len(ids), engine.encoder.encode(t.timeline, t.window.items, t.window.targets)
                ids.append(windows[id(t.window)][1].input_ids)
                groups.append([])
            k, enc = windows[id(t.window)]
            first = next(start for pos, start, _ in enc.targets if pos == t.pos)
            history = [p for p in t.window.items if p < t.pos]
            prompt = Prompt(Sample(t.timeline.user_id, t.pos, history, t.split), enc.input_ids[:first])
            groups[k].append((first, cands))
        slots.append((k, len(groups[k]) - 1))
        prompts.append(prompt)
    scores = engine.score_windows(ids, groups) if ids else []
    return prompts, [scores[k][g] for k, g in slots]


def _outcome(engine, t: Target, texts: list[str], prompt: Prompt, scores: list) -> Outcome:
    scored = dict(zip(texts, scores))
    scale = engine.scale if t.timeline.items[t.pos].is_rating else None
    rating = engine.distribution([scored[s][0] for s in scale]) if scale else None
    return Outcome(t, prompt, scored, engine.renderer.language(t.timeline), rating)
