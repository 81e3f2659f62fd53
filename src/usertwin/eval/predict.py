"""`usertwin predict`: every target of a split, generated and scored by a twin (twin/targets.py).

For every target of a split the prompt is rendered exactly as in training (same ablation, style and
history strategy), with the user's strictly earlier items -- train and validation included -- as history,
cut to fit `max_length` (`--scoring target`). With `--scoring window` the timeline unit's windows of the
split are read instead, each once for all its targets, as validation reads them: a target's history is what
comes before it in its window. Each output line holds the reference, the generated prediction(s), the
teacher-forced loss of the reference, and for ratings the probability of every allowed rating.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from usertwin.appended import append_batches, completed_rows, output_lock, progress_bar
from usertwin.config import QUEUED, GenerateSettings
from usertwin.data import choices, records
from usertwin.data.records.format import item_key
from usertwin.data.timeline import assign_splits, build_timelines
from usertwin.errors import UsertwinError
from usertwin.eval.answers import whole_characters
from usertwin.sequences.fit import prompt_hash
from usertwin.twin.targets import Outcome, Target, add_predictions, score_targets


def distractors(prep, split: str, k: int, seed: int) -> dict:
    """For each target: k other continuations, preferably other users' for the same item (`item_key`: the
    movie id where the data has one, so two films with one title are two items), else random ones from the
    split; never the reference text itself."""
    by_item, pool = {}, []
    for tl in prep.timelines:
        for pos, lab in enumerate(prep.splits[tl.user_id]):
            if lab == split:
                it = tl.items[pos]
                by_item.setdefault(item_key(it), []).append((tl.user_id, it.continuation))
                pool.append(it.continuation)
    out = {}
    for tl in prep.timelines:
        for pos, lab in enumerate(prep.splits[tl.user_id]):
            if lab != split:
                continue
            ref = tl.items[pos].continuation
            rng = random.Random(f"{seed}:{tl.user_id}:{pos}")
            same = sorted({c for u, c in by_item.get(item_key(tl.items[pos]), []) if u != tl.user_id and c != ref})
            picks = rng.sample(same, min(k, len(same)))
            others = sorted(set(pool) - {ref} - set(picks))
            picks += rng.sample(others, min(k - len(picks), len(others)))
            out[(tl.user_id, pos)] = picks
    return out


def predict_split(twin, prep, split: str, output, gen: GenerateSettings, pick_k: int = 3,
                  generate: bool = True, limit: int | None = None, progress: bool = True,
                  batching: str = "auto") -> int:
    """Append a row for every target of `split` (of the prepared data) not yet in `output`; returns how many.
    `batching`: how generation batches (Twin.batching)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        return _predict_split(twin, prep, split, output, gen, pick_k, generate, limit, progress, batching)


def targets_left(cfg, split: str, output, limit: int | None) -> tuple[int, int]:
    """(targets of `split`, how many of them are not in `output` yet, within `limit`), from the records and the
    split settings alone: a finished predict says so without loading the model (or a tokenizer)."""
    loaded = records.load(cfg.data, on_error=cfg.on_error)
    timelines, _ = build_timelines(loaded.records)
    splits = assign_splits(timelines, cfg)
    targets = {(tl.user_id, pos) for tl in timelines for pos, lab in enumerate(splits[tl.user_id]) if lab == split}
    done = set(completed_rows(Path(output)))
    left = len(targets - done)
    return len(targets), left if limit is None else min(left, max(0, limit - len(done)))


def _todo(prep, split: str, done: set, limit: int | None) -> list:
    targets = [(tl, pos) for tl in prep.timelines for pos, lab in enumerate(prep.splits[tl.user_id])
               if lab == split and (tl.user_id, pos) not in done]
    return targets if limit is None else targets[:max(0, limit - len(done))]


def _predict_split(twin, prep, split, output: Path, gen, pick_k, generate, limit, progress, batching) -> int:
    todo = _todo(prep, split, completed_rows(output), limit)
    gen = twin.sized(gen, prompts=len(todo) if generate else None)
    picks = distractors(prep, split, pick_k, prep.config.seed) if pick_k else {}
    likert = choices.likert_scales(prep.timelines)
    targets = [_target(prep, tl, pos, split, picks, likert) for tl, pos in todo]
    bar = progress_bar(len(targets), f"predict {split}", "target") if progress else None
    # like the seeds' vLLM scripts, sample i of every target draws with seed + i: a row is the same in any batch,
    # after a resume, and whether 1 or N samples are drawn
    seed = gen.seed if gen.seed is not None else prep.config.seed
    room = gen.max_new_tokens if generate else 0
    batches = _in_windows(prep, split, targets, gen.batch_size) if gen.scoring == "window" else \
        (targets[start:start + gen.batch_size] for start in range(0, len(targets), gen.batch_size))

    running = twin.running(batching, gen) if generate else None

    def rows_of(group: list[list]) -> list[dict]:
        # scoring a batch at a time; generation of the whole group: continuously, or (one batch) together
        out = [o for batch in group for o in score_targets(twin, batch, None, room, seed)]
        if generate:
            add_predictions(twin, out, gen, seed, running)
        return [_row(o, picks) for o in out]

    return append_batches(output, _grouped(batches, QUEUED if running else 1), rows_of, bar)


