"""Fitting to max_length: a sample's history cut oldest first (training's samples, a target's prompt), and
items whose context alone is too long trimmed to their newest turns. One place, so that training, inspect,
predict and every use of a twin cut the same way."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from usertwin.config import Config
from usertwin.data.timeline import Sample, select_history
from usertwin.text.tokens import ItemLengths, SequenceEncoder, encode_many, measure, measure_all


def trim_long_contexts(timelines, renderer, tokenizer, max_length: int) -> dict:
    """Items whose context does not fit lose their oldest context turns (the context is conditioning; the
    target is never cut). An item must fit max_length alone; a dialogue line's turns before it must also fit
    the history share (window_history_fraction) of the room the header leaves, as history does in a window
    -- so a window that starts inside a conversation still has room for targets. Done before anything is
    measured, so every later rendering -- training, inspect, predict -- sees the same trimmed item; a cut
    dialogue line shows the omitted-turns marker, and conversations are relinked from the cut contexts.
    Returns counts ({} when nothing was cut)."""
    if not any(it.context for tl in timelines for it in tl.items):
        return {}
    share = getattr(renderer.cfg, "window_history_fraction", 0.5)
    items = turns = 0
    by_user = _index(timelines)
    for uid, ln in measure_all(renderer, tokenizer, timelines).items():
        n_items, n_turns = _trim_timeline(by_user[uid], ln, renderer, tokenizer, max_length, share)
        items += n_items
        turns += n_turns
    for tl in timelines:
        if tl.context_cut:
            tl.relink()
    return {"items": items, "turns": turns} if items else {}


def _trim_timeline(tl, ln, renderer, tokenizer, max_length: int, share: float) -> tuple[int, int]:
    """trim_long_contexts for one timeline: (items cut, turns dropped)."""
    room = share * (max_length - ln.header)

    def fits(pos: int, prompt: int, target: int) -> bool:
        return ln.header + prompt + target <= max_length and (prompt <= room or not renderer.converses(tl, pos))

    items = turns = 0
    for pos, it in enumerate(tl.items):
        if not it.context or fits(pos, ln.prompt[pos], ln.target[pos]):
            continue
        lo, hi = 1, len(it.context)  # the fewest oldest turns to drop so that the item fits
        full = list(it.context)
        tl.context_cut[pos] = 0  # (its renderings while searching show the marker, as the cut one will)
        while lo < hi:
            mid = (lo + hi) // 2
            it.context = full[mid:]
            if fits(pos, *_item_len(renderer, tokenizer, tl, pos)):
                hi = mid
            else:
                lo = mid + 1
        it.context = full[lo:]
        tl.context_cut[pos] = lo
        items += 1
        cap = renderer.max_context_turns if renderer.converses(tl, pos) else len(full)
        turns += min(cap, len(full)) - min(cap, len(full) - lo)  # of the turns it showed
    return items, turns


def _index(timelines) -> dict:
    return {tl.user_id: tl for tl in timelines}


def _item_len(renderer, tokenizer, tl, pos: int) -> tuple[int, int]:
    """(prompt, target) tokens of item `pos` where it opens a sequence."""
    segs = renderer.item_segments(tl, pos, first=True, target=True)
    n = [len(x) for x in encode_many(tokenizer, [seg.text for seg in segs])]
    return sum(n[:-1]), n[-1]


def fit_sample(cfg, renderer, tl, ln: ItemLengths, s: Sample, tokenizer=None, max_length: int | None = None):
    """Drop the oldest history until the sample fits `max_length` (default the config's); None if the target
    alone does not fit."""
    limit = cfg.max_length if max_length is None else max_length
    if cfg.history_layout == "block":
        return _fit_block(renderer, tl, s, tokenizer, limit)
    used = ln.header + ln.block(s.target)
    if used > limit:
        return None
    kept, front = 0, s.target  # walk back from the most recent history item while it fits
    for h in reversed(s.history):
        # h opens the sequence; the old front now follows it (only its new turns, within one conversation)
        grown = used - ln.block(front) + ln.after(h, front) + ln.block(h) + ln.join
        if grown > limit:
            break
        used, front = grown, h
        kept += 1
    hist = list(s.history[len(s.history) - kept:])
    return Sample(s.user_id, s.target, hist, s.split), used, len(s.history) - kept


def _fit_block(renderer, tl, s: Sample, tokenizer, limit: int):
    """Block layout: history lives in the header, so measure whole renderings; binary search the cut."""
    def length(hist):
        segs = renderer.render(tl, hist + [s.target], [s.target]).segments
        return sum(len(x) for x in encode_many(tokenizer, [g.text for g in segs]))

    hist = list(s.history)
    if length(hist) <= limit:
        return s, length(hist), 0
    lo, hi = 1, len(hist)  # smallest number of dropped items that fits
    if length([]) > limit:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if length(hist[mid:]) <= limit:
            hi = mid
        else:
            lo = mid + 1
    kept = hist[lo:]
    return Sample(s.user_id, s.target, kept, s.split), length(kept), lo


@dataclass
class Prompt:
    sample: Sample  # the history that fitted
    ids: list  # token ids up to where the target starts


def target_sample(cfg: Config, renderer, tokenizer, tl, target: int, room: int = 0,
                  lengths: ItemLengths | None = None) -> Sample:
    """History as in training (the run's strategy), oldest dropped first until the prompt and `room` tokens
    of generation fit max_length. `lengths`: the prepared ones when at hand, else the timeline is measured
    (the same numbers: each text is tokenized alone)."""
    hist = select_history(tl, target, cfg, cfg.sample_seed)
    sample = Sample(tl.user_id, target, hist, "predict")
    ln = lengths if lengths is not None else measure(renderer, tokenizer, tl)
    fitted = fit_sample(cfg, renderer, tl, ln, sample, tokenizer, max_length=max(1, cfg.max_length - room))
    # a target too long even alone keeps its whole prompt: the model sees it cut on the left, not nothing
    return fitted[0] if fitted else Sample(tl.user_id, target, [], "predict")


def build_prompt(cfg: Config, encoder: SequenceEncoder, tl, target: int, room: int = 0,
                 lengths: ItemLengths | None = None) -> Prompt:
    """The one way a target's prompt is built (predict, Twin): rendered and tokenized as training does."""
    sample = target_sample(cfg, encoder.renderer, encoder.tokenizer, tl, target, room, lengths)
    enc = encoder.encode(tl, list(sample.history) + [sample.target], [sample.target])
    return Prompt(sample, enc.input_ids[:enc.targets[-1][1]])


def prompt_hash(ids: list[int]) -> str:
    """A short fingerprint of a prompt's token ids: rows of two runs compare their prompts by it."""
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
