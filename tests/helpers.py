"""Small builders for records and timelines used across tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usertwin.data import records
from usertwin.data.records import Item, Record, record_to_raw
from usertwin.data.timeline import Timeline
from usertwin.errors import UsertwinError

TESTS = Path(__file__).resolve().parent  # tests/ mirrors src/usertwin/: tests/data/, tests/train/, ...
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
RECORD_FILES = FIXTURES / "records"  # small hand-written records files


def rating_items(n: int, start: int = 0) -> list[Item]:
    return [Item(continuation=f"{1 + (i % 9) * 0.5:.1f}", prefix=f"Movie {i} (199{i % 10}) (Drama): ",
                 timestamp=1_000_000 + 1000 * i, time_text=str(1_000_000 + 1000 * i),
                 collection="movie_rating", position=i) for i in range(start, start + n)]


def rating_timeline(n: int = 10, user: str = "u1") -> Timeline:
    return Timeline(user, {"name": user, "age": 30}, "Predict ratings.", "en", rating_items(n))


def rating_records(sizes) -> list[Record]:
    return [Record(i, f"u{i}", {"name": f"u{i}"}, "Predict ratings.", "en", rating_items(n))
            for i, n in enumerate(sizes)]


def dialogue_timeline(n: int = 20, name: str = "BIANCA") -> Timeline:
    items = []
    for i in range(n):
        ctx = [{"source": "CAMERON", "content": f"question {i}?"}]
        if i % 2:
            ctx = [{"source": name, "content": f"earlier {i}"}] + ctx
        items.append(Item(continuation=f"answer {i}", context=ctx, collection="dialogue", position=i))
    return Timeline("c1", {"name": name, "gender": "f"}, "Speak as this character.", "en", items)


def conversation_timeline(sizes=(4, 6, 5), name: str = "BIANCA", lead: int = 0, unsaid: int | None = 2) -> Timeline:
    """Dialogue lines of `name` in len(sizes) conversations with CAMERON, sizes[c] lines each, every item's
    context the whole conversation before its line (so consecutive items of a conversation share turns).
    The first conversation opens with `lead` extra exchanges before her first item; conversation 1 opens
    with her own line; in the last one, line `unsaid` is said but is no item (a gap)."""
    items, pos = [], 0
    for c, n in enumerate(sizes):
        turns = []
        for k in range(lead if c == 0 else 0):
            turns += [{"source": "CAMERON", "content": f"c{c} lead {k}?"}, {"source": name, "content": f"c{c} led {k}"}]
        for j in range(n):
            if not (c == 1 and j == 0):
                turns.append({"source": "CAMERON", "content": f"c{c} question {j}?"})
            line = f"c{c} answer {j}"
            if not (c == len(sizes) - 1 and j == unsaid):
                items.append(Item(continuation=line, context=list(turns), collection="dialogue", position=pos))
                pos += 1
            turns.append({"source": name, "content": line})
    return Timeline("c1", {"name": name, "gender": "f"}, "Speak as this character.", "en", items)


def write_records(path, records, jsonl: bool = True):
    """Write records (raw dicts or Records) to `path` as JSON Lines, or as one JSON list; returns `path`.

    A single record, not in a list, with jsonl=False is written as one record object (the format's third
    shape). JSON Lines are written a record at a time, so a generator of a large file never sits in memory.
    """
    one = isinstance(records, (dict, Record))
    rows = (record_to_raw(r) if isinstance(r, Record) else r for r in ([records] if one else records))
    with open(path, "w", encoding="utf-8") as f:
        if jsonl:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            json.dump(next(rows) if one else list(rows), f, ensure_ascii=False)
    return path


def raw_record(user="u1", items=None, **task):
    """A minimal valid raw record."""
    items = items if items is not None else [{"continuation": "ok"}]
    return {"user_hash": user, "task": {"task_behavior_collections": [{"type": "r", "data": items}], **task}}


def load_error(path, **kw) -> str:
    """The message with which records.load refuses `path`."""
    with pytest.raises(UsertwinError) as err:
        records.load(path, **kw)
    return str(err.value)


def write_rating_users(path, sizes, prefix, rating):
    """A records file of users u0, u1, ... with sizes[u] movie ratings each, a minute apart: `prefix(u, i)` and
    `rating(u, i)` (an int 1..5) give item i of user u."""
    recs = []
    for u, n in enumerate(sizes):
        items = [{"continuation_prefix": prefix(u, i), "continuation": f"{rating(u, i)}.0",
                  "timestamp": 1_000_000 + 60 * i} for i in range(n)]
        recs.append({"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
                     "task": {"description": "Predict ratings.", "language": "en",
                              "task_behavior_collections": [{"type": "movie_rating", "data": items}]}})
    return write_records(path, recs)


def fake_vllm(tokenizer, reply: str):
    """A stand-in `vllm` module (vLLM needs a CUDA GPU): LLM keeps its arguments and requests and answers
    `reply`, the end of turn, then junk. Returns (module, the LLMs made)."""
    import types

    made = []

    class Params:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, **kw):
            self.kw, self.calls = kw, []
            made.append(self)

        def generate(self, requests, params, use_tqdm=True):
            self.calls.append((requests, params))
            ids = tokenizer(reply + "<|im_end|>junk", add_special_tokens=False)["input_ids"]
            out = types.SimpleNamespace(token_ids=tuple(ids))
            return [types.SimpleNamespace(outputs=[out]) for _ in requests]

    return types.SimpleNamespace(LLM=LLM, SamplingParams=Params), made