def _grouped(batches, n: int):
    """Lists of n batches (the last may hold fewer): what one write holds."""
    group = []
    for b in batches:
        group.append(b)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def _target(prep, tl, pos: int, split: str, picks: dict, likert: dict) -> Target:
    """A target with the texts scored after its prompt: the reference, the pick distractors and a choice item's
    options (the twin adds its rating scale for a rating item); the choice item rides along as meta."""
    item = tl.items[pos]
    texts = [item.continuation] + list(picks.get((tl.user_id, pos), []))
    choice = None if item.is_rating else choices.choice_of(item, likert, tl.choice_sets)
    if choice is not None:
        texts += [t for t in choice.options if t not in texts]
    return Target(tl, pos, texts, prep.lengths[tl.user_id], split=split, meta=choice)


def _in_windows(prep, split: str, targets: list, batch: int):
    """Batches under --scoring window: the targets of about `batch` targets' windows, each set in the window
    that holds it, then (one prompt each) the targets no window of the split holds (left out as too long, or
    outside the timeline unit's choice)."""
    if prep.config.unit != "timeline":
        raise UsertwinError("--scoring window reads the timeline unit's windows; this config has --unit "
                            f"{prep.config.unit}: use --scoring target")
    by_key = {(t.timeline.user_id, t.pos): t for t in targets}
    windows = [w for w in prep.sequences.get(split, []) if any((w.user_id, p) in by_key for p in w.targets)]
    covered = set()
    for group in _by_targets(windows, by_key, batch):
        placed = []
        for w in group:
            for p in w.targets:
                if (w.user_id, p) in by_key:
                    placed.append(dataclasses.replace(by_key[(w.user_id, p)], window=w))
                    covered.add((w.user_id, p))
        yield placed
    rest = [t for t in targets if (t.timeline.user_id, t.pos) not in covered]
    for start in range(0, len(rest), batch):
        yield rest[start:start + batch]


def _by_targets(windows: list, todo, batch: int):
    """Consecutive windows holding about `batch` to-do targets together (at least one window): batch_size
    counts targets in both scorings, and a window's candidate block grows with its targets."""
    group, n = [], 0
    for w in windows:
        k = sum((w.user_id, t) in todo for t in w.targets)
        if group and n + k > batch:
            yield group
            group, n = [], 0
        group.append(w)
        n += k
    if group:
        yield group


def _row(o: Outcome, picks: dict) -> dict:
    t = o.target
    tl, pos, item = t.timeline, t.pos, t.timeline.items[t.pos]
    ref_total, n = o.scores[item.continuation]
    row = {"user": tl.user_id, "target_index": pos, "split": t.split, "collection": item.collection,
           "item": item.prefix, "language": o.language, "prompt_hash": prompt_hash(o.prompt.ids),
           "reference": item.continuation, "predictions": [whole_characters(x) for x in o.predictions],
           "loss": round(-ref_total / n, 6),
           "n_tokens": n, "history_len": len(o.prompt.sample.history), "user_items": len(tl.items)}
    if o.rating is not None:
        row["rating"] = o.rating
    if picks.get((tl.user_id, pos)):
        row["pick"] = _pick([item.continuation] + picks[(tl.user_id, pos)], o.scores)
    if t.meta is not None:
        row["choice"] = choices.distribution(t.meta, [o.scores[x][0] for x in t.meta.options])
    return row


def _pick(cands: list, scored: dict) -> dict:
    """Which candidate the twin finds likeliest per token; the reference is candidate 0."""
    norm = [scored[c][0] / max(1, scored[c][1]) for c in cands]  # length-normalised
    chosen = max(range(len(norm)), key=norm.__getitem__)
    return {"k": len(cands) - 1, "chosen": chosen, "correct": chosen == 0, "scores": [round(x, 4) for x in norm]}


