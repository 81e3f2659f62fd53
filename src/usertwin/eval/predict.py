"""`usertwin predict`: every target of a split, generated and scored by a twin's engine (usertwin.twin).

For every target of a split the prompt is rendered exactly as in training (same ablation, style and
history strategy), with the user's strictly earlier items -- train and validation included -- as history,
cut to fit `max_length` (`--scoring target`). With `--scoring window` the timeline unit's windows of the
split are read instead, each once for all its targets, as validation reads them: a target's history is what
comes before it in its window. Each output line holds the reference, the generated prediction(s), the
teacher-forced loss of the reference, and for ratings the probability of every allowed rating.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from usertwin.atomic import write_text
from usertwin.config import GenerateSettings
from usertwin.data import choices
from usertwin.data.records.format import item_key
from usertwin.data.timeline import Sample
from usertwin.errors import UsertwinError
from usertwin.lock import acquire
from usertwin.rundir import RunDir
from usertwin.twin import Engine, Prompt

KEY = ("user", "target_index")


def completed_rows(path: Path, key: tuple = KEY) -> dict:
    """The rows already in a (possibly cut-off) output file that is appended to per batch, by their `key`
    fields (predict: user and target; simulate: user and step). A torn last line (the process was killed
    while writing it) and anything after it are dropped; the file is then rewritten atomically, so a second
    crash here leaves either the old file or the repaired one."""
    done = {}
    if not path.is_file():
        return done
    good, torn = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
                k = tuple(row[name] for name in key)
            except (json.JSONDecodeError, TypeError, KeyError):
                torn = True
                break
            if not line.endswith("\n"):
                torn, line = True, line + "\n"
            if k in done:  # never twice
                torn = True
                continue
            done[k] = row
            good.append(line)
    if torn:
        write_text(path, "".join(good))
    return done


def _done(path: Path) -> set:
    """The (user, target) pairs already predicted in `path` (see completed_rows)."""
    return set(completed_rows(path))


def output_lock(output: Path, what: str = "predictions file"):
    """One writer per output: a run directory is locked as a whole (training may write there too);
    a file elsewhere gets its own lock beside it."""
    run = RunDir(output.parent)
    if run.is_run():
        return acquire(run.lock, f"run directory {run.path}", hint="write elsewhere with -o")
    return acquire(output.with_name(f".{output.name}.lock"), f"{what} {output}", hint="write elsewhere with -o")


_output_lock = output_lock


def progress_bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


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


def predict_split(engine: Engine, prep, split: str, output, gen: GenerateSettings, pick_k: int = 3,
                  generate: bool = True, limit: int | None = None, progress: bool = True) -> int:
    """Append a row for every target of `split` (of the prepared data) not yet in `output`; returns how many."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output):
        return _predict_split(engine, prep, split, output, gen, pick_k, generate, limit, progress)


def _todo(prep, split: str, done: set, limit: int | None) -> list:
    targets = [(tl, pos) for tl in prep.timelines for pos, lab in enumerate(prep.splits[tl.user_id])
               if lab == split and (tl.user_id, pos) not in done]
    return targets if limit is None else targets[:max(0, limit - len(done))]


def _predict_split(engine, prep, split, output: Path, gen, pick_k, generate, limit, progress) -> int:
    gen = engine.sized(gen)
    targets = _todo(prep, split, completed_rows(output), limit)
    picks = distractors(prep, split, pick_k, engine.cfg.seed) if pick_k else {}
    likert = choices.likert_scales(prep.timelines)
    room = gen.max_new_tokens if generate else 0
    bar = progress_bar(len(targets), f"predict {split}", "target") if progress else None

    # like the seeds' vLLM scripts, sample i of every target draws with seed + i: a row is the same in any batch,
    # after a resume, and whether 1 or N samples are drawn
    seed = gen.seed if gen.seed is not None else engine.cfg.seed

    def _generated(rows: list[dict]) -> list[dict]:
        if generate and rows:
            for r, o in zip(rows, engine.generate([r["_prompt"] for r in rows], gen, [seed] * len(rows))):
                r["predictions"] = o
        for r in rows:
            r.pop("_prompt")
        return rows

    def rows_of(chunk: list) -> list[dict]:
        return _generated(_rows(engine, prep, chunk, split, room, picks, likert))

    if gen.scoring == "window":
        return append_batches(output, _window_chunks(engine, prep, split, targets, gen.batch_size, room, picks,
                                                     likert), lambda rows: _generated(rows), bar)
    chunks = (targets[start:start + gen.batch_size] for start in range(0, len(targets), gen.batch_size))
    return append_batches(output, chunks, rows_of, bar)


def append_batches(output: Path, batches, rows_of, bar=None) -> int:
    """Appends the rows of each batch to `output` and flushes: appended, not atomic, by design — every flushed
    batch survives a kill, and the next run resumes after the last complete line (completed_rows drops a torn
    one). Returns the rows written."""
    written = 0
    with open(output, "a", encoding="utf-8") as f:
        for batch in batches:
            rows = rows_of(batch)
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            f.flush()
            written += len(rows)
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    return written


