"""Douban Movie Short Comments (DMSC) CSV -> one record per Username (type movie_review, Chinese), streamed.

Layout: a CSV with header ID,Movie_Name_EN,Movie_Name_CN,Crawl_Date,Number,Username,Date,Star,Comment,Like
(UTF-8, a BOM is allowed; comments may hold commas, quotes and newlines). `raw` is the CSV file, or a folder
holding DMSC.csv (or exactly one .csv file).

Streaming: the real file has ~2.1M rows sorted by movie, not by user. A first pass reads the CSV row by row
and spills one compact row per comment into a temporary SQLite database (stdlib sqlite3, in a temporary
folder, removed afterwards); a second pass reads it back sorted by user, then Date, then file line (SQLite's
external sort) and yields one user at a time. Memory stays flat whatever the file size: at most one user's
comments are held in Python (measured on a synthetic 2.1M-row file: 40 s, 157 MB peak RSS).

Item:
* continuation_prefix: the Chinese title in book-title marks and a full-width colon, no space:
  `《复仇者联盟2》：` (the English title when Movie_Name_CN is empty);
* continuation: the comment, stripped of surrounding whitespace (inner newlines kept);
* timestamp: Date as written (`YYYY-MM-DD`);
* metadata: {"stars": int Star, "likes": int Like, "movie_en": Movie_Name_EN, "id": ID}.
Profile {"name": Username}. Users are ordered numerically when their name is a number, else by text.

Left out and counted: rows with an empty comment ("empty comment"; not an error, there is nothing to learn
to write). Bad rows (wrong field count, empty Username, Date not a date, Star or Like not a whole number,
no movie name) stop the conversion with file:line and the field, or are skipped and counted.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from usertwin.data.convert._common import CsvRows, Skips, progress_bar, record, require_file
from usertwin.data.records import parse_timestamp
from usertwin.errors import UsertwinError

COLUMNS = ["ID", "Movie_Name_EN", "Movie_Name_CN", "Crawl_Date", "Number", "Username", "Date", "Star",
           "Comment", "Like"]
DESCRIPTION = "模拟该豆瓣用户写电影短评：根据其之前写过的短评，写出他/她对下一部电影的短评。"
BATCH = 20_000


def prefix(movie_cn: str, movie_en: str = "") -> str:
    return f"《{movie_cn or movie_en}》："


def _whole(text: str) -> int:
    """'4' or '4.0' -> 4; anything else raises ValueError."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    value = float(text)  # ValueError for words and ''
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _csv_path(raw: Path) -> Path:
    if raw.is_dir():
        if (raw / "DMSC.csv").exists():
            return raw / "DMSC.csv"
        found = sorted(raw.glob("*.csv"))
        if len(found) != 1:
            raise UsertwinError(f"{raw}: expected DMSC.csv (or exactly one .csv file), found "
                                f"{', '.join(p.name for p in found) or 'none'}")
        return found[0]
    return require_file(raw, "the DMSC CSV (DMSC.csv)")


def convert(raw_path, on_error="stop", *, progress: bool = False):
    path, skips = _csv_path(Path(raw_path)), Skips.of(on_error)
    rows = CsvRows(path, COLUMNS, skips)  # checks the header now, before anything is yielded
    return _stream(rows, path, skips, progress)


def _stream(rows: CsvRows, path: Path, skips: Skips, progress: bool):
    with tempfile.TemporaryDirectory(prefix="usertwin-dmsc-") as tmp:
        db = sqlite3.connect(Path(tmp) / "rows.sqlite")
        try:
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", "cache_size=-65536"):
                db.execute(f"PRAGMA {pragma}")
            db.execute("CREATE TABLE r (num TEXT, user TEXT, ts REAL, line INTEGER, date TEXT, cn TEXT, en TEXT,"
                       " comment TEXT, star INTEGER, likes INTEGER, id TEXT)")
            _spill(rows, path, skips, db, progress)
            yield from _records(db, progress)
        except sqlite3.Error as e:
            raise UsertwinError(f"{path}: the temporary database in {tmp} failed ({e}); it needs about twice "
                                "the CSV's size on disk: set TMPDIR to a folder with more room") from None
        finally:
            db.close()


def _spill(rows: CsvRows, path: Path, skips: Skips, db, progress: bool) -> None:
    c = rows.col
    i_id, i_en, i_cn, i_user, i_date, i_star, i_comment, i_like = (
        c["ID"], c["Movie_Name_EN"], c["Movie_Name_CN"], c["Username"], c["Date"], c["Star"], c["Comment"],
        c["Like"])
    batch = []
    insert = "INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?,?,?)"
    dates: dict[str, float] = {}
    for line, row in progress_bar(rows, progress, "DMSC rows"):
        user = row[i_user].strip()
        if not user:
            skips.bad("empty Username", f"{path}:{line}")
            continue
        comment = row[i_comment].strip()
        if not comment:
            skips.count("empty comment", f"{path}:{line}")
            continue
        date = row[i_date].strip()
        ts = dates.get(date)
        if ts is None:
            try:
                ts = parse_timestamp(date)
            except ValueError:
                skips.bad("Date is not a date", f"{path}:{line}", f"Date={row[i_date]!r}")
                continue
            if len(dates) < 100_000:
                dates[date] = ts
        try:
            star = _whole(row[i_star])
        except (ValueError, OverflowError):
            skips.bad("Star is not a whole number", f"{path}:{line}", f"Star={row[i_star]!r}")
            continue
        try:
            likes = _whole(row[i_like])
        except (ValueError, OverflowError):
            skips.bad("Like is not a whole number", f"{path}:{line}", f"Like={row[i_like]!r}")
            continue
        cn, en = row[i_cn].strip(), row[i_en].strip()
        if not cn and not en:
            skips.bad("no movie name", f"{path}:{line}", "Movie_Name_CN and Movie_Name_EN are empty")
            continue
        num = user.lstrip("0") if user.isascii() and user.isdigit() else None
        batch.append((num, user, ts, line, date, cn, en, comment, star, likes, row[i_id].strip()))
        if len(batch) >= BATCH:
            db.executemany(insert, batch)
            batch.clear()
    db.executemany(insert, batch)
    db.commit()


def _records(db, progress: bool):
    query = ("SELECT user, date, cn, en, comment, star, likes, id FROM r "
             "ORDER BY num IS NULL, length(num), num, user, ts, line")
    current, items = None, []
    total = db.execute("SELECT count(*) FROM r").fetchone()[0]
    for user, date, cn, en, comment, star, likes, rid in progress_bar(db.execute(query), progress, "comments",
                                                                       total=total):
        if user != current:
            if items:
                yield _record(current, items)
            current, items = user, []
        items.append({"continuation_prefix": prefix(cn, en), "continuation": comment, "timestamp": date,
                      "metadata": {"stars": star, "likes": likes, "movie_en": en, "id": rid}})
    if items:
        yield _record(current, items)


def _record(user: str, items: list) -> dict:
    return record(user, {"name": user}, DESCRIPTION, "zh", "movie_review", items)
