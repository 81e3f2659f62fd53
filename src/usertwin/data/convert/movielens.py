"""MovieLens ratings -> one record per user (type movie_rating, English), one item per rating, in time order.

`raw` is the dataset folder; its layout is detected:

* ml-latest-small / ml-latest: ratings.csv (userId,movieId,rating,timestamp), movies.csv
  (movieId,title,genres with `|`; "(no genres listed)" means none), optional tags.csv
  (userId,movieId,tag,timestamp): the user's tags for a movie go to that rating's metadata `tags` (file
  order). A tag of a movie the user did not rate has no item to go to; such tags are counted in the
  summary ("tag without a rating": 207 of 3,683 in ml-latest-small).
* ml-100k: u.data (user id, item id, rating, timestamp; tab-separated), u.item (pipe-separated, latin-1:
  id|title|release date|video release date|IMDb URL|19 genre flags: unknown, Action, ..., Western),
  u.user (id|age|gender|occupation|zip code) -> profile age (int), gender, occupation, zip_code.
  The "unknown" genre flag is not a genre: such a movie gets no genre in its prefix.
* ml-1m: ratings.dat (UserID::MovieID::Rating::Timestamp), movies.dat (MovieID::Title::Genres, genres
  with `|`), users.dat (UserID::Gender::Age::Occupation::Zip-code); `::`-separated, latin-1. users.dat ->
  profile gender, age_group (the README's bucket for the age code: 25 -> "25-34"), occupation (the README's
  name for the code 0-20: 12 -> "programmer"), zip_code. An age or occupation code not in the README is a
  bad row of users.dat.

ml-100k and ml-1m rate in whole stars (1-5) and share a task description; ml-latest rates in half stars.

Item: continuation_prefix "Title (Year) (Genre1, Genre2): " (the title already carries the year; with no
genres "Title (Year): "), continuation the rating with one decimal ("4.0", "3.5"), timestamp the unix time
as `YYYY-MM-DDTHH:MM:SSZ`, metadata {"movie_id": int, "rating": float[, "tags": [...]]}. Items are sorted
by time, ties in file order; users by numeric id. The task holds `rating_scale` (the allowed ratings).

Bad rows (wrong field count, rating not a number or off the scale, timestamp not unix seconds, movie id not
in the movie list) stop the conversion with file:line and the field, or are skipped and counted.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from usertwin.data.convert._common import (
    CsvRows,
    Skips,
    iso_from_unix,
    progress_bar,
    record,
    require_file,
    split_lines,
    user_sort_key,
)
from usertwin.errors import UsertwinError

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]
HALF_STARS = [x / 2 for x in range(1, 11)]
WHOLE_STARS = [1.0, 2.0, 3.0, 4.0, 5.0]
DESCRIPTION_LATEST = ("Predict the rating (0.5-5.0 stars, in half stars) this MovieLens user gives to each "
                      "movie, from their rating history.")
DESCRIPTION_100K = ("Predict the rating (1-5 stars) this MovieLens user gives to each movie, from their rating "
                    "history.")
DESCRIPTION_1M = DESCRIPTION_100K  # the same task, in the same whole stars
ML1M_AGES = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55",
             "56": "56+"}
ML1M_OCCUPATIONS = {str(code): name for code, name in enumerate([
    "other or not specified", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student",
    "lawyer", "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer"])}


def prefix(title: str, genres: list) -> str:
    return f"{title} ({', '.join(genres)}): " if genres else f"{title}: "


def convert(raw_path, on_error="stop", *, progress: bool = False):
    raw, skips = Path(raw_path), Skips.of(on_error)
    if raw.is_file():
        raw = raw.parent
    if (raw / "ratings.csv").exists():
        return _latest(raw, skips, progress)
    if (raw / "u.data").exists():
        return _ml100k(raw, skips, progress)
    if (raw / "ratings.dat").exists() or (raw / "movies.dat").exists():
        return _ml1m(raw, skips, progress)
    raise UsertwinError(f"{raw}: not a MovieLens folder: expected ratings.csv + movies.csv (ml-latest, "
                        "ml-latest-small), u.data + u.item + u.user (ml-100k) or ratings.dat + movies.dat + "
                        "users.dat (ml-1m)")


def _movie_key(movie: str):
    return int(movie) if movie.isascii() and movie.isdigit() else movie


class _Ratings:
    """Parses (user, movie, rating, timestamp) rows into per-user lists of (time, line, movie, rating)."""

    def __init__(self, path: Path, movies: dict, scale: list, skips: Skips):
        self.path, self.movies, self.skips = path, movies, skips
        self.scale = {str(x): x for x in scale} | {f"{x:g}": x for x in scale}
        self.allowed = set(scale)
        self.by_user: dict[str, list] = defaultdict(list)
        self.iso: dict[int, str] = {}

    def add(self, line: int, user: str, movie: str, rating: str, stamp: str) -> None:
        rating_value = self.scale.get(rating)
        if rating_value is None:
            rating_value = self._rating(line, rating)
            if rating_value is None:
                return
        try:
            seconds = int(stamp)
            iso = iso_from_unix(seconds)
        except (ValueError, OverflowError):
            self.skips.bad("timestamp is not unix seconds", f"{self.path}:{line}", f"timestamp={stamp!r}")
            return
        if movie not in self.movies:
            self.skips.bad("movie id not in the movie list", f"{self.path}:{line}", f"movieId={movie!r}")
            return
        if not user:
            self.skips.bad("empty user id", f"{self.path}:{line}")
            return
        self.by_user[user].append((seconds, line, movie, rating_value, iso))

    def _rating(self, line: int, text: str):
        where = f"{self.path}:{line}"
        try:
            value = float(text)
        except ValueError:
            self.skips.bad("rating is not a number", where, f"rating={text!r}")
            return None
        if value not in self.allowed:
            self.skips.bad("rating outside the scale", where, f"rating={text!r}, allowed "
                           f"{min(self.allowed):g}..{max(self.allowed):g}")
            return None
        return value


def _records(ratings: _Ratings, tags: dict, profiles: dict, description: str, scale: list, skips: Skips):
    movies, prefixes = ratings.movies, {}
    used_tags = 0
    for user in sorted(ratings.by_user, key=user_sort_key):
        rows = ratings.by_user.pop(user)
        rows.sort()  # time order; ties by file line
        items = []
        for _ts, _line, movie, rating, iso in rows:
            pre = prefixes.get(movie)
            if pre is None:
                title, genres = movies[movie]
                pre = prefixes[movie] = prefix(title, genres)
            meta = {"movie_id": _movie_key(movie), "rating": rating}
            if tags:
                tag_list = tags.get((user, movie))
                if tag_list:
                    meta["tags"] = tag_list
                    used_tags += len(tag_list)
            items.append({"continuation_prefix": pre, "continuation": f"{rating:.1f}", "timestamp": iso,
                          "metadata": meta})
        profile = dict(profiles.get(user, {}))  # no name: the data gives none, and an id is no name
        yield record(user, profile, description, "en", "movie_rating", items, rating_scale=list(scale))
    unused = sum(len(v) for v in tags.values()) - used_tags
    if unused:
        skips.count("tag without a rating", n=unused)


def _latest(raw: Path, skips: Skips, progress: bool):
    movies_path = require_file(raw / "movies.csv", "the movie list movies.csv")
    ratings_path = require_file(raw / "ratings.csv", "the ratings ratings.csv")
    movies = {}
    rows = CsvRows(movies_path, ["movieId", "title", "genres"], skips)
    i_id, i_title, i_genres = rows.col["movieId"], rows.col["title"], rows.col["genres"]
    for _line, row in rows:
        text = row[i_genres].strip()
        genres = [] if text in ("(no genres listed)", "") else [g.strip() for g in text.split("|")]
        movies[row[i_id].strip()] = (row[i_title].strip(), genres)
    tags: dict = {}
    tags_path = raw / "tags.csv"
    if tags_path.exists():
        rows = CsvRows(tags_path, ["userId", "movieId", "tag", "timestamp"], skips)
        i_user, i_movie, i_tag = rows.col["userId"], rows.col["movieId"], rows.col["tag"]
        for _line, row in rows:
            tags.setdefault((row[i_user].strip(), row[i_movie].strip()), []).append(row[i_tag])
    ratings = _Ratings(ratings_path, movies, HALF_STARS, skips)
    rows = CsvRows(ratings_path, ["userId", "movieId", "rating", "timestamp"], skips)
    u, m, r, t = (rows.col[c] for c in ("userId", "movieId", "rating", "timestamp"))
    add = ratings.add
    for line, row in progress_bar(rows, progress, "ratings"):
        add(line, row[u].strip(), row[m].strip(), row[r].strip(), row[t].strip())
    yield from _records(ratings, tags, {}, DESCRIPTION_LATEST, HALF_STARS, skips)


class _BadField(ValueError):
    """A users file field that is not what the README allows: (reason, detail) for Skips.bad."""


def _profiles(path: Path, sep: str, fields: int, skips: Skips, parse) -> dict:
    """user id -> profile from an optional users file; parse(*fields after the id) -> dict or _BadField."""
    profiles = {}
    if not path.exists():
        return profiles
    for n, parts in split_lines(path, sep, fields, "latin-1", skips):
        uid, *rest = (p.strip() for p in parts)
        try:
            profiles[uid] = parse(*rest)
        except _BadField as bad:
            reason, detail = bad.args
            skips.bad(reason, f"{path}:{n}", detail)
    return profiles


def _whole_stars(path: Path, rows, movies: dict, profiles: dict, skips: Skips, progress: bool, description: str):
    """Records from (line, [user, movie, rating, timestamp]) rows rated in whole stars (ml-100k, ml-1m)."""
    ratings = _Ratings(path, movies, WHOLE_STARS, skips)
    add = ratings.add
    for n, p in progress_bar(rows, progress, "ratings"):
        add(n, *p)
    yield from _records(ratings, {}, profiles, description, WHOLE_STARS, skips)


def _profile_100k(age: str, gender: str, occupation: str, zip_code: str) -> dict:
    if not (age.isascii() and age.isdigit()):
        raise _BadField("age is not a whole number", f"age={age!r}")
    return {"age": int(age), "gender": gender, "occupation": occupation, "zip_code": zip_code}


def _profile_1m(gender: str, age: str, occupation: str, zip_code: str) -> dict:
    age_group, job = ML1M_AGES.get(age), ML1M_OCCUPATIONS.get(occupation)
    if age_group is None:
        raise _BadField("age is not an age code of the README", f"age={age!r}, allowed {', '.join(ML1M_AGES)}")
    if job is None:
        raise _BadField("occupation is not an occupation code of the README", f"occupation={occupation!r}, "
                        "allowed 0..20")
    return {"age_group": age_group, "gender": gender, "occupation": job, "zip_code": zip_code}


def _ml100k(raw: Path, skips: Skips, progress: bool):
    item_path = require_file(raw / "u.item", "the movie list u.item")
    data_path = require_file(raw / "u.data", "the ratings u.data")
    movies = {}
    for _n, parts in split_lines(item_path, "|", 24, "latin-1", skips):
        flags = parts[5:24]
        genres = [g for g, flag in zip(ML100K_GENRES, flags) if flag.strip() == "1" and g != "unknown"]
        movies[parts[0].strip()] = (parts[1].strip(), genres)
    profiles = _profiles(raw / "u.user", "|", 5, skips, _profile_100k)
    rows = split_lines(data_path, None, 4, "latin-1", skips)
    yield from _whole_stars(data_path, rows, movies, profiles, skips, progress, DESCRIPTION_100K)


def _ml1m(raw: Path, skips: Skips, progress: bool):
    movies_path = require_file(raw / "movies.dat", "the movie list movies.dat")
    data_path = require_file(raw / "ratings.dat", "the ratings ratings.dat")
    movies = {}
    for _n, (movie, title, genres) in split_lines(movies_path, "::", 3, "latin-1", skips):
        movies[movie.strip()] = (title.strip(), [g.strip() for g in genres.split("|") if g.strip()])
    profiles = _profiles(raw / "users.dat", "::", 5, skips, _profile_1m)
    rows = split_lines(data_path, "::", 4, "latin-1", skips)
    yield from _whole_stars(data_path, rows, movies, profiles, skips, progress, DESCRIPTION_1M)
