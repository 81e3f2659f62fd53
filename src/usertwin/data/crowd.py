"""Crowd context: what other users did with the same item, written into the item's line.

A 135M model knows little about how a community rates its items; the recommender-systems field's models
(item bias, matrix factorisation, kNN) live on exactly that signal. LLaRA and CoLLM inject it as learned
embeddings from a trained CF model, A-LLMRec as aligned CF item embeddings; all need a CF model of their own
and a projector trained with the LLM. usertwin writes it as text instead -- the count and mean of other users'
ratings of the item -- so it goes through any tokenizer, any prompt style, the chat template, export and vLLM
unchanged, and the same rule serves training and every place a twin is used.

Which ratings an item's statistics may hold (DESIGN invariant 9, the baselines' rule of invariant 7):

* split rule (prepare: train, predict, inspect): an item labelled test counts the other users' train + val
  ratings; an item labelled val or train counts the other users' train ratings. A user's own ratings of the
  item are never counted, so a target's own rating is never in its statistics.
* wherever a twin is used (Twin, simulate, serve, scenario predict), on the records it is given: their items
  by the same split rule (so a target's prompt is exactly the one predict scored), and a *new* item asked about
  counts every rating of the other users in those records (all of it lies before the new item), and so does
  each item of a history described in the request (profile= and history=, serve's messages). A twin loaded
  without records counts its run's RUN/crowd.json: the training data's train + val ratings.

The user's own running statistics (`crowd_context: item_and_user`) hold only the user's items before the
item in time order, so they never hold the item's own rating either.

Form: the mean to one decimal and the count in a bucket (1, 2-4, 5-9, 10-19, 20-49, 50-99, 100-199, 200+).
A bucket is a few tokens in every dataset, and the model learns how much a mean of "2-4 ratings" is worth
against one of "200+" (the damping the bias baseline does by formula) without memorising raw counts that
differ from one dataset's size to the next.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from usertwin.data.records.format import item_key

BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200)
RATING_KEYS = ("rating", "stars")  # metadata fields that hold an item's rating where the target is text


@dataclass(frozen=True)
class Crowd:
    """One item's crowd statistics: other users' ratings of it, and (optional) the user's own before it."""

    count: int = 0
    mean: float | None = None
    user_count: int | None = None  # None: the user's statistics are not shown
    user_mean: float | None = None


