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
    choice_sets: dict = field(default_factory=dict)  # the record's task.likert / task.choices (data/choices.py)
    rating_scale: tuple | None = None  # the record's task.rating_scale, when declared (data/facts.py)

    @functools.cached_property
    def is_dialogue(self) -> bool:
        return any(is_dialogue_item(it) for it in self.items)

    # position -> oldest context turns dropped to fit max_length (the rendering marks the cut); the last field
    context_cut: dict = field(default_factory=dict)
    # position -> crowd.Crowd: other users' ratings of the item (the crowd_context setting; data/crowd.py)
    crowd: dict = field(default_factory=dict)

    @functools.cached_property
    def conversations(self) -> Conversations:
        return link_conversations(self)

    def relink(self) -> None:
        """Forget the conversation links (after contexts were cut: they are recomputed from the cut ones)."""
        self.__dict__.pop("conversations", None)


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
                                            rec.index, rec.role, rec.choice_sets, rec.rating_scale)
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
    """The research scripts' convention (the scripts usertwin replaces): a context turn is the twin's own when its source is `user` or the profile's
    name; role/content turns use `assistant` for the twin."""
    source = turn.get("source")
    if source is not None:
        s = str(source).strip()
        return s.lower() == "user" or (bool(name) and s == name)
    return turn.get("role") == "assistant"


def own_turn_last(tl: Timeline) -> int:
    """Items whose context ends with the twin's own turn. The research scripts usertwin replaces dropped them silently; we keep them
    (the model then continues its own turn) and report how many there are."""
    name = _profile_name(tl)
    return sum(1 for it in tl.items if it.context and is_own_turn(it.context[-1], name))


def _profile_name(tl: Timeline) -> str:
    return str(tl.profile.get("name", "")).strip() if isinstance(tl.profile, dict) else ""


def after_own_turn(tl: Timeline, position: int) -> bool:
    """The item's last non-empty context turn is the twin's own: the research scripts' extraction
    (data_loader.extract_training_samples) skipped empty turns, then made no sample of such an item."""
    said = [t for t in tl.items[position].context or () if str(t.get("content", "")).strip()]
    return bool(said) and is_own_turn(said[-1], _profile_name(tl))


# ---------------------------------------------------------------- conversations


DIALOGUE_COLLECTIONS = ("dialogue", "conversation")


def is_dialogue_item(item) -> bool:
    return item.collection in DIALOGUE_COLLECTIONS


@dataclass
class Conversations:
    """How a timeline's dialogue items share conversations, so that each turn can be rendered once.

    new_from[i]: item i continues the conversation of item i-1, and its context turns from this index on are
    new (the earlier ones are item i-1's context and line); None: item i opens a conversation (or is no
    dialogue item). start[i]: the position of the first item of item i's conversation.
    """

    new_from: list
    start: list

    def linked(self, i: int) -> bool:
        return self.new_from[i] is not None

    def chain(self, q: int, p: int) -> bool:
        """Whether items q < p are of one conversation (every item after q up to p continues it)."""
        return self.start[p] <= q < p


def link_conversations(tl: Timeline) -> Conversations:
    name = _profile_name(tl)
    new_from, start = [], []
    for i, it in enumerate(tl.items):
        k = _continues(tl.items[i - 1], it, name) if i else None
        new_from.append(k)
        start.append(start[i - 1] if k is not None else i)
    return Conversations(new_from, start)


def _profile_name(tl: Timeline) -> str:
    return str(tl.profile.get("name", "")).strip() if isinstance(tl.profile, dict) else ""


def _continues(prev, item, name: str) -> int | None:
    """Where `item`'s new context turns start when its context extends prev's context + prev's line, else None.

    The plain case is a prefix match. A context cut to fit max_length (oldest turns dropped) still links when
    it overlaps the end of prev's turns by two turns or more, or when it holds all of them; one shared turn
    alone (the twin's line) is too weak a sign: a new conversation may open with the same words.
    """
    if not (is_dialogue_item(prev) and is_dialogue_item(item)) or not item.context:
        return None
    a, b = prev.metadata.get("conversation_id"), item.metadata.get("conversation_id")
    if a is not None and b is not None and a != b:
        return None
    known = list(prev.context) + [{"own": True, "content": prev.continuation}]
    ctx = item.context
    for end in _line_ends(ctx, prev.continuation, name, len(known)):
        n = min(end, len(known))
        if all(_same(x, y, name) for x, y in zip(ctx[end - n:end], known[len(known) - n:])):
            if n == len(known) or n == end and n >= 2:
                return end
    return None


