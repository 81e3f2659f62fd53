"""The unified records format: what a record and an item are, and how a Record is written back.

A record is one user's whole file:

    {"user_hash": "u1",                               # optional; the user id (else user.id, user.hash, profile.name)
     "user": {"id": "u1", "profile": {"name": "...", ...}},
     "task": {"description": "...", "language": "en",  # language optional: en | zh | ja
              "role": "user",                          # optional: user (default) | character
              "likert": ["非常不同意", "不同意", "中立", "同意", "非常同意"],  # optional: ordered answer levels
              "choices": ["是", "否"],                  # optional: options of questions listing none
              "task_behavior_collections": [
                  {"type": "movie_rating",
                   "data": [{"continuation_prefix": "Toy Story (1995) (Animation, Comedy): ",
                             "continuation": "4.0",
                             "context": [{"source": "Alice", "content": "..."}],   # or role/content
                             "timestamp": "2000-07-30T18:45:03Z",                  # or unix seconds
                             "metadata": {"stars": 4}}]}]}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from usertwin.atomic import write_jsonl


@dataclass
class Item:
    """One observed act of a user, as validated from the file."""

    continuation: str
    prefix: str = ""
    context: list = field(default_factory=list)  # [{"role" or "source": str, "content": str}]
    timestamp: float | None = None  # unix seconds (UTC); None when the file gives none
    time_text: str | None = None  # the timestamp as written in the file
    collection: str = ""  # the collection's type, e.g. movie_rating
    metadata: dict = field(default_factory=dict)
    position: int = 0  # order of the item within its record (file order, across collections)

    @property
    def is_rating(self) -> bool:
        return is_rating(self.collection)


# the metadata key that names what an item is about where a converter knows it (movielens, douban-dmr)
ITEM_ID = "movie_id"


def item_key(item) -> tuple:
    """What an item is about, the one key by which the baselines (item mean, the LensKit models, the most
    frequent continuation) and predict's pick-the-real-one distractors group items: its collection and
    `metadata.movie_id` where the data has one, else its collection and prefix. Titles are not ids: in
    MovieLens 100K, 307 (user, title) pairs are two different movies with the same title. An item without a
    prefix is about nothing of its own (a Cornell line's movie_id names the film it is said in), so it keeps
    the prefix key."""
    movie = item.metadata.get(ITEM_ID) if item.prefix and isinstance(item.metadata, dict) else None
    if movie is None:
        return item.collection, item.prefix
    return item.collection, ITEM_ID, str(movie)


def is_rating(collection: str) -> bool:
    """A collection of ratings (movie_rating, rating, ...): its continuations are numbers on a scale. The one
    place that decides it: likelihood scoring of the scale, rating metrics and rating baselines all ask here."""
    return "rating" in str(collection or "")


@dataclass
class Record:
    index: int  # position of the record in its file (0-based)
    user_id: str
    profile: dict
    task: str
    language: str | None
    items: list  # list[Item] in file order
    role: str = "user"  # who the twin is, which the prompt's fixed phrases name: one of ROLES
    # task.likert (levels, lowest first) and task.choices (options) when the record declares them (data/choices.py)
    choice_sets: dict = field(default_factory=dict)
    rating_scale: tuple | None = None  # task.rating_scale when declared: the allowed ratings, ascending


# The prompt names the twin by its role ("this user", "this character"); a record declares it in task.role.
ROLES = ("user", "character")

SKIP_HINT = "use --on_error skip to skip bad records"
MAX_LISTED = 20  # problems listed in one error message before "... and N more"

# keys of an item that the format knows; any other key of an item is kept in its metadata
ITEM_KEYS = frozenset({"continuation", "continuation_prefix", "context", "timestamp", "metadata"})


# A value as error messages name it ("got a number (5)"): schema, timestamps and load all word it alike.


def json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown_value(value, limit: int = 40) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def got_text(value) -> str:
    if value is None or isinstance(value, (dict, list)):
        return json_kind(value)
    return f"{json_kind(value)} ({shown_value(value)})"


# Writing back: a Record as the raw dict it came from, timestamps as the file wrote them.


def _time_value(item: Item):
    text = item.time_text
    if text is not None:
        if text.isdigit() or (text[:1] == "-" and text[1:].isdigit()):
            return int(text)
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) and repr(number) == text else text
    if item.timestamp is None:
        return None
    return int(item.timestamp) if float(item.timestamp).is_integer() else item.timestamp


def _item_to_raw(item: Item) -> dict:
    out: dict = {}
    if item.prefix:
        out["continuation_prefix"] = item.prefix
    out["continuation"] = item.continuation
    if item.context:
        out["context"] = item.context
    stamp = _time_value(item)
    if stamp is not None:
        out["timestamp"] = stamp
    if item.metadata:
        out["metadata"] = item.metadata
    return out


def record_to_raw(record: Record) -> dict:
    """The unified-format dict of a Record (items grouped into collections, keeping their order)."""
    collections: list = []
    for item in record.items:
        if not collections or collections[-1]["type"] != item.collection:
            collections.append({"type": item.collection, "data": []})
        collections[-1]["data"].append(_item_to_raw(item))
    task: dict = {"description": record.task}
    if record.language is not None:
        task["language"] = record.language
    if record.role != "user":
        task["role"] = record.role
    task.update(record.choice_sets)
    task["task_behavior_collections"] = collections
    return {"user_hash": record.user_id, "user": {"id": record.user_id, "profile": record.profile}, "task": task}


def write(records, path) -> int:
    """Write records (raw dicts, or Record objects) as JSON Lines, atomically; returns the count."""
    return write_jsonl(path, (record_to_raw(r) if isinstance(r, Record) else r for r in records))
