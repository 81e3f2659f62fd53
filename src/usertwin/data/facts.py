"""What a twin keeps from the data it was trained on (RUN/twin.json: the rating scale as the data writes it,
the task text, the language, the role, the collections; RUN/crowd.json: the other users' ratings), and the
rating distribution read off a scale's scores. Written by training, read by every use of a twin, so a twin
never re-reads or re-prepares its training data. No tokenizer here: these are facts of the records."""

from __future__ import annotations

import json
import math
from pathlib import Path

from usertwin.atomic import write_json
from usertwin.data import crowd
from usertwin.errors import UsertwinError
from usertwin.rundir import RunDir

MAX_SCALE = 40  # more distinct numbers than this is free text that happens to be numeric, not a scale


def rating_scale(timelines) -> list[str] | None:
    """The allowed ratings as they are written in the data (e.g. "0.5" ... "5.0"), if the data has ratings: the
    ratings seen, and every value the records declare in task.rating_scale (a rating no user in the data gave is
    still a rating: it gets its probability), written with as many decimals as the data writes."""
    values, declared = {}, set()
    for tl in timelines:
        declared.update(tl.rating_scale or ())
        for it in tl.items:
            if it.is_rating:
                try:
                    values.setdefault(float(it.continuation), it.continuation)
                except ValueError:
                    return None
    if not values or len(values | dict.fromkeys(declared)) > MAX_SCALE:
        return None
    decimals = max(len(text.partition(".")[2]) for text in values.values())
    for v in declared - set(values):
        values[v] = f"{v:.{decimals}f}"
    return [values[v] for v in sorted(values)]


def _the_one(values: set):
    """The value every timeline shares, else None (then a caller must say it)."""
    return next(iter(values)) if len(values) == 1 else None


def twin_facts(prep_or_timelines) -> dict:
    """What a twin needs from the data it was trained on (a Prepared, or its timelines)."""
    timelines = getattr(prep_or_timelines, "timelines", prep_or_timelines)
    return {"rating_scale": rating_scale(timelines),
            "task": _the_one({tl.task for tl in timelines}),
            "language": _the_one({tl.language for tl in timelines}),
            "role": _the_one({tl.role for tl in timelines}) or "user",
            "collections": sorted({it.collection for tl in timelines for it in tl.items})}


def write_twin_facts(run_dir, prep) -> Path:
    """RUN/twin.json, written by training so that the run alone is a usable twin; with crowd context also
    RUN/crowd.json: the other users' ratings a twin loaded without records counts (train + val: what the test
    split's baselines are fit on)."""
    run = RunDir(run_dir)
    write_json(run.twin_facts, twin_facts(prep))
    if prep.config.crowd_context != "none":
        write_json(run.crowd, crowd.Pools.of(prep.timelines, prep.splits).train_val.to_json())
    return run.twin_facts


def read_crowd_pools(run_dir) -> crowd.Pools:
    path = RunDir(run_dir).crowd
    if not path.is_file():
        raise UsertwinError(f"{path} is missing: this twin shows crowd context; pass Twin.load(RUN, records=PATH) "
                            "to count other users' ratings from a records file")
    try:
        return crowd.Pools.saved(crowd.Pool.from_json(json.loads(path.read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UsertwinError(f"{path} is unreadable ({e}); pass Twin.load(RUN, records=PATH) instead") from None


def read_twin_facts(run_dir) -> dict | None:
    path = RunDir(run_dir).twin_facts
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsertwinError(f"{path} is unreadable ({e}); delete it and pass records=PATH to Twin.load") from None
    if not isinstance(facts, dict):
        raise UsertwinError(f"{path} must hold a JSON object; delete it and pass records=PATH to Twin.load")
    return facts


def rating_distribution(scale: list[str], scores: list[float]) -> dict:
    """Normalised probabilities of a scale's ratings from their log-likelihoods, with the most likely and the
    expected rating."""
    top = max(scores)
    probs = [math.exp(s - top) for s in scores]
    z = sum(probs)
    probs = [p / z for p in probs]
    values = [float(t) for t in scale]
    return {"scale": values, "probs": [round(p, 6) for p in probs],
            "most_likely": values[max(range(len(probs)), key=probs.__getitem__)],
            "expected": round(sum(v * p for v, p in zip(values, probs)), 6)}