def rating_value(item) -> float | None:
    """The rating an item carries: its continuation for a rating item, else metadata.rating / stars."""
    if item.is_rating:
        raw = item.continuation
    else:
        meta = item.metadata if isinstance(item.metadata, dict) else {}
        raw = next((meta[k] for k in RATING_KEYS if k in meta), None)
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(str(raw).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def count_bucket(n: int) -> str:
    """1, 2-4, 5-9, ..., 200+: the bucket of a count (n >= 1)."""
    for low, high in zip(BUCKETS, BUCKETS[1:]):
        if n < high:
            return str(low) if high - low == 1 else f"{low}-{high - 1}"
    return f"{BUCKETS[-1]}+"


class Pool:
    """Ratings by item key: their count and sum in all, and per user (to leave the asking user's own out)."""

    def __init__(self):
        self.total: dict = defaultdict(lambda: [0, 0.0])
        self.own: dict = defaultdict(lambda: [0, 0.0])
        self.kinds: set = set()  # collections with a rating anywhere: the items that show crowd context
        # (collection, prefix) -> the item keys rated under it: a new item asked about by its prefix alone
        # (Twin, simulate, serve) finds the movie id its ratings are kept under
        self.titles: dict = defaultdict(set)

    def add(self, user: str, item) -> None:
        value = rating_value(item)
        if value is None:
            return
        self.kinds.add(item.collection)
        key = item_key(item)
        self.titles[(item.collection, item.prefix)].add(key)
        for acc in (self.total[key], self.own[(user, key)]):
            acc[0] += 1
            acc[1] += value

    def keys_of(self, item) -> list:
        """The keys whose ratings `item` counts: its own; for an item known only by its prefix, every key rated
        under that prefix (several where a title names several movies: the title is all the twin was told)."""
        key = item_key(item)
        if key in self.total or len(key) != 2:
            return [key]
        return sorted(self.titles.get((item.collection, item.prefix), ())) or [key]

    def others(self, user: str, item) -> tuple[int, float | None]:
        """(count, mean) of the ratings of `item`'s key by users other than `user`."""
        n, s = 0, 0.0
        for key in self.keys_of(item):
            total, own = self.total.get(key, (0, 0.0)), self.own.get((user, key), (0, 0.0))
            n, s = n + total[0] - own[0], s + total[1] - own[1]
        return n, (s / n if n else None)

    def shows(self, item) -> bool:
        """Crowd context goes on items about something (a prefix) of a kind that carries ratings."""
        return bool(item.prefix.strip()) and item.collection in self.kinds

    def to_json(self) -> dict:
        """The per-item totals (no user's own ratings): what a run keeps for a twin used without records."""
        return {"kinds": sorted(self.kinds), "items": [[list(k), n, s] for k, (n, s) in self.total.items()],
                "titles": [[c, p, sorted(list(k) for k in keys)] for (c, p), keys in self.titles.items()]}

    @classmethod
    def from_json(cls, blob: dict) -> Pool:
        pool = cls()
        pool.kinds = set(blob.get("kinds", []))
        for key, n, s in blob.get("items", []):
            pool.total[tuple(key)] = [int(n), float(s)]
        for collection, prefix, keys in blob.get("titles", []):
            pool.titles[(collection, prefix)] = {tuple(k) for k in keys}
        return pool


def _running(tl) -> list[tuple[int, float | None]]:
    """(count, mean) of the user's ratings before each position, and after the last one (a new item's)."""
    out, n, total = [], 0, 0.0
    for item in tl.items:
        out.append((n, total / n if n else None))
        value = rating_value(item)
        if value is not None:
            n, total = n + 1, total + value
    return out + [(n, total / n if n else None)]


def _timeline_crowd(tl, pool_at, shows, mode: str) -> dict:
    """position -> Crowd for the items that `shows`; `pool_at(pos)`: the pool that item's rule counts."""
    running = _running(tl) if mode == "item_and_user" else None
    out = {}
    for pos, item in enumerate(tl.items):
        if shows(item):
            out[pos] = _crowd(pool_at(pos), tl.user_id, item, running[pos] if running else None)
    return out


def _crowd(pool: Pool, user: str, item, running) -> Crowd:
    count, mean = pool.others(user, item)
    return Crowd(count, mean) if running is None else Crowd(count, mean, *running)


@dataclass
class Pools:
    """The pools one set of records gives: train (what train and val items count), train + val (what test
    items count) and every rating (what a new item asked about at use counts)."""

    train: Pool
    train_val: Pool
    every: Pool

    @classmethod
    def of(cls, timelines, splits: dict) -> Pools:
        pools = cls(Pool(), Pool(), Pool())
        for tl in timelines:
            for item, label in zip(tl.items, splits[tl.user_id]):
                for pool, counts in ((pools.train, label == "train"), (pools.train_val, label != "test"),
                                     (pools.every, True)):
                    if counts:
                        pool.add(tl.user_id, item)
        # which kinds show crowd context is a fact of the data's format, the same in every pool
        pools.train.kinds = pools.train_val.kinds = set(pools.every.kinds)
        return pools

    @classmethod
    def saved(cls, pool: Pool) -> Pools:
        """A run's saved train + val pool (RUN/crowd.json) for every rule: all a twin without records knows."""
        return cls(pool, pool, pool)

    def annotate(self, timelines, splits: dict, mode: str) -> None:
        """The split rule: test items count train + val, train and val items count train (others' only)."""
        for tl in timelines:
            pools = [self.train_val if label == "test" else self.train for label in splits[tl.user_id]]
            tl.crowd = {} if mode == "none" else _timeline_crowd(tl, pools.__getitem__, self.every.shows, mode)

    def annotate_known(self, timelines, mode: str) -> None:
        """Every item counts every rating of the others: a history described at use (Twin, serve) is all past."""
        for tl in timelines:
            tl.crowd = {} if mode == "none" else _timeline_crowd(tl, lambda pos: self.every, self.every.shows, mode)

    def with_new(self, tl, item, mode: str) -> dict:
        """`tl.crowd` plus the statistics of `item`, a new item at the end of the timeline: every rating of
        the other users counts (all of it lies before the new item)."""
        if mode == "none" or not self.every.shows(item):
            return dict(tl.crowd)
        running = _running(tl)[-1] if mode == "item_and_user" else None
        return {**tl.crowd, len(tl.items): _crowd(self.every, tl.user_id, item, running)}


def annotate_split(timelines, splits: dict, mode: str) -> Pools | None:
    """Annotate every item by the split rule; the pools (None with mode none)."""
    if mode == "none":
        for tl in timelines:
            tl.crowd = {}
        return None
    pools = Pools.of(timelines, splits)
    pools.annotate(timelines, splits, mode)
    return pools


def coverage(timelines, splits: dict) -> dict:
    """How many items carry a crowd line, and how many of those have other users' ratings (all; test items)."""
    out = {"items": 0, "with_others": 0, "test_items": 0, "test_with_others": 0}
    for tl in timelines:
        labels = splits.get(tl.user_id, ())
        for pos, stats in tl.crowd.items():
            test = pos < len(labels) and labels[pos] == "test"
            out["items"] += 1
            out["with_others"] += stats.count > 0
            out["test_items"] += test
            out["test_with_others"] += test and stats.count > 0
    return out
