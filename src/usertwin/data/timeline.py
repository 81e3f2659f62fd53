"""Timelines, splits, history strategies, sampling modes and timeline windows.

Everything here is a pure function of its inputs plus a seed. Items are referred to by their *position*
in the user's timeline (time order, ties broken by file order); a target's history only ever holds
positions strictly smaller than the target's own.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from usertwin.config import Config, SplitSettings
from usertwin.errors import UsertwinError

SPLITS = ("train", "val", "test")
HISTORY_STRATEGIES = ("all_previous", "random", "fixed_ratio", "fixed_count", "none")


@dataclass
class Timeline:
    """All of one user's items in time order."""

    user_id: str
    profile: dict
    task: str
    language: str | None
    items: list  # list[records.Item], time order
    record_index: int = 0
    role: str = "user"  # the record's task.role: how the prompt names the twin

    @functools.cached_property
    def is_dialogue(self) -> bool:
        return any(it.collection in ("dialogue", "conversation") for it in self.items)


@dataclass
class Sample:
    """One (profile, history, context, prefix) -> target pair, by positions in a timeline."""

    user_id: str
    target: int
    history: list  # positions, increasing, all < target
    split: str = "train"

    def items_and_targets(self) -> tuple[list[int], list[int]]:
        """The positions to render in order, and those of them that carry loss."""
        return list(self.history) + [self.target], [self.target]


@dataclass
class Window:
    """A contiguous stretch of a timeline: `items` in order, of which `targets` carry loss."""

    user_id: str
    items: list  # positions, increasing
    targets: list  # subset of items
    split: str = "train"

    def items_and_targets(self) -> tuple[list[int], list[int]]:
        """The positions to render in order, and those of them that carry loss."""
        return list(self.items), list(self.targets)


# ---------------------------------------------------------------- timelines


def build_timelines(records) -> tuple[list[Timeline], list[str]]:
    """Records -> one timeline per user id; returns (timelines, warnings).

    Items with timestamps are sorted by time (stable: ties keep file order). If any item of a user has no
    timestamp, file order is the time order. Records sharing a user id are merged (with a warning).
    """
    warnings: list[str] = []
    by_user: dict[str, Timeline] = {}
    for rec in records:
        tl = by_user.get(rec.user_id)
        if tl is None:
            by_user[rec.user_id] = Timeline(rec.user_id, rec.profile, rec.task, rec.language, list(rec.items),
                                            rec.index, rec.role)
        else:
            warnings.append(f"user {rec.user_id!r}: records {tl.record_index} and {rec.index} share this user "
                            f"id; merged their items into one timeline (profile from record {tl.record_index})")
            tl.items.extend(rec.items)
    unordered, single = [], []
    for tl in by_user.values():
        if len(tl.items) == 1:
            single.append(tl.user_id)
        if all(it.timestamp is not None for it in tl.items):
            keys = [it.timestamp for it in tl.items]
            if any(b < a for a, b in zip(keys, keys[1:])):
                unordered.append(tl.user_id)
                tl.items = sorted(tl.items, key=lambda it: it.timestamp)  # sorted() is stable
    if unordered:
        warnings.append(f"{len(unordered)} user(s) had items out of time order in the file ({_some(unordered)}); "
                        "sorted by timestamp (ties keep file order)")
    if single:
        warnings.append(f"{len(single)} user(s) have a single item ({_some(single)}): kept, with no history; "
                        "in the time split it is a train target")
    return list(by_user.values()), warnings


def _some(users: list, n: int = 3) -> str:
    """'u1', 'u2', 'u3' and 4 more."""
    shown = ", ".join(repr(u) for u in users[:n])
    return shown + (f" and {len(users) - n} more" if len(users) > n else "")


def is_own_turn(turn: dict, name: str | None) -> bool:
    """The seeds' convention: a context turn is the twin's own when its source is `user` or the profile's
    name; role/content turns use `assistant` for the twin."""
    source = turn.get("source")
    if source is not None:
        s = str(source).strip()
        return s.lower() == "user" or (bool(name) and s == name)
    return turn.get("role") == "assistant"


