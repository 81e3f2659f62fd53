"""Small builders for records and timelines used across tests."""

from __future__ import annotations

from usertwin.data.records import Item, Record
from usertwin.data.timeline import Timeline


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