def _line_ends(ctx: list, line: str, name: str, expected: int):
    """Candidate ends (exclusive) of prev's line in ctx: where a prefix match puts it first, then the rest."""
    hits = [j + 1 for j, t in enumerate(ctx) if is_own_turn(t, name) and t.get("content") == line]
    return sorted(hits, key=lambda e: (e != expected, e))


def _same(turn: dict, known: dict, name: str) -> bool:
    if known.get("own"):
        return is_own_turn(turn, name) and turn.get("content") == known["content"]
    return turn == known


# ---------------------------------------------------------------- splits


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_labels(n: int, cfg: SplitSettings) -> list[str]:
    """Per-user time split of n items: the oldest are train, then val, the latest are test."""
    n_test = _round_half_up(n * cfg.test_ratio)
    n_val = _round_half_up(n * cfg.val_ratio)
    if cfg.val_rounding == "seeds" and n:  # their split_train_val: int(n * (1 - v)) train, at least 1
        n_val = n - max(1, int(n * (1 - cfg.val_ratio)))
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


def history_limit(tl: Timeline, target: int) -> int:
    """History is drawn from the positions before this one: for a dialogue line, the items before its
    conversation (the conversation's own earlier lines are its context, not history)."""
    return tl.conversations.start[target] if tl.is_dialogue else target


