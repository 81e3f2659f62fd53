"""`usertwin simulate`: a population's next behaviour, from a trained twin (usertwin.twin).

Two modes, one output row per (user, step):

* items (`--items ITEMS.jsonl` alone): every item of the file is answered by every chosen user on their real
  history; the items are independent of one another (step k = line k of the items that apply to the user).
* rollout (`--steps K`): K steps one after another; what the twin generates at a step joins the user's history
  as an item before the next step. With `--items` the steps are the first K items that apply to the user, in
  file order (the pool of next items: a rating needs the item it rates, so a rollout of ratings needs them).
  Without `--items` each step's item has no prefix and no context: the user's unprompted next act of the kind
  of their last item (a review without a title, a line with nobody speaking to them).

For an item of a rating collection a row holds the probability of every allowed rating and the generated
ratings; for text the generated continuations. In a rollout the first sample joins the history (a rating as
the scale writes it when the text parses as one).

Items mode answers every item of a user on the same history (the most recent that leaves room for the user's
longest item) and runs user by user: the items of a user in one batch read that history once (shared prefill,
twin/engine.py), so rating a population on many items costs little more than reading each history.
The output is appended per batch and resumable as predict's is: rows already in it are skipped on a rerun
and a torn last line is dropped; a rollout's later steps read the earlier steps' continuations back from it.
Sample i of (user, step) draws with a seed made of (--seed, user, step) plus i, so it is the same in any
batch and after a resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.appended import append_batches, completed_rows, output_lock, progress_bar
from usertwin.config import QUEUED, GenerateSettings
from usertwin.data import records
from usertwin.errors import UsertwinError
from usertwin.eval.metrics import parse_rating
from usertwin.sequences.fit import prompt_hash
from usertwin.twin import Twin

KEY = ("user", "step")
ITEM_KEYS = ("continuation_prefix", "context", "type", "user", "continuation", "timestamp", "metadata")


@dataclass
class StepItem:
    """What a step is about: the new item's prefix and context (and its collection, when the file names it)."""

    prefix: str = ""
    context: list = field(default_factory=list)
    kind: str | None = None
    user: str | None = None  # only this user answers it; None: everyone
    reference: str | None = None  # the real continuation, when the items file has one


# ---------------------------------------------------------------- input


def read_items(path) -> list[StepItem]:
    """ITEMS.jsonl: one item a line in the records format (continuation_prefix and/or context; optional
    "type": its collection, "user": only this user answers it, "continuation": kept as the row's reference)."""
    path = Path(path)
    if not path.is_file():
        raise UsertwinError(f"items file {path} does not exist")
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                items.append(_item(line, f"{path}:{n}"))
    if not items:
        raise UsertwinError(f"{path} holds no items: write one JSON object a line, e.g. "
                            '{"continuation_prefix": "Heat (1995) (Action, Crime, Thriller): "}')
    return items


def _item(line: str, at: str) -> StepItem:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsertwinError(f"{at}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise UsertwinError(f"{at}: an item is a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ITEM_KEYS))
    if unknown:
        raise UsertwinError(f"{at}: unknown field(s) {', '.join(unknown)}; an item has {', '.join(ITEM_KEYS)}")
    for name in ("continuation_prefix", "type", "continuation"):
        if name in raw and not isinstance(raw[name], str):
            raise UsertwinError(f"{at}: field {name} must be a string, got {type(raw[name]).__name__}")
    context = raw.get("context") or []
    if not isinstance(context, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str)
            and isinstance(t.get("role", t.get("source")), str) for t in context):
        raise UsertwinError(f"{at}: field context must be a list of turns {{\"source\" or \"role\", \"content\"}}")
    if not raw.get("continuation_prefix") and not context:
        raise UsertwinError(f"{at}: an item needs a continuation_prefix or a context (what the user answers)")
    user = raw.get("user")
    return StepItem(raw.get("continuation_prefix", ""), context, raw.get("type"),
                    None if user is None else str(user), raw.get("continuation"))


def choose_users(twin: Twin, users: list[str] | None) -> list[str]:
    """The users asked for (all of the records when None), each checked to be in them."""
    if users is None:
        return twin.users
    for u in users:
        twin.timeline(u)  # an unknown id stops here, naming the records file
    return list(dict.fromkeys(users))


def check_users_in(path, users: list[str], on_error: str = "stop") -> None:
    """Every asked-for user is in the records file: read before the model loads, so a mistyped id costs a
    second, not a model load (the message is Twin.timeline's)."""
    ids = list(dict.fromkeys(r.user_id for r in records.load(path, on_error=on_error).records))
    known = set(ids)
    for u in users:
        if u not in known:
            some = ", ".join(repr(x) for x in ids[:3])
            raise UsertwinError(f"user {u!r} is not in {path} ({len(ids)} users, e.g. {some})")


def check_what(has_items: bool, steps: int | None) -> None:
    """Items, steps or both: refused before anything loads when neither says what to simulate."""
    if steps is not None and steps < 1:
        raise UsertwinError(f"--steps must be at least 1, got {steps}")
    if not has_items and not steps:
        raise UsertwinError("say what to simulate: --items ITEMS.jsonl (the next items), --steps K (a rollout), "
                            "or both (a rollout over the items)")