def own_turn_last(tl: Timeline) -> int:
    """Items whose context ends with the twin's own turn. The seeds dropped them silently; we keep them
    (the model then continues its own turn) and report how many there are."""
    name = str(tl.profile.get("name", "")).strip() if isinstance(tl.profile, dict) else ""
    return sum(1 for it in tl.items if it.context and is_own_turn(it.context[-1], name))


# ---------------------------------------------------------------- splits


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_labels(n: int, cfg: SplitSettings) -> list[str]:
    """Per-user time split of n items: the oldest are train, then val, the latest are test."""
    n_test = _round_half_up(n * cfg.test_ratio)
    n_val = _round_half_up(n * cfg.val_ratio)
    if n_test + n_val > n:
        n_val = max(0, n - n_test)
    n_train = n - n_val - n_test
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def assign_splits(timelines: list[Timeline], cfg: SplitSettings) -> dict[str, list[str]]:
    """user id -> split label of each timeline position."""
    train = cfg.train_share()
    total = train + cfg.val_ratio + cfg.test_ratio
    if abs(total - 1.0) > 1e-6:
        raise UsertwinError(f"split ratios must add up to 1 (train {train} + val {cfg.val_ratio} + "
                            f"test {cfg.test_ratio} = {total:g})")
    if cfg.split_mode == "time":
        return {tl.user_id: split_labels(len(tl.items), cfg) for tl in timelines}
    if cfg.split_mode == "user":
        users = sorted(tl.user_id for tl in timelines)
        random.Random(cfg.seed).shuffle(users)
        labels_by_rank = split_labels(len(users), cfg)
        user_split = dict(zip(users, labels_by_rank))
        return {tl.user_id: [user_split[tl.user_id]] * len(tl.items) for tl in timelines}
    raise UsertwinError(f"unknown split mode {cfg.split_mode!r}: choose 'time' (per user, in time order) or 'user' "
                        "(held-out users)")


# ---------------------------------------------------------------- history strategies