def select_history(tl: Timeline, target: int, cfg: Config, seed: int) -> list[int]:
    """Positions shown as history for `target`, by the research scripts' strategy names; all before its conversation."""
    limit = history_limit(tl, target)
    if not cfg.parts()[1] or cfg.history_strategy == "none" or limit == 0:
        return []
    n = len(tl.items)
    s = cfg.history_strategy
    if s == "all_previous":
        hist = list(range(limit))
    elif s == "fixed_ratio":
        # as the research scripts meant it: the first history_ratio share of the user's items is the history
        count = int(n * cfg.history_ratio)
        hist = list(range(min(limit, count)))
    elif s == "fixed_count":
        k = cfg.fixed_history_count if cfg.fixed_history_count is not None else min(5, n // 2)
        hist = list(range(max(0, limit - k), limit))
    elif s == "random":
        k = min(limit, max(1, int(limit * cfg.history_ratio)))
        hist = sorted(_rng(seed, tl.user_id, target).sample(range(limit), k))
    else:
        raise UsertwinError(f"unknown history_strategy {s!r}; choose one of {', '.join(HISTORY_STRATEGIES)}")
    cap = cfg.max_history_items
    if cap is not None and len(hist) > cap:
        hist = hist[len(hist) - cap:]
    return hist


# ---------------------------------------------------------------- samples


def target_positions(labels: list[str], split: str) -> list[int]:
    return [i for i, lab in enumerate(labels) if lab == split]


def choose_targets(tl: Timeline, candidates: list[int], cfg: Config, seed: int) -> list[int]:
    """Which of a user's candidate training targets carry loss, by the research scripts' sampling modes (both
    units: a sample per chosen target, or windows in which only the chosen targets carry loss)."""
    if cfg.temporal_augmentation:
        candidates = [t for t in candidates if t >= cfg.min_history_length]
    if cfg.one_sample_per_user:
        return candidates[-1:]
    if cfg.max_samples_per_user is not None and cfg.target_draw == "latest":
        return candidates[-cfg.max_samples_per_user:]
    if cfg.max_samples_per_user is not None and len(candidates) > cfg.max_samples_per_user:
        picked = _rng(seed, tl.user_id, "targets").sample(candidates, cfg.max_samples_per_user)
        return sorted(picked)
    return candidates


def loss_targets(tl: Timeline, labels: list[str], split: str, cfg: Config, epoch: int = 0) -> list[int]:
    """The positions of `split` that carry loss: training targets as the sampling modes choose them (drawn
    with sample_seed + epoch), every validation and test target."""
    cands = target_positions(labels, split)
    if cfg.skip_own_turn_targets and split != "test":  # the seeds had no sample of these, to train or validate on
        cands = [t for t in cands if not after_own_turn(tl, t)]
    if split != "train" or not cands:
        return cands
    return choose_targets(tl, cands, cfg, cfg.sample_seed + epoch)


def build_samples(timelines, splits, split: str, cfg: Config, epoch: int = 0) -> list[Sample]:
    """Samples of one split. Training samples are drawn with seed sample_seed + epoch (re-sampling per epoch);
    validation and test use every target of the split, with history from all strictly earlier items."""
    return list(iter_samples(timelines, splits, split, cfg, epoch))


def iter_samples(timelines, splits, split: str, cfg: Config, epoch: int = 0):
    """build_samples one at a time: a consumer that cuts each history to max_length at once (prepare) never
    holds every uncut history of a long timeline (one user with 20,000 items: ~10^8 positions)."""
    seed = cfg.sample_seed + epoch
    for tl in timelines:
        for t in loss_targets(tl, splits[tl.user_id], split, cfg, epoch):
            yield Sample(tl.user_id, t, select_history(tl, t, cfg, seed), split)


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
                  stats: WindowStats | None = None, follow=None, share_of_room: bool = False,
                  targets: list[int] | None = None) -> list[Window]:
    """Cut one timeline into windows that fit `max_length` tokens.

    `lengths[i]` is the token length of item i rendered as a block (prompt + target) where it opens a
    sequence or a conversation; `follow[i]`, when not None, its length right after item i-1 of the same
    conversation (only the turns new since then). A sequence of k items costs header_len + the first item's
    block + each later item's follow (else block) + (k - 1) * join_len. Every target of `split` is a target
    in exactly one window. A window starts with up to `history_fraction * max_length` tokens of the most
    recent earlier items (history only; `share_of_room`: that share of max_length - header_len, for dialogue,
    whose lines' context is cut to the same share), then takes targets in order while they fit; so every
    target sees at least that much earlier history (or all of it), and the window's later targets see more. Without history
    a window still holds the later lines of its first target's conversation: they are that line's context.
    `targets`: the positions of `split` that carry loss (default: all of them); the items between two of them
    stay in the window as history.
    """
    stats = stats if stats is not None else WindowStats()
    follow = follow if follow is not None else [None] * len(lengths)

    def step(i: int) -> int:  # item i right after item i-1
        return (lengths[i] if follow[i] is None else follow[i]) + join_len

    targets = target_positions(labels, split) if targets is None else targets
    windows: list[Window] = []
    k = 0
    while k < len(targets):
        first = targets[k]
        used = header_len + lengths[first]
        if used > max_length:
            stats.too_long += 1
            stats.reasons["target longer than max_length"] += 1
            k += 1
            continue
        front = first
        if use_history:
            budget = max(history_fraction * (max_length - (header_len if share_of_room else 0)), 0)
            front, used = _history_front(first, used, lengths, step, join_len, max_length, budget)
            stats.history_dropped += front
        window_targets = [first]
        k += 1
        while k < len(targets):
            nxt = targets[k]
            last = window_targets[-1]
            if not use_history and any(follow[j] is None for j in range(last + 1, nxt + 1)):
                break  # without history only the lines of one conversation share a window
            extra = sum(step(j) for j in range(last + 1, nxt + 1))
            if used + extra > max_length:
                break
            used += extra
            window_targets.append(nxt)
            k += 1
        windows.append(Window(tl.user_id, list(range(front, window_targets[-1] + 1)), window_targets, split))
        stats.windows += 1
        stats.targets += len(window_targets)
        stats.tokens += used
    return windows


def _history_front(first: int, used: int, lengths, step, join: int, max_length: int,
                   budget: float) -> tuple[int, int]:
    """The oldest item of a window whose first target is `first`, and the window's tokens so far: walk back
    while it fits and the items before `first` take at most `budget` tokens. Item i put in front opens the
    sequence; the old front then follows it (a dialogue line: only its new turns)."""
    front = first
    base = used - lengths[first] + step(first) - join  # header + first as it is placed after history
    for i in range(first - 1, -1, -1):
        grown = used - lengths[front] + step(front) + lengths[i]
        if grown > max_length or grown - base > budget:
            break
        used, front = grown, i
    return front, used


def window_history(window: Window) -> dict[int, list[int]]:
    """For each target of a window, the positions it sees as history (every earlier item of the window)."""
    out = {}
    for j, pos in enumerate(window.items):
        if pos in window.targets:
            out[pos] = window.items[:j]
    return out
