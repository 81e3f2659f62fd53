"""DMR-Dataset public sample (reviews.json + movies.json) -> one record per user (movie_review, Chinese).

`raw` is the folder holding reviews.json and movies.json (or the path of reviews.json). reviews.json is an
object of entries `review0`...; each is one review (`text`, `date`, `stars`, `label`...) with its author's
`user_id`, `user_profile` and `user_reviews` (`review0`... each {movie_id, text, date, stars, useful, tags}).
movies.json maps a movie id (string) to its profile (`movie_name`, `genres`, ...).

One record per `user_id`; items = the user's `user_reviews` in time order. The file lists them newest first
(review0 is the latest), and dates are days only (639 same-day ties in the real sample), so the list is
reversed before a stable sort by date: same-day reviews keep their true order.

Item:
* continuation_prefix: the movie's `movie_name` as written (kept whole when it holds a Chinese and a
  foreign title, e.g. `公民凯恩 Citizen Kane`), then its genres in full-width brackets, then a full-width
  colon: `花椒之味（剧情/家庭）：` (`花椒之味：` without genres; `电影 26935296：` when the movie id is not
  in movies.json);
* continuation: the review text (stripped);
* timestamp: the review's date as written (`YYYY-MM-DD`);
* metadata: {"stars": int, "useful": int, "movie_id": str, "tags": list of the space-separated tags}, plus
  "label" (the authors' spam label, 0 = spam) on the review that is also the entry's top-level review.
Profile: user_profile with `screen_name` as `name` (register_time, counts, ... kept as they are); a user
without a screen_name gets no name (the encrypted user_id is an id the prompt should not show).

Checked on the real sample (tests/data/test_convert.py holds these numbers):
* 44 entries, 44 distinct users, 1,583 user_reviews; no duplicate user and no duplicate review (same movie,
  date and text). Should either occur, the entries of one user are merged into one record and an exact
  duplicate review is kept once and counted ("duplicate review").
* The entry's own top-level review is that user's review0 (same movie, text and stars; the date is the same
  day, given there with the time) for all 44, so it is not added again; a top-level review missing from
  user_reviews would be added as an item.
* 360 reviews have an empty text (stars only). They have no text to learn to write, so they are left out
  and counted ("empty review text"), leaving 1,223 items. 3 reviews name a movie missing from movies.json
  (1 of them has text, so one item has the `电影 <id>：` prefix).
"""

from __future__ import annotations

from pathlib import Path

from usertwin.data.convert._common import Skips, read_json, record, require_file, user_sort_key
from usertwin.data.records import parse_timestamp
from usertwin.errors import UsertwinError

DESCRIPTION = "模拟该豆瓣用户写影评：根据其之前写过的影评，写出他/她对下一部电影的影评。"


def prefix(movie_id: str, movies: dict) -> str:
    movie = movies.get(movie_id)
    name = str(movie.get("movie_name") or "").strip() if isinstance(movie, dict) else ""
    if not name:
        return f"电影 {movie_id}："
    genres = movie.get("genres")
    genres = "/".join(str(g) for g in genres) if isinstance(genres, list) else ""
    return f"{name}（{genres}）：" if genres else f"{name}："


