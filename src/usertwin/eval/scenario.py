"""`usertwin predict --scenario DIR`: fill a leaderboard scenario's test file with generated continuations.

A scenario folder (the research scripts' layout; rundir.ScenarioDir names its files) holds `train.json`, the
users' records, and `test_leaderboard.json`, records in the same format whose items have no continuation: the
targets. Every target gets `num_samples` generated texts, written into a copy of the test file as the item's
`continuations`; nothing else of the file changes.

A target's prompt is the one training renders for an item (Twin.built_prompt, i.e. sequences/fit.build_prompt): the profile
(the test record's, else the train record's), and as history the user's train.json items -- only those strictly
earlier than the target when it and all of them carry a timestamp, else all of them (file order is then time
order, as build_timelines reads it) -- chosen and cut to fit by the run's history strategy, as in training. A
user absent from train.json is a cold-start user: profile only.

Each generation is made into an answer as the research scripts cleaned theirs (eval/answers.py: a rating target
gets the rating on the scale, a line of text loses tags, speaker labels and instruction echoes, no text keeps a
half character); the raw generation stays beside it in generations.jsonl ("raw"). An answer empty after cleaning
is drawn again with another seed at a higher temperature (+0.2 a retry, at most 3 retries, at most 1.5), as the
research scripts did; the retries and the answers still empty after them are counted. Sample
i of a target draws with a seed made of (seed, user, target) plus i: the same in any batch and after a resume.
Rows are appended to OUT/generations.jsonl per batch (a killed run resumes after the last whole row); the
filled test file and summary.json are written, atomically, once every target has its row (summary.json's
wall_time_s: this invocation, from reading the scenario to the last write; model loading not included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from usertwin.appended import append_batches, completed_rows, output_lock, progress_bar
from usertwin.atomic import write_json
from usertwin.config import QUEUED, GenerateSettings
from usertwin.data import records
from usertwin.data.facts import rating_scale
from usertwin.data.timeline import Timeline
from usertwin.errors import UsertwinError
from usertwin.eval import answers
from usertwin.rundir import ScenarioDir
from usertwin.sequences.fit import Prompt, prompt_hash

KEY = ("record", "position")
# settings that a split's predict reads but a scenario does not: refused as flags (cli/predict.py), and left out
# of the resume fingerprint, so a run's config file holding them never blocks a resume
UNREAD = {"data": "reads the users' records from the scenario's train.json",
          "unit": "builds one prompt per test item (the unit shapes training sequences only)",
          **dict.fromkeys(("max_samples_per_user", "one_sample_per_user", "temporal_augmentation",
                           "min_history_length", "target_draw", "skip_own_turn_targets"),
                          "generates for every test item (this setting chooses training targets)")}
RETRIES, RETRY_STEP, RETRY_CAP = 3, 0.2, 1.5  # the research scripts' empty-output retries


@dataclass(frozen=True)
class Options:
    """How a scenario is filled beyond the generation settings: the research scripts' --max_retries,
    --retry_temperature_increment and --max_chars_per_turn (each target's context turns cut to that many
    characters, the last 3 being "...", as the dialogue scripts cut them; None: not cut)."""

    max_retries: int = RETRIES
    retry_step: float = RETRY_STEP
    max_chars_per_turn: int | None = None


@dataclass
class Target:
    """One item of the test file to fill."""

    record: records.Record  # its test record
    item: records.Item
    raw: dict  # the item as the file holds it: where its continuations go
    train: Timeline | None  # the user's train.json timeline; None: a cold-start user

    @property
    def key(self) -> tuple:
        return self.record.index, self.item.position


@dataclass
class Scenario:
    folder: Path
    document: object  # the test file as parsed JSON (a list of records, or one record): written back filled
    targets: list  # list[Target], file order
    users: list  # test users, file order
    cold_users: list  # test users absent from train.json
    train_users: int
    scale: list | None = None  # the allowed ratings as written (answers.rating_answer): None without ratings


def check_folders(folder, out_dir) -> None:
    """Before a model is loaded: the scenario's files are there and the output cannot overwrite them."""
    files = ScenarioDir(folder)
    for path in (files.train, files.test):
        if not path.is_file():
            raise UsertwinError(f"{folder} is not a scenario folder: {path} is missing (a scenario holds "
                                "train.json, the users' records, and test_leaderboard.json, the targets)")
    if Path(out_dir).resolve() == files.path.resolve():
        raise UsertwinError(f"-o {out_dir} is the scenario folder itself: its test_leaderboard.json would be "
                            "overwritten; write to another folder")


