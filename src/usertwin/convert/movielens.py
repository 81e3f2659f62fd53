"""MovieLens ratings -> one record per user, one item per rating, in time order.

Two published layouts are read:
* ml-latest-small / ml-latest: ratings.csv (userId,movieId,rating,timestamp), movies.csv
  (movieId,title,genres with `|`; "(no genres listed)" means none), optional tags.csv
  (userId,movieId,tag,timestamp) whose tags go to the item's metadata;
* ml-100k: u.data (user id, item id, rating, timestamp; tab-separated), u.item (pipe-separated, latin-1:
  id|title|release date|video release date|IMDb URL|19 genre flags), u.user (id|age|gender|occupation|zip).

Item: continuation_prefix "Title (Year) (Genre1, Genre2): " (the title already carries the year),
continuation the rating with one decimal ("4.0"), timestamp from the unix time.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..errors import UsertwinError
from . import iso_from_unix, open_csv, progress_bar, record, require_file, user_sort_key

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]
HALF_STARS = [x / 2 for x in range(1, 11)]
WHOLE_STARS = [1.0, 2.0, 3.0, 4.0, 5.0]


def prefix(title: str, genres: list) -> str:
    return f"{title} ({', '.join(genres)}): " if genres else f"{title}: "


def convert(raw: Path, skips, progress: bool = True):
    if (raw / "ratings.csv").exists():
        yield from _latest(raw, skips, progress)
    elif (raw / "u.data").exists():
        yield from _ml100k(raw, skips, progress)
    else:
        raise UsertwinError(f"{raw}: not a MovieLens folder: expected ratings.csv + movies.csv (ml-latest, "
                            "ml-latest-small) or u.data + u.item + u.user (ml-100k)")


def _rating(text: str, skips, where: str, scale) -> float | None:
    try:
        value = float(text)
    except ValueError:
        skips.bad("rating is not a number", where, f"rating={text!r}")
        return None
    if value not in scale:
        skips.bad("rating outside the scale", where, f"rating={text!r}, scale {scale[0]}..{scale[-1]}")
        return None
    return value


def _timestamp(text: str, skips, where: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        skips.bad("timestamp is not unix seconds", where, f"timestamp={text!r}")
        return None


def _group(rows, movies, tags, skips, scale, path):
    """(user, movie, rating, timestamp) rows -> per-user item lists."""
    by_user = defaultdict(list)
    for line, user, movie, rating_text, ts_text in rows:
        where = f"{path}:{line}"
        if movie not in movies:
            skips.bad("movie id not in the movie list", where, f"movieId={movie}")
            continue
        rating = _rating(rating_text, skips, where, scale)
        ts = _timestamp(ts_text, skips, where)
        if rating is None or ts is None:
            continue
        by_user[user].append((ts, line, movie, rating))
    return by_user


def _records(by_user, movies, tags, profiles, description, scale):
    for user in sorted(by_user, key=user_sort_key):
        items = []
        for ts, _, movie, rating in sorted(by_user[user]):  # time order; ties by file line
            title, genres = movies[movie]
            meta = {"movie_id": int(movie) if movie.isdigit() else movie, "rating": rating}
            if (user, movie) in tags:
                meta["tags"] = tags[(user, movie)]
            items.append({"continuation_prefix": prefix(title, genres), "continuation": f"{rating:.1f}",
                          "timestamp": iso_from_unix(ts), "metadata": meta})
        profile = {"name": f"user_{user}", **profiles.get(user, {})}
        yield record(user, profile, description, "en", "movie_rating", items, rating_scale=scale)


def _latest(raw: Path, skips, progress):
    movies_path = require_file(raw / "movies.csv", "the movie list movies.csv")
    ratings_path = require_file(raw / "ratings.csv", "ratings.csv")
    movies = {}
    for _line, row in open_csv(movies_path, ["movieId", "title", "genres"]):
        genres = [] if row["genres"] in ("(no genres listed)", "") else row["genres"].split("|")
        movies[row["movieId"]] = (row["title"].strip(), genres)
    tags = defaultdict(list)
    if (raw / "tags.csv").exists():
        for _line, row in open_csv(raw / "tags.csv", ["userId", "movieId", "tag", "timestamp"]):
            tags[(row["userId"], row["movieId"])].append(row["tag"])
    rows = ((line, r["userId"], r["movieId"], r["rating"], r["timestamp"]) for line, r in
            progress_bar(open_csv(ratings_path, ["userId", "movieId", "rating", "timestamp"]), progress,
                         "ratings"))
    by_user = _group(rows, movies, tags, skips, HALF_STARS, ratings_path)
    description = ("Predict the rating (0.5 to 5.0 stars, in half stars) this MovieLens user gives to each "
                   "movie, from the ratings they gave before.")
    yield from _records(by_user, movies, dict(tags), {}, description, HALF_STARS)


def _split_lines(path: Path, sep: str, fields: int, encoding: str, skips, min_fields: int | None = None):
    with open(path, encoding=encoding, newline="") as f:
        for n, text in enumerate(f, 1):
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            parts = text.split(sep)
            if len(parts) < (min_fields or fields):
                skips.bad(f"expected {fields} fields separated by {sep!r}, got {len(parts)}", f"{path}:{n}")
                continue
            yield n, parts


def _ml100k(raw: Path, skips, progress):
    item_path = require_file(raw / "u.item", "the movie list u.item")
    user_path = require_file(raw / "u.user", "the user list u.user")
    data_path = require_file(raw / "u.data", "the ratings u.data")
    movies = {}
    for _n, parts in _split_lines(item_path, "|", 24, "latin-1", skips):
        flags = parts[5:24]
        genres = [g for g, flag in zip(ML100K_GENRES, flags) if flag.strip() == "1" and g != "unknown"]
        movies[parts[0]] = (parts[1].strip(), genres)
    profiles = {}
    for n, parts in _split_lines(user_path, "|", 5, "latin-1", skips):
        uid, age, gender, occupation, zip_code = parts[:5]
        if not age.isdigit():
            skips.bad("age is not a whole number", f"{user_path}:{n}", f"age={age!r}")
            continue
        profiles[uid] = {"age": int(age), "gender": gender, "occupation": occupation, "zip_code": zip_code}
    rows = ((n, p[0], p[1], p[2], p[3]) for n, p in
            progress_bar(_split_lines(data_path, "\t", 4, "latin-1", skips), progress, "ratings"))
    by_user = _group(rows, movies, {}, skips, WHOLE_STARS, data_path)
    description = ("Predict the rating (1 to 5 stars) this MovieLens user gives to each movie, from the "
                   "ratings they gave before.")
    yield from _records(by_user, movies, {}, profiles, description, WHOLE_STARS)