def _number(value):
    """5.0 -> 5 (the file mixes 5 and 5.0); other values as they are."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _tags(value) -> list:
    if isinstance(value, list):
        return [str(t) for t in value]
    return str(value or "").split()


def convert(raw_path, on_error="stop", *, progress: bool = False):
    raw, skips = Path(raw_path), Skips.of(on_error)
    folder = raw if raw.is_dir() else raw.parent
    reviews_path = require_file(folder / "reviews.json" if raw.is_dir() else raw, "reviews.json")
    reviews = read_json(reviews_path)
    movies_path = folder / "movies.json"
    movies = read_json(movies_path) if movies_path.exists() else {}
    if not isinstance(reviews, dict):
        raise UsertwinError(f"{reviews_path}: expected an object of reviews ({{\"review0\": {{...}}, ...}}), "
                            f"got a {type(reviews).__name__}")
    if not isinstance(movies, dict):
        raise UsertwinError(f"{movies_path}: expected an object keyed by movie id, got a {type(movies).__name__}")
    return _records(reviews, reviews_path, movies, skips)


def _records(reviews: dict, path: Path, movies: dict, skips: Skips):
    users: dict[str, list] = {}
    for key, entry in reviews.items():
        where = f"{path}, entry {key!r}"
        if not isinstance(entry, dict):
            skips.bad("entry is not an object", where)
            continue
        uid = str(entry.get("user_id") or "").strip()
        if not uid:
            skips.bad("entry without user_id", where, "field user_id")
            continue
        users.setdefault(uid, []).append((entry, f"{where} (user {uid!r})"))
    for uid in sorted(users, key=user_sort_key):
        entries = users[uid]
        items, seen = [], set()
        for entry, where in entries:
            items += _items(entry, where, movies, skips, seen)
        items.sort(key=lambda it: it[0])  # stable: same-day reviews keep their (oldest-first) order
        if not items:
            skips.count("user without reviews with text", entries[0][1])
            continue
        prof = dict(entries[0][0].get("user_profile") or {})
        name = str(prof.pop("screen_name", None) or "")
        profile = {"name": name, **prof} if name else prof
        yield record(uid, profile, DESCRIPTION, "zh", "movie_review", [it[1] for it in items])


def _items(entry: dict, where: str, movies: dict, skips: Skips, seen: set) -> list:
    own = entry.get("user_reviews") or {}
    if not isinstance(own, dict):
        skips.bad("user_reviews is not an object", where, "field user_reviews")
        return []
    top = _top_key(entry)
    top_found = False
    out = []
    for key, rev in reversed(list(own.items())):  # the file is newest first
        at = f"{where}, user_reviews.{key}"
        if not isinstance(rev, dict):
            skips.bad("review is not an object", at)
            continue
        is_top = top is not None and _key(rev) == top
        top_found = top_found or is_top
        item = _item(rev, at, movies, skips, seen)
        if item is None:
            continue
        if is_top and "label" in entry:
            item[1]["metadata"]["label"] = entry["label"]
        out.append(item)
    if top is not None and not top_found:
        item = _item(entry, f"{where}, top-level review", movies, skips, seen)
        if item is not None:
            if "label" in entry:
                item[1]["metadata"]["label"] = entry["label"]
            out.append(item)
    return out


def _key(rev: dict):
    return (str(rev.get("movie_id")), str(rev.get("date") or "")[:10], str(rev.get("text") or "").strip())


def _top_key(entry: dict):
    return _key(entry) if entry.get("movie_id") is not None and entry.get("date") else None


def _item(rev: dict, at: str, movies: dict, skips: Skips, seen: set):
    """(unix seconds, item) of one review, or None when it is left out (counted)."""
    text = str(rev.get("text") or "").strip()
    if not text:
        skips.count("empty review text", at)
        return None
    date = rev.get("date")
    if date in (None, ""):
        skips.bad("review without date", at, "field date")
        return None
    try:
        ts = parse_timestamp(date)
    except ValueError:
        skips.bad("date is not a date", at, f"field date={date!r}")
        return None
    if rev.get("movie_id") in (None, ""):
        skips.bad("review without movie_id", at, "field movie_id")
        return None
    key = _key(rev)
    if key in seen:
        skips.count("duplicate review", at)
        return None
    seen.add(key)
    movie_id = key[0]
    meta = {"stars": _number(rev.get("stars")), "useful": _number(rev.get("useful")), "movie_id": movie_id,
            "tags": _tags(rev.get("tags"))}
    return ts, {"continuation_prefix": prefix(movie_id, movies), "continuation": text, "timestamp": str(date),
                "metadata": meta}