def _rng(*parts) -> random.Random:
    """A private RNG seeded from the parts, so that results do not depend on iteration order."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def select_history(tl: Timeline, target: int, cfg: Config, seed: int) -> list[int]:
    """Positions shown as history for `target`, by the seeds' strategy names; all < target."""
    if not cfg.parts()[1] or cfg.history_strategy == "none" or target == 0:
        return []
    n = len(tl.items)
    s = cfg.history_strategy
    if s == "all_previous":
        hist = list(range(target))
    elif s == "fixed_ratio":
        # the seeds' meaning: the first history_ratio share of the user's items is the history
        count = int(n * cfg.history_ratio)
        hist = list(range(min(target, count)))
    elif s == "fixed_count":
        k = cfg.fixed_history_count if cfg.fixed_history_count is not None else min(5, n // 2)
        hist = list(range(max(0, target - k), target))
    elif s == "random":
        k = min(target, max(1, int(target * cfg.history_ratio)))
        hist = sorted(_rng(seed, tl.user_id, target).sample(range(target), k))
    else:
        raise UsertwinError(f"unknown history_strategy {s!r}; choose one of {', '.join(HISTORY_STRATEGIES)}")
    cap = cfg.max_history_items
    if tl.is_dialogue:
        cap = min(cap, cfg.max_context_turns) if cap is not None else cfg.max_context_turns
    if cap is not None and len(hist) > cap:
        hist = hist[len(hist) - cap:]
    return hist


# ---------------------------------------------------------------- samples


def target_positions(labels: list[str], split: str) -> list[int]:
    return [i for i, lab in enumerate(labels) if lab == split]


def choose_targets(tl: Timeline, candidates: list[int], cfg: Config, seed: int) -> list[int]:
    """Which of a user's candidate targets become samples, by the seeds' sampling modes."""
    if cfg.one_sample_per_user:
        return candidates[-1:]
    if cfg.temporal_augmentation:
        candidates = [t for t in candidates if t >= cfg.min_history_length]
    if cfg.max_samples_per_user is not None and len(candidates) > cfg.max_samples_per_user:
        picked = _rng(seed, tl.user_id, "targets").sample(candidates, cfg.max_samples_per_user)
        return sorted(picked)
    return candidates


def build_samples(timelines, splits, split: str, cfg: Config, epoch: int = 0) -> list[Sample]:
    """Samples of one split. Training samples are drawn with seed sample_seed + epoch (re-sampling per epoch);
    validation and test use every target of the split, with history from all strictly earlier items."""
    return list(iter_samples(timelines, splits, split, cfg, epoch))


def iter_samples(timelines, splits, split: str, cfg: Config, epoch: int = 0):
    """build_samples one at a time: a consumer that cuts each history to max_length at once (prepare) never
    holds every uncut history of a long timeline (one user with 20,000 items: ~10^8 positions)."""
    seed = cfg.sample_seed + epoch
    for tl in timelines:
        cands = target_positions(splits[tl.user_id], split)
        if not cands:
            continue
        if split == "train":
            targets = choose_targets(tl, cands, cfg, seed)
        else:
            targets = cands
        for t in targets:
            if cfg.one_sample_per_user and split == "train":
                hist = list(range(t)) if cfg.parts()[1] else []
            else:
                hist = select_history(tl, t, cfg, seed)
            yield Sample(tl.user_id, t, hist, split)


def resample(timelines, splits, cfg: Config, epoch: int) -> list[Sample]:
    """A fresh per-user draw of training samples for `epoch` (seeded by sample_seed + epoch)."""
    return build_samples(timelines, splits, "train", cfg, epoch=epoch)


# ---------------------------------------------------------------- timeline windows


@dataclass
class WindowStats:
    windows: int = 0
    targets: int = 0
    too_long: int = 0  # targets that cannot fit max_length even without history (skipped, reported)
    history_dropped: int = 0  # history items that did not fit before a window's first target
    tokens: int = 0
    reasons: Counter = field(default_factory=Counter)


def build_windows(tl: Timeline, labels: list[str], split: str, lengths, header_len: int, join_len: int,
                  max_length: int, history_fraction: float = 0.5, use_history: bool = True,
                  stats: WindowStats | None = None) -> list[Window]:
    """Cut one timeline into windows that fit `max_length` tokens.

    `lengths[i]` is the token length of item i rendered as a block (prompt + target); a sequence of k items
    costs header_len + sum(lengths) + (k - 1) * join_len. Every target of `split` is a target in exactly one
    window. A window starts with up to `history_fraction * max_length` tokens of the most recent earlier
    items (history only), then takes targets in order while they fit; so every target sees at least that
    much earlier history (or all of it), and the window's later targets see more.
    """
    stats = stats if stats is not None else WindowStats()
    targets = target_positions(labels, split)
    windows: list[Window] = []
    k = 0
    while k < len(targets):
        first = targets[k]
        base = header_len + lengths[first]
        if base > max_length:
            stats.too_long += 1
            stats.reasons["target longer than max_length"] += 1
            k += 1
            continue
        hist: list[int] = []
        used = base
        if use_history:
            budget = max(history_fraction * max_length, 0)
            i = first - 1
            while i >= 0 and used + lengths[i] + join_len <= max_length and \
                    used - base + lengths[i] + join_len <= budget:
                hist.append(i)
                used += lengths[i] + join_len
                i -= 1
            hist.reverse()
            stats.history_dropped += (hist[0] if hist else first)
        window_targets = [first]
        k += 1
        if use_history:
            # later targets bring the non-target items between them along (as history)
            while k < len(targets):
                nxt = targets[k]
                extra = sum(lengths[j] + join_len for j in range(window_targets[-1] + 1, nxt + 1))
                if used + extra > max_length:
                    break
                used += extra
                window_targets.append(nxt)
                k += 1
        items = hist + list(range(first, window_targets[-1] + 1)) if use_history else [first]
        windows.append(Window(tl.user_id, items, window_targets, split))
        stats.windows += 1
        stats.targets += len(window_targets)
        stats.tokens += used
    return windows


def window_history(window: Window) -> dict[int, list[int]]:
    """For each target of a window, the positions it sees as history (every earlier item of the window)."""
    out = {}
    for j, pos in enumerate(window.items):
        if pos in window.targets:
            out[pos] = window.items[:j]
    return out
