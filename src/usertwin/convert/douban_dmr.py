"""DMR-Dataset public sample (reviews.json + movies.json) -> one record per user.

reviews.json holds 44 entries, one per user, each with the user's profile and their own reviews
(`user_reviews`, newest first: review0 is the latest). Items are those reviews in time order (by date; the
file's newest-first order is reversed so same-day reviews keep their true order). The entry's own top-level
review is also the user's review0 (true for all 44), so it is not added twice.

Item: continuation_prefix "<movie_name>（<genre>/<genre>）：" ("电影 <id>：" when the movie is not in
movies.json: 3 reviews), continuation the review text, metadata {stars, useful, movie_id, tags}.
The real sample has 1,583 reviews, no duplicates (same movie, date and text), and 360 with an empty text
(stars only): those have nothing to learn to write, so they are left out and counted, leaving 1,223 items.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsertwinError
from ..records import parse_timestamp
from . import record, require_file

DESCRIPTION = "模拟该豆瓣用户写影评：根据其之前写过的影评，写出他/她对下一部电影的影评。"


def _load(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsertwinError(f"{path}:{e.lineno}:{e.colno}: invalid JSON ({e.msg})") from None


def prefix(movie_id: str, movies: dict) -> str:
    movie = movies.get(movie_id)
    if not movie or not movie.get("movie_name"):
        return f"电影 {movie_id}："
    genres = "/".join(movie.get("genres") or [])
    return f"{movie['movie_name']}（{genres}）：" if genres else f"{movie['movie_name']}："


def convert(raw: Path, skips, progress: bool = True):
    folder = raw if raw.is_dir() else raw.parent
    reviews = _load(require_file(folder / "reviews.json", "reviews.json"))
    movies = _load(folder / "movies.json") if (folder / "movies.json").exists() else {}
    if not isinstance(reviews, dict):
        raise UsertwinError(f"{folder / 'reviews.json'}: expected an object of reviews (review0, ...)")
    users = {}
    for key, entry in reviews.items():
        where = f"{folder / 'reviews.json'}, entry {key!r}"
        if not isinstance(entry, dict) or not entry.get("user_id"):
            skips.bad("entry without user_id", where)
            continue
        users.setdefault(str(entry["user_id"]), (entry, where))
    for uid in sorted(users):
        entry, where = users[uid]
        items = _items(entry, where, movies, skips)
        if not items:
            skips.count("user without reviews")
            continue
        prof = dict(entry.get("user_profile") or {})
        profile = {"name": prof.pop("screen_name", uid), **prof}
        yield record(uid, profile, DESCRIPTION, "zh", "movie_review", items)


def _items(entry, where, movies, skips):
    rows = []
    own = entry.get("user_reviews") or {}
    for n, (key, rev) in enumerate(own.items()):
        at = f"{where}, user_reviews.{key}"
        text = str(rev.get("text") or "").strip()
        if not text:
            skips.count("empty review text (stars only)")
            continue
        try:
            ts = parse_timestamp(str(rev.get("date")))
        except ValueError:
            skips.bad("date is not a date", at, f"date={rev.get('date')!r}")
            continue
        movie_id = str(rev.get("movie_id"))
        meta = {"stars": rev.get("stars"), "useful": rev.get("useful"), "movie_id": movie_id,
                "tags": rev.get("tags")}
        rows.append((ts, -n, {"continuation_prefix": prefix(movie_id, movies), "continuation": text,
                              "timestamp": str(rev.get("date")), "metadata": meta}))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows]