def plan(twin: Twin, users: list[str], items: list[StepItem] | None, steps: int | None) -> dict[str, list]:
    """Each user's step items, in order."""
    check_what(items is not None, steps)
    out = {}
    for u in users:
        if items is None:
            out[u] = [StepItem() for _ in range(steps)]
            _refuse_ratings_without_items(twin, u)
            continue
        mine = [it for it in items if it.user in (None, u)]
        if steps is not None and len(mine) < steps:
            raise UsertwinError(f"user {u!r}: a rollout of {steps} steps needs {steps} items, the items file has "
                                f"{len(mine)} for this user")
        out[u] = mine[:steps] if steps is not None else mine
    return out


def _refuse_ratings_without_items(twin: Twin, user: str) -> None:
    kind = twin.kind_after(twin.timeline(user))
    if records.is_rating(kind):
        raise UsertwinError(f"user {user!r}: the next item is a rating ({kind}), and a rating needs the item it "
                            "rates: pass --items ITEMS.jsonl with one item per step (a rollout uses them in order)")


def request_seed(seed: int, user: str, step: int) -> int:
    """The seed of one (user, step): a stable hash, so users never share random numbers."""
    return int(hashlib.sha256(f"{seed}:{user}:{step}".encode()).hexdigest()[:15], 16)


# ---------------------------------------------------------------- the run


def simulate(twin: Twin, users: list[str], items: list[StepItem] | None, steps: int | None, output,
             gen: GenerateSettings, seed: int = 0, progress: bool = True, batching: str = "auto") -> int:
    """Append the rows of every (user, step) not yet in `output`; returns how many were written. `batching`:
    how generation batches (Twin.batching: continuous or static, auto picks)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    todo = plan(twin, users, items, steps)
    rollout = steps is not None
    if rollout and not gen.generate:
        raise UsertwinError("--no-generate leaves a rollout nothing to add to the history: drop it, or simulate "
                            "--items without --steps")
    with output_lock(output, "simulation file"):
        done = completed_rows(output, KEY)
        run = _Run(twin, todo, rollout, gen, seed, _grown(done, rollout), batching)
        return run.all(output, done, progress)


def _grown(done: dict, rollout: bool) -> dict[str, list]:
    """The items a resumed rollout already added to each user's history, read back from its rows."""
    grown = {}
    for (user, step), row in sorted(done.items(), key=lambda kv: kv[0][1]):
        if row.get("mode") != ("rollout" if rollout else "items"):
            raise UsertwinError(f"the output already holds {row.get('mode')} rows (user {user!r}, step {step}); "
                                "this command simulates another mode: write elsewhere with -o")
        if not rollout:
            continue
        made = grown.setdefault(user, [])
        if step != len(made) + 1:
            raise UsertwinError(f"the output holds step {step} of user {user!r} without step {len(made) + 1}: it "
                                "was not written by this rollout; write elsewhere with -o")
        made.append(_as_item(row))
    return grown


def _as_item(row: dict) -> records.Item:
    return records.Item(continuation=row["continuation"], prefix=row.get("item", ""),
                        context=list(row.get("context") or []), collection=row.get("collection", ""))


