"""Douban Movie Short Comments (DMSC) CSV -> one record per Username, streamed.

Layout: ID,Movie_Name_EN,Movie_Name_CN,Crawl_Date,Number,Username,Date,Star,Comment,Like (UTF-8, a BOM is
allowed; comments may hold commas, quotes and newlines). The real file has ~2.1M rows sorted by movie, not
by user, so rows are spilled into a temporary SQLite database and read back grouped by user: memory stays
flat whatever the file size.

Item: continuation_prefix "《<Movie_Name_CN>》：", continuation the comment, timestamp the Date,
metadata {stars, likes, movie_en, id}. Rows with an empty comment are left out and counted.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from ..records import parse_timestamp
from . import open_csv, progress_bar, record, require_file

COLUMNS = ["ID", "Movie_Name_EN", "Movie_Name_CN", "Crawl_Date", "Number", "Username", "Date", "Star",
           "Comment", "Like"]
DESCRIPTION = "模拟该豆瓣用户的观影短评：根据其之前写过的短评，写出他/她对下一部电影的短评。"


def _int(text: str):
    text = (text or "").strip()
    return int(float(text)) if text else None


def convert(raw: Path, skips, progress: bool = True):
    path = raw
    if raw.is_dir():
        csvs = sorted(raw.glob("*.csv"))
        path = csvs[0] if len(csvs) == 1 else raw / "DMSC.csv"
    require_file(path, "the DMSC CSV (DMSC.csv)")
    with tempfile.TemporaryDirectory(prefix="usertwin-dmsc-") as tmp:
        db = sqlite3.connect(Path(tmp) / "rows.sqlite")
        db.execute("CREATE TABLE r (user TEXT, ts REAL, line INTEGER, date TEXT, movie_cn TEXT, movie_en TEXT,"
                   " comment TEXT, star INTEGER, likes INTEGER, id TEXT)")
        batch = []
        for line, row in progress_bar(open_csv(path, COLUMNS), progress, "DMSC rows"):
            parsed = _parse(row, line, path, skips)
            if parsed is not None:
                batch.append(parsed)
            if len(batch) >= 50_000:
                db.executemany("INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?,?)", batch)
                batch.clear()
        db.executemany("INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?,?)", batch)
        db.execute("CREATE INDEX by_user ON r (user, ts, line)")
        yield from _records(db)
        db.close()


def _parse(row, line, path, skips):
    where = f"{path}:{line}"
    user = (row["Username"] or "").strip()
    if not user:
        skips.bad("empty Username", where)
        return None
    comment = (row["Comment"] or "").strip()
    if not comment:
        skips.count("empty comment")
        return None
    try:
        ts = parse_timestamp(row["Date"].strip())
    except (ValueError, AttributeError):
        skips.bad("Date is not a date", where, f"Date={row['Date']!r}")
        return None
    try:
        star, likes = _int(row["Star"]), _int(row["Like"])
    except ValueError:
        skips.bad("Star or Like is not a number", where, f"Star={row['Star']!r}, Like={row['Like']!r}")
        return None
    return (user, ts, line, row["Date"].strip(), (row["Movie_Name_CN"] or "").strip(),
            (row["Movie_Name_EN"] or "").strip(), comment, star, likes, (row["ID"] or "").strip())


def _records(db):
    current, items = None, []
    for user, _, _, date, cn, en, comment, star, likes, rid in db.execute("SELECT * FROM r ORDER BY user, ts, line"):
        if user != current:
            if items:
                yield _record(current, items)
            current, items = user, []
        meta = {"stars": star, "likes": likes, "movie_en": en, "id": rid}
        items.append({"continuation_prefix": f"《{cn or en}》：", "continuation": comment, "timestamp": date,
                      "metadata": meta})
    if items:
        yield _record(current, items)


def _record(user, items):
    return record(user, {"name": user}, DESCRIPTION, "zh", "movie_review", items)