def read_scenario(folder, twin) -> Scenario:
    """The test file's targets, each with its user's train.json timeline (read and trimmed as training reads
    records)."""
    files = ScenarioDir(folder)
    tests = records.load(files.test, targets=True).records
    raws, document = _raw_records(files.test)
    train = {tl.user_id: tl for tl in twin.timelines_of(files.train)}
    targets = []
    for rec, raw in zip(tests, raws):
        items = [it for coll in raw["task"]["task_behavior_collections"] for it in coll["data"]]
        targets += [Target(rec, item, raw_item, train.get(rec.user_id)) for item, raw_item in zip(rec.items, items)]
    users = list(dict.fromkeys(rec.user_id for rec in tests))
    _pin_languages(twin, tests, train)
    return Scenario(Path(folder), document, targets, users, [u for u in users if u not in train], len(train),
                    _scale(twin, tests, train))


def _scale(twin, tests: list, train: dict) -> list | None:
    """The ratings a rating answer may be, as they are written: the test file's declared task.rating_scale
    (with the decimals the data writes), else the twin's scale, else the one train.json's ratings show."""
    try:
        written = twin.scale
    except UsertwinError:  # a base model (--model): no data of its own
        written = None
    written = written or rating_scale(list(train.values()))
    declared = sorted({float(v) for rec in tests for v in (rec.rating_scale or ())})
    if not declared:
        return written
    decimals = max((len(x.partition(".")[2]) for x in written or ()),
                   default=0 if all(v.is_integer() for v in declared) else 1)
    return [f"{v:.{decimals}f}" for v in declared]


def collection_types(folder) -> set[str]:
    """The collection types of a scenario's test file (which seed system it comes from, when nothing names one);
    none when it is missing (check_folders says so)."""
    if not ScenarioDir(folder).test.is_file():
        return set()
    return {it.collection for rec in records.load(ScenarioDir(folder).test, targets=True).records for it in rec.items}


