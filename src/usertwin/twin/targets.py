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


def run(twin, targets: list[Target], gen: GenerateSettings | None = None, room: int = 0,
        seed: int | None = None) -> list[Outcome]:
    """Every target's likelihoods in two forwards (windows, then lone prompts), then -- with `gen` -- its
    generations, every sample i drawn with seed + i. `room`: tokens kept free after a lone prompt."""
    engine = twin.engine
    windowed = [t for t in targets if t.window is not None]
    alone = [t for t in targets if t.window is None]
    done = {id(o.target): o for o in _in_windows(twin, windowed) + _alone(twin, alone, room)}
    out = [done[id(t)] for t in targets]
    if gen is not None and out:
        texts = engine.generate([o.prompt.ids for o in out], gen, None if seed is None else [seed] * len(out))
        for o, samples in zip(out, texts):
            o.predictions = samples
    return out


def _texts(twin, t: Target) -> list[str]:
    """The target's texts, then the scale's ratings not among them (a rating item)."""
    scale = twin.engine.scale if t.timeline.items[t.pos].is_rating else None
    return list(t.texts) + [s for s in scale or [] if s not in t.texts]


def _outcome(twin, t: Target, prompt: Prompt, texts: list[str], scores: list) -> Outcome:
    scored = dict(zip(texts, scores))
    scale = twin.engine.scale if t.timeline.items[t.pos].is_rating else None
    rating = twin.rating_distribution_of([scored[s][0] for s in scale]) if scale else None
    return Outcome(t, prompt, scored, twin.language(t.timeline), rating)


def _alone(twin, targets: list[Target], room: int) -> list[Outcome]:
    engine = twin.engine
    prompts = [engine.prompt(t.timeline, t.pos, room, t.lengths) for t in targets]
    texts = [_texts(twin, t) for t in targets]
    scores = engine.score_many([p.ids for p in prompts], [[engine.ids_of(x) for x in xs] for xs in texts]) \
        if targets else []
    return [_outcome(twin, t, p, xs, sc) for t, p, xs, sc in zip(targets, prompts, texts, scores)]


def _in_windows(twin, targets: list[Target]) -> list[Outcome]:
    """One read of each window for all its targets (Engine.score_windows): a target's history is what comes
    before it in its window."""
    engine = twin.engine
    windows: dict[int, list[Target]] = {}
    for t in targets:
        windows.setdefault(id(t.window), []).append(t)
    ids, groups, meta = [], [], []
    for group in windows.values():
        w, tl = group[0].window, group[0].timeline
        asked = {t.pos: t for t in group}
        enc = engine.encoder.encode(tl, w.items, w.targets)
        scored = []
        for pos, first, _ in enc.targets:
            t = asked.get(pos)
            if t is None:
                continue
            texts = _texts(twin, t)
            scored.append((first, [engine.ids_of(x) for x in texts]))
            history = [p for p in w.items if p < pos]
            meta.append((t, Prompt(Sample(tl.user_id, pos, history, t.split), enc.input_ids[:first]), texts))
        ids.append(enc.input_ids)
        groups.append(scored)
    if not ids:
        return []
    scores = [sc for per_window in engine.score_windows(ids, groups) for sc in per_window]
    return [_outcome(twin, t, prompt, texts, sc) for (t, prompt, texts), sc in zip(meta, scores)]
