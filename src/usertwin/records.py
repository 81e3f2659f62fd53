"""The unified format: load, validate and write records (JSON list, single record, or JSON Lines).

A record is one user's whole file:

    {"user_hash": "u1",                               # optional; the user id (else user.id, user.hash, profile.name)
     "user": {"id": "u1", "profile": {"name": "...", ...}},
     "task": {"description": "...", "language": "en",  # language optional: en | zh | ja
              "task_behavior_collections": [
                  {"type": "movie_rating",
                   "data": [{"continuation_prefix": "Toy Story (1995) (Animation, Comedy): ",
                             "continuation": "4.0",
                             "context": [{"source": "Alice", "content": "..."}],   # or role/content
                             "timestamp": "2000-07-30T18:45:03Z",                  # or unix seconds
                             "metadata": {"stars": 4}}]}]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class Record:
    index: int  # position of the record in its file (0-based)
    user_id: str
    profile: dict
    task: str
    language: str | None
    items: list  # list[Item] in file order