def _raw_records(path: Path) -> tuple[list, object]:
    """The test file's records as parsed JSON, and the document holding them (records.load checked them)."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:  # JSON Lines: written back as a list
        document = [raw for _, raw, _ in records.iter_raw(path)]
    return (document if isinstance(document, list) else [document]), document


def _pin_languages(twin, tests: list, train: dict) -> None:
    """The prompt language of a user is detected once (renderer caches it by user id), from what training
    would see: the user's train timeline, or for a cold-start user the test record -- never from whichever
    target happens to come first, so a resumed run renders as the first one did."""
    for rec in tests:
        twin.language_of(train.get(rec.user_id)
                                 or Timeline(rec.user_id, rec.profile, rec.task, rec.language, rec.items))


# ---------------------------------------------------------------- one target's prompt


def earlier(items: list, target: records.Item) -> list:
    """A target's history: the items strictly before its time when it and all of them carry a timestamp, else
    all of them."""
    if target.timestamp is None or any(it.timestamp is None for it in items):
        return list(items)
    return [it for it in items if it.timestamp < target.timestamp]


def cut_turns(context: list, max_chars: int | None) -> list:
    """Each turn's content cut to `max_chars` characters, its last 3 then "..." (the seeds' --max_chars_per_turn)."""
    if max_chars is None:
        return context
    return [{**turn, "content": turn["content"][:max(0, max_chars - 3)] + "..."}
            if isinstance(turn.get("content"), str) and len(turn["content"]) > max_chars else turn
            for turn in context]


def target_timeline(t: Target, twin, options: Options = Options()) -> Timeline:
    """The user's history for this target, then the target as its last item (a fresh copy: trimming its
    context to fit max_length, as training trims items, changes only this copy)."""
    base = t.train
    history = earlier(base.items, t.item) if base else []  # a prefix of the time-ordered train timeline
    rec = t.record
    target = dataclasses.replace(t.item, position=len(history),
                                 context=cut_turns(t.item.context, options.max_chars_per_turn))
    tl = Timeline(rec.user_id, rec.profile or (base.profile if base else {}), rec.task or (base.task if base else ""),
                  rec.language or (base.language if base else None), history, rec.index, rec.role,
                  context_cut={p: n for p, n in (base.context_cut if base else {}).items() if p < len(history)},
                  crowd={p: c for p, c in (base.crowd if base else {}).items() if p < len(history)})
    # crowd context: the target counts every rating of the train file's other users (data/crowd.py)
    tl = twin.with_item(tl, target)
    return twin.trimmed(tl) if t.item.context else tl


def target_prompt(t: Target, twin, room: int, options: Options = Options()) -> Prompt:
    tl = target_timeline(t, twin, options)
    return twin.built_prompt(tl, len(tl.items) - 1, room)


def target_seed(seed: int, t: Target) -> int:
    """A stable hash of (seed, user, target), so targets never share random numbers."""
    return int(hashlib.sha256(f"{seed}:{t.record.user_id}:{t.record.index}:{t.item.position}".encode())
               .hexdigest()[:15], 16)


# ---------------------------------------------------------------- generation


def retry_temperature(temperature: float, k: int, step: float = RETRY_STEP) -> float:
    """The temperature of retry k: higher by `step` each time, up to RETRY_CAP (or the asked one above it)."""
    return max(temperature, min(temperature + step * k, RETRY_CAP))


def _plain(text: str) -> str:
    return answers.whole_characters(text).strip()


def generate_nonempty(twin, prompts: list, gen: GenerateSettings, seeds: list, options: Options = Options(),
                      cleaners: list | None = None, running: int | None = None) -> tuple[list, list, list]:
    """`gen.num_samples` answers per prompt (`cleaners[j]`: prompt j's text -> its answer; default: the text
    without a cut last character, stripped), those empty after cleaning drawn again (see the module's doc); the
    retries each prompt took; and the raw texts the answers came from. Retry k of sample i draws with
    seed + k * num_samples + i: never a seed of a first draw. `running`: decoded continuously, at most that many
    prompts at once (Twin.generate_after)."""
    cleaners = cleaners or [_plain] * len(prompts)
    raw = [[answers.whole_characters(x) for x in row] for row in twin.generate_after(prompts, gen, seeds,
                                                                                        running=running)]
    texts = [[cleaners[j](x) for x in row] for j, row in enumerate(raw)]
    retries = [0] * len(prompts)
    for k in range(1, options.max_retries + 1):
        empty = [(j, i) for j, row in enumerate(texts) for i, text in enumerate(row) if not text.strip()]
        if not empty:
            break
        again = dataclasses.replace(gen, num_samples=1,
                                    temperature=retry_temperature(gen.temperature, k, options.retry_step))
        redo = twin.generate_after([prompts[j] for j, _ in empty], again,
                                   [seeds[j] + k * gen.num_samples + i for j, i in empty], running=running)
        for (j, i), row in zip(empty, redo):
            raw[j][i] = answers.whole_characters(row[0])
            texts[j][i] = cleaners[j](raw[j][i])
            retries[j] += 1
    return texts, retries, raw


def cleaner(t: Target, scale):
    """The function that makes a generated text the target's answer (eval/answers.py)."""
    speakers = [turn.get("source") or turn.get("role") or "" for turn in t.item.context]
    speakers.append(str((t.record.profile or {}).get("name") or ""))
    return lambda text: answers.clean(text, t.item.collection, scale, speakers)


def _rows(twin, chunk: list, gen: GenerateSettings, seed: int, fingerprint: str, options: Options,
          scale, running: int | None = None) -> list[dict]:
    prompts = [target_prompt(t, twin, gen.max_new_tokens, options) for t in chunk]
    seeds = [target_seed(seed, t) for t in chunk]
    texts, retries, raw = generate_nonempty(twin, [p.ids for p in prompts], gen, seeds, options,
                                            [cleaner(t, scale) for t in chunk], running)
    # "raw": the generations as decoded, beside the answers made of them ("continuations")
    return [{"record": t.record.index, "position": t.item.position, "user": t.record.user_id,
             "collection": t.item.collection, "item": t.item.prefix, "cold_start": t.train is None,
             "history_len": len(p.sample.history), "prompt_hash": prompt_hash(p.ids), "seed": s,
             "settings": fingerprint, "continuations": out, "raw": r_out, "retries": r,
             "empty": sum(not x.strip() for x in out), "cleaned": sum(x != y.strip() for x, y in zip(out, r_out))}
            for t, p, s, out, r_out, r in zip(chunk, prompts, seeds, texts, raw, retries)]


# ---------------------------------------------------------------- the run


def settings_of(twin, gen: GenerateSettings, seed: int, source: dict, options: Options = Options()) -> dict:
    """What the generations depend on (summary.json's "settings"; a resumed run must match them)."""
    cfg = twin.cfg
    generation = {k: v for k, v in dataclasses.asdict(gen).items() if k not in ("batch_size", "limit", "pick")}
    return {**source, "seed": seed, "generation": generation,
            "retry": {"max_retries": options.max_retries, "temperature_step": options.retry_step,
                      "temperature_cap": RETRY_CAP},
            "max_chars_per_turn": options.max_chars_per_turn,
            "prompt": {k: getattr(cfg, k) for k in ("ablation", "prompt_style", "history_strategy", "max_length",
                                                      "language")}}


def _fingerprint(twin, settings: dict) -> str:
    read = {k: v for k, v in twin.cfg.to_dict().items() if k not in UNREAD}
    blob = json.dumps([settings, read], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def predict_scenario(twin, folder, out_dir, gen: GenerateSettings, *, seed: int, source: dict,
                     progress: bool = True, options: Options = Options(), batching: str = "auto") -> dict:
    """Fill every target of the scenario in `folder` not yet in OUT/generations.jsonl; once all are there, write
    OUT/test_leaderboard.json and OUT/summary.json. Returns the summary (`complete`: whether they were written).
    `batching`: how generation batches (Twin.batching; the texts are the same)."""
    start = time.monotonic()
    check_folders(folder, out_dir)
    scen = read_scenario(folder, twin)
    # the temperature and batch size decided once: the fingerprint holds them
    gen = twin.sized(gen.resolved(), prompts=len(scen.targets))
    out = ScenarioDir(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    settings = settings_of(twin, gen, seed, source, options)
    fingerprint = _fingerprint(twin, settings)
    with output_lock(out.generations, "scenario output"):
        done = completed_rows(out.generations, KEY)
        _check_resumable(done, scen, fingerprint, out.generations)
        todo = [t for t in scen.targets if t.key not in done]
        if gen.limit is not None:
            todo = todo[:max(0, gen.limit - len(done))]
        bar = progress_bar(len(todo), "scenario", "target") if progress else None
        running = twin.running(batching, gen)
        size = gen.batch_size * QUEUED if running else gen.batch_size  # continuous: prompts join as rows finish
        chunks = (todo[i:i + size] for i in range(0, len(todo), size))
        written = append_batches(out.generations, chunks, lambda c: _rows(twin, c, gen, seed, fingerprint, options,
                                                                           scen.scale, running), bar)
        rows = completed_rows(out.generations, KEY)
        summary = _summary(scen, rows, settings, written, len(done), time.monotonic() - start)
        if summary["complete"]:
            write_json(out.test, _filled(scen, rows))
            write_json(out.summary, summary)
    return summary


def _check_resumable(done: dict, scen: Scenario, fingerprint: str, path: Path) -> None:
    targets = {t.key: t for t in scen.targets}
    for key, row in done.items():
        t = targets.get(key)
        if t is None or row.get("user") != t.record.user_id or row.get("settings") != fingerprint:
            what = "another scenario" if t is None or row.get("user") != t.record.user_id else "other settings"
            raise UsertwinError(f"{path} holds rows of {what} (record {key[0]}, user {row.get('user')!r}): "
                                "write to another folder with -o, or delete that file to start over")


def _filled(scen: Scenario, rows: dict):
    for t in scen.targets:
        t.raw["continuations"] = rows[t.key]["continuations"]
    return scen.document


def _summary(scen: Scenario, rows: dict, settings: dict, written: int, resumed: int, seconds: float) -> dict:
    mine = [rows[t.key] for t in scen.targets if t.key in rows]
    return {"scenario": str(scen.folder), "complete": len(mine) == len(scen.targets),
            "users": len(scen.users), "targets": len(scen.targets), "targets_done": len(mine),
            "cold_start_users": len(scen.cold_users), "train_users": scen.train_users,
            "generated_now": written, "resumed": resumed,
            "retries": sum(r["retries"] for r in mine), "empty_after_retries": sum(r["empty"] for r in mine),
            "cleaned": sum(r.get("cleaned", 0) for r in mine),
            "settings": settings, "wall_time_s": round(seconds, 3)}


def summary_lines(summary: dict, out_dir) -> list[str]:
    """What the command prints."""
    s, out = summary, ScenarioDir(out_dir)
    counts = (f"{s['targets']} targets of {s['users']} users ({s['cold_start_users']} cold-start); "
              f"{s['generated_now']} generated now, {s['resumed']} from an earlier run; {s['cleaned']} answer(s) "
              f"cleaned (raw texts in {out.generations}); {s['retries']} empty answer(s) drawn again, "
              f"{s['empty_after_retries']} still empty")
    if not s["complete"]:
        return [counts, f"{s['targets_done']} of {s['targets']} targets done (rows in {out.generations}); run "
                        "the command again (without --limit) to finish and write the filled test file"]
    return [counts, f"wrote {out.test} and {out.summary}"]