def _window_chunks(engine: Engine, prep, split: str, targets: list, batch: int, room: int, picks: dict,
                   likert: dict):
    """Batches of rows under --scoring window: windows of about `batch` targets per forward, then (one prompt
    each) the targets no window of the split holds (left out as too long, or outside the timeline unit's choice)."""
    if prep.config.unit != "timeline":
        raise UsertwinError("--scoring window reads the timeline unit's windows; this config has --unit "
                            f"{prep.config.unit}: use --scoring target")
    todo = {(tl.user_id, pos) for tl, pos in targets}
    windows = [w for w in prep.sequences.get(split, []) if any((w.user_id, t) in todo for t in w.targets)]
    covered = {(w.user_id, t) for w in windows for t in w.targets}
    for group in _by_targets(windows, todo, batch):
        yield _window_rows(engine, prep, group, split, todo, picks, likert)
    rest = [(tl, pos) for tl, pos in targets if (tl.user_id, pos) not in covered]
    for start in range(0, len(rest), batch):
        yield _rows(engine, prep, rest[start:start + batch], split, room, picks, likert)


def _by_targets(windows: list, todo: set, batch: int):
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


def _candidates(engine: Engine, tl, pos: int, picks: dict, likert: dict) -> tuple[list[str], object]:
    """The texts scored after a target's prompt: the reference, the pick distractors, the allowed ratings or a
    choice item's options; and the choice item (or None)."""
    item = tl.items[pos]
    texts = [item.continuation] + list(picks.get((tl.user_id, pos), []))
    if engine.scale and item.is_rating:
        texts += [t for t in engine.scale if t not in texts]
    choice = None if item.is_rating else choices.choice_of(item, likert, tl.choice_sets)
    if choice is not None:
        texts += [t for t in choice.options if t not in texts]
    return texts, choice


def _window_rows(engine: Engine, prep, windows: list, split: str, todo: set, picks: dict, likert: dict) -> list:
    """Rows of the to-do targets of a batch of windows, from one read of each window (Engine.score_windows)."""
    ids, groups, meta = [], [], []
    for w in windows:
        tl = prep.timeline(w.user_id)
        enc = engine.encoder.encode(tl, w.items, w.targets)
        group = []
        for pos, first, _ in enc.targets:
            if (w.user_id, pos) not in todo:
                continue
            texts, choice = _candidates(engine, tl, pos, picks, likert)
            group.append((first, [engine.ids_of(x) for x in texts]))
            history = [p for p in w.items if p < pos]
            meta.append((tl, pos, Prompt(Sample(w.user_id, pos, history, split), enc.input_ids[:first]), texts, choice))
        ids.append(enc.input_ids)
        groups.append(group)
    scores = [sc for per_window in engine.score_windows(ids, groups) for sc in per_window]
    return [_scored_row(engine, tl, pos, split, prompt, texts, choice, sc, picks)
            for (tl, pos, prompt, texts, choice), sc in zip(meta, scores)]


def _scored_row(engine: Engine, tl, pos: int, split: str, prompt, texts: list, choice, sc: list, picks: dict):
    scored = dict(zip(texts, sc))
    row = _row(engine, tl, pos, split, prompt, scored, picks)
    if choice is not None:
        row["choice"] = choices.distribution(choice, [scored[o][0] for o in choice.options])
    return row


def _rows(engine: Engine, prep, chunk: list, split: str, room: int, picks: dict,
          likert: dict | None = None) -> list[dict]:
    """Every likelihood of a batch of targets from one forward: for each target the reference (its
    teacher-forced loss), the allowed ratings, a choice item's options (usertwin.data.choices) and the
    pick-the-real-one candidates, after its prompt."""
    todo = []
    for tl, pos in chunk:
        prompt = engine.prompt(tl, pos, room, prep.lengths[tl.user_id])
        todo.append((tl, pos, prompt) + _candidates(engine, tl, pos, picks, likert))
    scores = engine.score_many([t[2].ids for t in todo], [[engine.ids_of(x) for x in t[3]] for t in todo])
    return [_scored_row(engine, tl, pos, split, prompt, texts, choice, sc, picks)
            for (tl, pos, prompt, texts, choice), sc in zip(todo, scores)]


def _row(engine: Engine, tl, pos: int, split: str, prompt, scored: dict, picks: dict) -> dict:
    item = tl.items[pos]
    ref_total, n = scored[item.continuation]
    row = {"user": tl.user_id, "target_index": pos, "split": split, "collection": item.collection,
           "item": item.prefix, "language": engine.renderer.language(tl),
           "prompt_hash": prompt_hash(prompt.ids),
           "reference": item.continuation, "predictions": [], "loss": round(-ref_total / n, 6), "n_tokens": n,
           "history_len": len(prompt.sample.history), "user_items": len(tl.items), "_prompt": prompt.ids}
    if engine.scale and item.is_rating:
        row["rating"] = engine.distribution([scored[t][0] for t in engine.scale])
    if picks.get((tl.user_id, pos)):
        row["pick"] = _pick([item.continuation] + picks[(tl.user_id, pos)], scored)
    return row


def _pick(cands: list, scored: dict) -> dict:
    """Which candidate the twin finds likeliest per token; the reference is candidate 0."""
    norm = [scored[c][0] / max(1, scored[c][1]) for c in cands]  # length-normalised
    chosen = max(range(len(norm)), key=norm.__getitem__)
    return {"k": len(cands) - 1, "chosen": chosen, "correct": chosen == 0, "scores": [round(x, 4) for x in norm]}


def prompt_hash(ids: list[int]) -> str:
    """A short fingerprint of a prompt's token ids: rows of two runs compare their prompts by it."""
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
