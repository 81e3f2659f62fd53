"""records -> timelines -> splits -> samples or windows, with token lengths and counts; cached.

The cache entry is keyed by the records file's content hash, every config key that shapes the output (the
settings marked `shapes_data` in usertwin.config) and the tokenizer's fingerprint, so a stale cache is never
used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.atomic import atomic_open
from usertwin.config import Config
from usertwin.data import crowd, records
from usertwin.data.applies import facts_of, settle
from usertwin.data.timeline import (
    SPLITS,
    Sample,
    Window,
    WindowStats,
    assign_splits,
    build_timelines,
    build_windows,
    iter_samples,
    loss_targets,
    own_turn_last,
)
from usertwin.errors import UsertwinError
from usertwin.rundir import RunDir
from usertwin.sequences.fit import fit_sample, trim_long_contexts
from usertwin.text.render import Renderer
from usertwin.text.tokens import ItemLengths, load_tokenizer, measure_all, tokenizer_id
from usertwin.version import __version__

CACHE_VERSION = 4  # bump when what prepare builds changes for the same inputs


@dataclass
class SplitStats:
    users: int = 0
    targets: int = 0  # targets that carry loss in this split's sequences
    sequences: int = 0  # samples or windows
    tokens: int = 0  # tokens in those sequences
    history_items: int = 0  # history items shown in all sequences together
    truncated_sequences: int = 0  # sequences that lost history to max_length
    history_dropped: int = 0  # history items cut by max_length (oldest first)
    too_long: int = 0  # targets that do not fit max_length even alone (left out, counted)


@dataclass
class Prepared:
    config: Config
    timelines: list
    splits: dict  # user id -> split label per position
    lengths: dict  # user id -> ItemLengths
    sequences: dict  # split -> list[Sample] or list[Window]
    stats: dict  # split -> SplitStats
    warnings: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # records skipped with --on-error skip
    skipped_items: list = field(default_factory=list)  # items left out of kept records with --on-error skip
    notices: list = field(default_factory=list)  # how settings were settled (data/applies.py); also in warnings
    seconds: float = 0.0
    from_cache: bool = False

    def timeline(self, user_id: str):
        return self._by_user()[user_id]

    def _by_user(self):
        if not hasattr(self, "_index"):
            self._index = {tl.user_id: tl for tl in self.timelines}
        return self._index


def file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path) -> tuple:
    try:
        st = Path(path).stat()
    except OSError:
        return ()
    return st.st_size, st.st_mtime_ns, st.st_ino


def cache_key(cfg: Config, data_hash: str, tok_id: str) -> str:
    shaping = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata["shapes_data"]}
    blob = json.dumps([CACHE_VERSION, __version__, data_hash, tok_id, shaping], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cache_dir(cfg: Config) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if cfg.output_dir:
        return RunDir(cfg.output_dir).cache
    return Path(cfg.data).resolve().parent / ".usertwin-cache"


def prepare(cfg: Config, tokenizer=None, use_cache: bool = True, progress: bool = True) -> Prepared:
    if not cfg.data:
        raise UsertwinError("no data: pass --data RECORDS.jsonl or set `data:` in the config")
    start = time.perf_counter()
    use_cache = use_cache and Path(cfg.data).is_file()  # (anything else: records.load says what is wrong)
    stamp = _stamp(cfg.data)
    data_hash = file_hash(cfg.data) if use_cache else ""  # hashed before reading: the key never outruns the data
    loaded = records.load(cfg.data, on_error=cfg.on_error)
    timelines, warnings = build_timelines(loaded.records)
    cfg, notices = settle(cfg, facts_of(timelines))  # a setting that would be ignored: switch unit, or stop
    warnings = notices + list(loaded.warnings) + warnings
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    renderer = Renderer(cfg, tokenizer)
    splits = assign_splits(timelines, cfg)
    crowd.annotate_split(timelines, splits, cfg.crowd_context)  # before measuring: it is part of each item's line
    cut = trim_long_contexts(timelines, renderer, tokenizer, cfg.max_length)
    if cut:
        warnings.append(f"{cut['items']} item(s) longer than max_length {cfg.max_length} with their whole context (a "
                        "dialogue line's turns: longer than the window_history_fraction share of it): dropped their "
                        f"{cut['turns']} oldest context turn(s) so that they fit (never the target)")
    key = cache_key(cfg, data_hash, tokenizer_id(tokenizer)) if use_cache else ""
    cache_file = _cache_dir(cfg) / f"prepared-{key}.json"
    if use_cache and cache_file.is_file():
        prep = _from_cache(cache_file, cfg, timelines, key)
        if prep is not None:
            prep.warnings, prep.skipped, prep.notices = warnings, list(loaded.skipped), notices
            prep.skipped_items = list(loaded.skipped_items)
            prep.seconds = time.perf_counter() - start
            return prep
        warnings.append(f"the prepare cache {cache_file} was unreadable or did not match the data; rebuilt it")
    lengths = measure_all(renderer, tokenizer, timelines, progress)
    sequences, stats = {}, {}
    for split in SPLITS:
        sequences[split], stats[split] = build_split(cfg, renderer, timelines, splits, lengths, split, tokenizer)
    prep = Prepared(cfg, timelines, splits, lengths, sequences, stats, warnings, list(loaded.skipped),
                    list(loaded.skipped_items), notices)
    if use_cache and _stamp(cfg.data) == stamp:  # the file changed while we read it: do not cache
        _to_cache(cache_file, prep, key)
    prep.seconds = time.perf_counter() - start
    return prep


def build_split(cfg, renderer, timelines, splits, lengths, split, tokenizer=None, epoch: int = 0):
    """Sequences (windows or samples) of one split, and their counts."""
    st = SplitStats()
    out = []
    if cfg.unit == "timeline":
        wst = WindowStats()
        # one target per user gets all the history that fits, as the research scripts' one sample did
        fraction = 1.0 if cfg.one_sample_per_user and split == "train" else cfg.window_history_fraction
        use_history = renderer.use_history and cfg.history_strategy != "none"
        for tl in timelines:
            ln = lengths[tl.user_id]
            ws = build_windows(tl, splits[tl.user_id], split, ln.blocks(), ln.header, ln.join, cfg.max_length,
                               fraction, use_history, wst, ln.follow_blocks(),
                               share_of_room=renderer.use_context and tl.is_dialogue,
                               targets=loss_targets(tl, splits[tl.user_id], split, cfg, epoch))
            out.extend(ws)
            if ws:
                st.users += 1
            for w in ws:
                st.history_items += len(w.items) - len(w.targets)
                if use_history and w.items[0] > 0:  # (without history nothing earlier was cut)
                    st.truncated_sequences += 1
        st.targets, st.sequences, st.tokens = wst.targets, wst.windows, wst.tokens
        st.history_dropped, st.too_long = wst.history_dropped, wst.too_long
        return out, st
    samples = iter_samples(timelines, splits, split, cfg, epoch=epoch)  # cut one by one
    by_user = {tl.user_id: tl for tl in timelines}
    users = set()
    for s in samples:
        fitted = fit_sample(cfg, renderer, by_user[s.user_id], lengths[s.user_id], s, tokenizer)
        if fitted is None:
            st.too_long += 1
            continue
        sample, n_tokens, dropped = fitted
        out.append(sample)
        users.add(s.user_id)
        st.targets += 1
        st.sequences += 1
        st.tokens += n_tokens
        st.history_items += len(sample.history)
        if dropped:
            st.truncated_sequences += 1
            st.history_dropped += dropped
    st.users = len(users)
    return out, st


# ---------------------------------------------------------------- cache


def _seq_to_dict(x) -> dict:
    if isinstance(x, Window):
        return {"user_id": x.user_id, "items": x.items, "targets": x.targets, "split": x.split}
    return {"user_id": x.user_id, "target": x.target, "history": x.history, "split": x.split}


def _to_cache(path: Path, prep: Prepared, key: str) -> None:
    """Written to a temporary name and renamed (complete or absent); `key` inside ties it to its name."""
    payload = {
        "key": key, "version": CACHE_VERSION,
        "splits": prep.splits,
        "lengths": {u: vars(ln) for u, ln in prep.lengths.items()},
        "sequences": {sp: [_seq_to_dict(x) for x in seqs] for sp, seqs in prep.sequences.items()},
        "stats": {sp: dataclasses.asdict(st) for sp, st in prep.stats.items()},
        "unit": prep.config.unit,
    }
    with atomic_open(path) as f:
        json.dump(payload, f, separators=(",", ":"))
    for tmp in path.parent.glob(".prepared-*.tmp"):  # left by a prepare killed while writing (never read)
        try:
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink()
        except OSError:
            pass


def _from_cache(path: Path, cfg: Config, timelines, key: str) -> Prepared | None:
    """The cached Prepared, or None (rebuild) when the file is unreadable, cut off, corrupted, written for
    another key, or does not fit the timelines just loaded."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("key") != key or payload.get("version") != CACHE_VERSION:
            return None
        cls = Window if payload["unit"] == "timeline" else Sample
        if payload["unit"] != cfg.unit:
            return None
        sequences = {sp: [cls(**x) for x in seqs] for sp, seqs in payload["sequences"].items()}
        lengths = {u: ItemLengths(**ln) for u, ln in payload["lengths"].items()}
        stats = {sp: SplitStats(**st) for sp, st in payload["stats"].items()}
        splits = payload["splits"]
        sizes = {tl.user_id: len(tl.items) for tl in timelines}
        if ({u: len(v) for u, v in splits.items()} != sizes or set(lengths) != set(sizes)
                or set(sequences) != set(SPLITS) or set(stats) != set(SPLITS)):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # ValueError: bad JSON or UTF-8
        return None
    prep = Prepared(cfg, timelines, splits, lengths, sequences, stats)
    prep.from_cache = True
    return prep


def skipped_item(problem) -> dict:
    """One item left out with --on_error skip, as the run's data summary lists it."""
    return {"file": str(problem.path), "line": problem.line, "record": problem.record, "user": problem.user,
            "item": problem.item, "field": problem.field, "reason": problem.message}


def summary(prep: Prepared) -> dict:
    """Counts for the run summary / `inspect`: per split and in total."""
    out = {"unit": prep.config.unit, "users": len(prep.timelines),
           "items": sum(len(tl.items) for tl in prep.timelines),
           "skipped_records": len(prep.skipped), "skipped_items": len(prep.skipped_items),
           "skipped_items_listed": [skipped_item(p) for p in prep.skipped_items[:records.MAX_LISTED]],
           "warnings": prep.warnings,
           "splits": {sp: dataclasses.asdict(st) for sp, st in prep.stats.items()},
           "items_per_split": dict(Counter(lab for labels in prep.splits.values() for lab in labels)),
           "context_ends_with_own_turn": sum(own_turn_last(tl) for tl in prep.timelines)}
    if prep.config.crowd_context != "none":
        out["crowd"] = {"mode": prep.config.crowd_context, **crowd.coverage(prep.timelines, prep.splits)}
    return out