class _Run:
    """One simulate call: step by step, each step's pending users in batches."""

    def __init__(self, twin: Twin, todo: dict, rollout: bool, gen: GenerateSettings, seed: int, grown: dict,
                 batching: str = "auto"):
        self.twin, self.todo, self.rollout, self.gen, self.seed = twin, todo, rollout, gen, seed
        self.grown, self.batching = grown, batching
        self.running = None  # continuous batching: the prompts decoding at once (a chunk holds QUEUED times more)
        self.scale = twin.scale or []
        self.longest = {}  # user -> tokens of their longest item (longest_item)
        self.measured = {}  # items mode: the current user's history lengths (history_lengths)
        self.seen: dict[str, set] = {}  # per user: (collection, prefix) of their real items

    def all(self, output: Path, done: dict, progress: bool) -> int:
        if self.rollout:  # step by step: a user's next step needs this step's generation
            pending = [(u, s) for s in range(max(map(len, self.todo.values()), default=0))
                       for u in self.todo if s < len(self.todo[u]) and (u, s + 1) not in done]
        else:  # user by user: a batch of one user's items shares the reading of their history (prefill)
            pending = [(u, s) for u in self.todo for s in range(len(self.todo[u])) if (u, s + 1) not in done]
        if self.gen.limit is not None:
            pending = pending[:max(0, self.gen.limit - len(done))]
        bar = progress_bar(len(pending), "simulate", "step") if progress else None
        self.gen = self.twin.sized(self.gen, prompts=len(pending) if self.gen.generate else None)
        size = self.gen.batch_size
        if self.twin.running(self.batching, self.gen):
            # a chunk (what is written at once) holds several batches' prompts: they join the running rows as
            # earlier ones finish; ratings are still scored batch_size prompts at a time
            self.running, size = size, size * QUEUED
        batches = _batches(pending, size) if self.rollout else _chunks(pending, size)
        return append_batches(output, batches, self.batch, bar)

    def batch(self, batch: list) -> list[dict]:
        """Some (user, step) pairs: ratings scored in one forward (the items of a user after one reading of
        their history, Engine.score_many), every prompt generated together."""
        twin, room = self.twin, self.gen.max_new_tokens if self.gen.generate else 0
        rows, prompts = [], []
        situations = [(user, s, *self.situation(user, self.todo[user][s])) for user, s in batch]
        for (user, s, tl, kind), ln in zip(situations, self.lengths(situations)):
            level = 0 if self.rollout else max(0, self.longest_item(user, room) - ln.block(-1))
            prompt = twin.fitted_prompt(tl, len(tl.items) - 1, room + level, ln)
            rows.append(self.row(user, s, tl, kind, prompt))
            prompts.append(prompt.ids)
        rated = [i for i, r in enumerate(rows) if "rating" in r]
        for part in _chunks(rated, self.gen.batch_size):
            for i, dist in zip(part, twin.rating_distributions_after([prompts[i] for i in part])):
                rows[i]["rating"] = dist
        if self.gen.generate:
            seeds = [r["seed"] for r in rows]
            for r, texts in zip(rows, twin.generate_after(prompts, self.gen, seeds, running=self.running)):
                self.add_generations(r, texts)
        return rows

    def lengths(self, situations: list) -> list:
        """Each situation's item lengths: in a rollout measured whole (the history grows); in items mode the
        user's real history is measured once and only each new item after it (Twin.lengths_next)."""
        if self.rollout:
            return self.twin.lengths([tl for _, _, tl, _ in situations])
        return [self.twin.lengths_next(self.history_lengths(user), tl) for user, _, tl, _ in situations]

    def history_lengths(self, user: str):
        if user not in self.measured:  # users come one after another: keep the last two (a batch spans two)
            self.measured = {**dict(list(self.measured.items())[-1:]),
                             user: self.twin.lengths([self.twin.timeline(user)])[0]}
        return self.measured[user]

    def longest_item(self, user: str, room: int) -> int:
        """Tokens of the user's longest item that fits: in items mode every item of a user is answered on the
        same history -- the most recent that leaves room for the longest item -- so a shorter item keeps the
        difference free. The items then differ only in themselves (and share one reading of the history)."""
        if user not in self.longest:
            lns = [self.twin.lengths_next(self.history_lengths(user), self.situation(user, it)[0])
                   for it in self.todo[user]]
            fits = [ln.block(-1) for ln in lns if ln.header + ln.block(-1) + room <= self.twin.cfg.max_length]
            self.longest[user] = max(fits, default=0)
        return self.longest[user]

    def situation(self, user: str, it: StepItem):
        """The user's real items, then (in a rollout) the items generated so far, then this step's item."""
        base = self.twin.timeline(user)
        tl = base
        for grown in self.grown.get(user, ()):
            tl = self.twin.with_item(tl, grown)
        kind = it.kind or self.twin.kind_after(tl)
        return self.twin.with_new_item(tl, it.prefix, it.context, kind), kind

    def row(self, user: str, s: int, tl, kind: str, prompt) -> dict:
        new = tl.items[-1]
        row = {"user": user, "step": s + 1, "mode": "rollout" if self.rollout else "items", "collection": kind,
               "item": new.prefix, "context": new.context, "seed": request_seed(self.seed, user, s + 1),
               "history_len": len(prompt.sample.history), "user_items": len(self.twin.timeline(user).items),
               "already_rated": self.already(user, new), "prompt_hash": prompt_hash(prompt.ids)}
        ref = self.todo[user][s].reference
        if ref is not None:
            row["reference"] = ref
        if self.scale and records.is_rating(kind):
            row["rating"] = None  # filled by the batch's one scoring forward
        return row

    def already(self, user: str, new) -> bool:
        """Whether the user's real history already holds this item (same prefix and collection): a rating
        asked again is answered with that rating in view, so it says little about a new item."""
        if not new.prefix.strip():
            return False
        seen = self.seen.get(user)
        if seen is None:
            seen = self.seen[user] = {(it.collection, it.prefix.strip()) for it in self.twin.timeline(user).items}
        return (new.collection, new.prefix.strip()) in seen

    def add_generations(self, row: dict, texts: list[str]) -> None:
        row["generations"] = texts
        joined = texts[0]
        if "rating" in row:
            row["ratings"] = [parse_rating(t, self.scale) for t in texts]
            by_value = {float(t): t for t in self.scale}
            joined = by_value.get(row["ratings"][0], joined)  # the history shows ratings as the scale writes them
        if self.rollout:
            row["continuation"] = joined
            self.grown.setdefault(row["user"], []).append(_as_item(row))


def _batches(pending: list, size: int):
    """Batches of one step each: in a rollout a user's next step needs this step's generation."""
    by_step = {}
    for user, s in pending:
        by_step.setdefault(s, []).append((user, s))
    for group in by_step.values():
        yield from _chunks(group, size)


def _chunks(pending: list, size: int):
    for start in range(0, len(pending), size):
        yield pending[start:start + size]
