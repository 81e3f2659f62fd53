"""Converters: exact counts on real data, fixtures in each published layout, time order, prefixes, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import shared
from helpers import FIXTURES, ROOT

from usertwin.cli import main
from usertwin.data.convert import DATASETS, convert_to_file
from usertwin.data.records import load, parse_timestamp
from usertwin.errors import UsertwinError

FIX = FIXTURES / "convert"
def _convert(dataset, raw, tmp_path, **kw):
    out = tmp_path / f"{dataset}.jsonl"
    summary = convert_to_file(dataset, raw, out, progress=False, **kw)
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    loaded = load(out)  # every converter's output passes validation
    assert len(loaded.records) == summary.users == len(recs)
    assert loaded.n_items == summary.items
    assert summary.skipped == sum(summary.skip_reasons.values())
    return summary, recs


def _items(rec):
    return [it for c in rec["task"]["task_behavior_collections"] for it in c["data"]]


def _assert_time_order(recs):
    for rec in recs:
        times = [parse_timestamp(it["timestamp"]) for it in _items(rec)]
        assert times == sorted(times), rec["user_hash"]


def _numeric_user_order(recs):
    ids = [int(r["user_hash"]) for r in recs]
    assert ids == sorted(ids)


def test_every_converter_module_is_registered_once_and_shown_in_the_help():
    import usertwin.data.convert as package
    from usertwin.cli import build_parser

    modules = {p.stem for p in Path(package.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in DATASETS.values()) == sorted(modules)
    assert all(callable(m.convert) and (m.__doc__ or "").strip() for m in DATASETS.values())
    assert all(name == name.lower() and "_" not in name for name in DATASETS)  # the CLI folds case and _ to -
    convert = build_parser()._subparsers._group_actions[0].choices["convert"]
    shown = next(a.help for a in convert._actions if a.dest == "dataset")
    assert all(name in shown for name in DATASETS)


# --------------------------------------------------------------------------------------------- movielens


def test_movielens_latest_small_real(tmp_path):
    raw = shared("movielens", "ml-latest-small")
    summary, recs = _convert("movielens", raw, tmp_path)  # its speed is measured in benchmarks/pipeline.py
    assert (summary.users, summary.items) == (610, 100_836)
    assert (summary.first, summary.last) == ("1996-03-29T18:36:55Z", "2018-09-24T14:27:30Z")
    assert summary.line().startswith(
        f"movielens: 610 users, 100836 items, 1996-03-29 .. 2018-09-24 -> {tmp_path / 'movielens.jsonl'}")
    # 207 of the 3,683 tags are of movies the user did not rate: no item to attach them to, counted
    assert summary.skip_reasons == {"tag without a rating": 207}
    assert len({it["metadata"]["movie_id"] for r in recs for it in _items(r)}) == 9_724  # rated movies
    _numeric_user_order(recs)
    _assert_time_order(recs)
    first = recs[0]
    assert first["user_hash"] == first["user"]["id"] == "1" and first["user"]["profile"] == {}  # no name made up
    assert first["task"]["language"] == "en"
    assert first["task"]["rating_scale"] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert first["task"]["task_behavior_collections"][0]["type"] == "movie_rating"
    toy = [it for it in _items(first) if it["metadata"]["movie_id"] == 1][0]
    assert toy == {"continuation_prefix": "Toy Story (1995) (Adventure, Animation, Children, Comedy, Fantasy): ",
                   "continuation": "4.0", "timestamp": "2000-07-30T18:45:03Z",
                   "metadata": {"movie_id": 1, "rating": 4.0}}
    assert {it["continuation"] for r in recs for it in _items(r)} == {f"{x / 2:.1f}" for x in range(1, 11)}
    tagged = [it for r in recs if r["user_hash"] == "2" for it in _items(r) if "tags" in it["metadata"]]
    assert {"funny", "Highly quotable", "will ferrell"} <= {t for it in tagged for t in it["metadata"]["tags"]}
    assert sum(len(it["metadata"].get("tags", [])) for r in recs for it in _items(r)) == 3_683 - 207
    # a movie without genres: "Title (Year): "
    no_genre = [it["continuation_prefix"] for r in recs for it in _items(r) if it["metadata"]["movie_id"] == 114335]
    assert no_genre and set(no_genre) == {"La cravate (1957): "}


def test_movielens_100k_fixture(tmp_path):
    summary, recs = _convert("movielens", FIX / "ml-100k", tmp_path)
    assert (summary.users, summary.items, summary.skipped) == (3, 7, 0)
    assert summary.line().startswith("movielens: 3 users, 7 items, 1997-09-22 .. 1998-02-27 -> ")
    assert recs[0]["user"]["profile"] == {"age": 24, "gender": "M", "occupation": "technician",
                                          "zip_code": "85711"}
    assert recs[0]["task"]["rating_scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert "(1-5 stars)" in recs[0]["task"]["description"]
    assert [(it["continuation_prefix"], it["continuation"], it["timestamp"]) for it in _items(recs[0])] == [
        ("Café au Lait (1994) (Comedy): ", "4.0", "1997-09-22T22:01:40Z"),  # latin-1 title
        ("Toy Story (1995) (Animation, Children's, Comedy): ", "5.0", "1997-09-22T22:02:38Z"),
        ("GoldenEye (1995) (Action, Adventure, Thriller): ", "3.0", "1997-10-15T05:26:11Z")]
    assert _items(recs[0])[0]["metadata"] == {"movie_id": 3, "rating": 4.0}
    assert [it["metadata"]["movie_id"] for it in _items(recs[1])] == [2, 3, 1]  # a tie in time keeps file order
    assert _items(recs[2])[0]["continuation_prefix"] == "Unknown Movie (1998): "  # only the "unknown" flag
    _assert_time_order(recs)


def _ml_folder(tmp_path, ratings: str) -> Path:
    raw = tmp_path / "ml"
    raw.mkdir(exist_ok=True)
    (raw / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n", encoding="utf-8")
    (raw / "ratings.csv").write_text(ratings, encoding="utf-8")
    return raw


def test_movielens_missing_column(tmp_path):
    raw = _ml_folder(tmp_path, "userId,movieId,timestamp\n1,1,964982703\n")
    with pytest.raises(UsertwinError, match=r"ratings.csv: missing column\(s\) rating; found userId, movieId, "
                                            r"timestamp \(expected userId, movieId, rating, timestamp\)"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    (raw / "movies.csv").unlink()
    with pytest.raises(UsertwinError, match=r"movies.csv: missing \(the movie list movies.csv\)"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    with pytest.raises(UsertwinError, match=r"not a MovieLens folder"):
        convert_to_file("movielens", tmp_path, tmp_path / "o.jsonl", progress=False)


def test_movielens_bad_rows_stop_and_skip(tmp_path):
    raw = _ml_folder(tmp_path, "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,1,four,964982704\n"
                               "2,1,4.0,yesterday\n2,1,7.0,964982705\n2,99,3.0,964982706\n3,1,3.0\n")
    with pytest.raises(UsertwinError, match=r"ratings.csv:3: rating is not a number \(rating='four'\)"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    assert not (tmp_path / "o.jsonl").exists()  # complete or absent
    summary = convert_to_file("movielens", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert (summary.users, summary.items, summary.skipped) == (1, 1, 5)
    assert summary.skip_reasons == {"rating is not a number": 1, "timestamp is not unix seconds": 1,
                                    "rating outside the scale": 1, "movie id not in the movie list": 1,
                                    "expected 4 fields, got 3": 1}
    assert summary.skip_examples["timestamp is not unix seconds"].endswith(
        "ratings.csv:4: timestamp is not unix seconds (timestamp='yesterday')")
    assert summary.skip_examples["expected 4 fields, got 3"].endswith("ratings.csv:7: expected 4 fields, got 3")
    assert "skipped 5: 1 expected 4 fields, got 3, 1 movie id not in the movie list" in summary.line()


def test_movielens_100k_bad_row(tmp_path):
    raw = tmp_path / "ml-100k"
    shutil.copytree(FIX / "ml-100k", raw)
    with open(raw / "u.data", "a", encoding="latin-1") as f:
        f.write("3\t1\t4\n")
    with pytest.raises(UsertwinError, match=r"u.data:8: expected 4 fields separated by whitespace, got 3"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)


ML1M_MOVIES = ("1::Toy Story (1995)::Animation|Children's|Comedy\n582::Metisse (Café au Lait) (1993)::Comedy\n"
               "3::Grumpier Old Men (1995)::Comedy|Romance\n")
ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n"
ML1M_RATINGS = ("1::1::5::978300760\n1::582::3::978302109\n2::3::4::978298814\n2::1::2::978298814\n"
                "1::3::1::978300000\n3::1::4::978244177\n")


def _ml1m_folder(tmp_path, users: str = ML1M_USERS, ratings: str = ML1M_RATINGS) -> Path:
    raw = tmp_path / "ml-1m"
    raw.mkdir(exist_ok=True)
    for name, text in (("movies.dat", ML1M_MOVIES), ("users.dat", users), ("ratings.dat", ratings)):
        (raw / name).write_text(text, encoding="latin-1")
    return raw


def test_movielens_1m_layout(tmp_path):
    summary, recs = _convert("movielens", _ml1m_folder(tmp_path), tmp_path)
    assert (summary.users, summary.items, summary.skipped) == (3, 6, 0)
    assert summary.line().startswith("movielens: 3 users, 6 items, 2000-12-31 .. 2000-12-31 -> ")
    assert [r["user"]["profile"] for r in recs] == [
        {"age_group": "Under 18", "gender": "F", "occupation": "K-12 student", "zip_code": "48067"},
        {"age_group": "56+", "gender": "M", "occupation": "self-employed", "zip_code": "70072"},
        {}]  # no row in users.dat; no name is made up from the id
    task = recs[0]["task"]
    assert task["rating_scale"] == [1.0, 2.0, 3.0, 4.0, 5.0] and "(1-5 stars)" in task["description"]
    assert [(it["continuation_prefix"], it["continuation"], it["timestamp"]) for it in _items(recs[0])] == [
        ("Grumpier Old Men (1995) (Comedy, Romance): ", "1.0", "2000-12-31T22:00:00Z"),
        ("Toy Story (1995) (Animation, Children's, Comedy): ", "5.0", "2000-12-31T22:12:40Z"),
        ("Metisse (Café au Lait) (1993) (Comedy): ", "3.0", "2000-12-31T22:35:09Z")]  # latin-1 title
    assert _items(recs[0])[2]["metadata"] == {"movie_id": 582, "rating": 3.0}
    assert [it["metadata"]["movie_id"] for it in _items(recs[1])] == [3, 1]  # a tie in time keeps file order
    _numeric_user_order(recs)
    _assert_time_order(recs)


def test_movielens_1m_bad_rows_stop_and_skip(tmp_path):
    raw = _ml1m_folder(tmp_path, users=ML1M_USERS + "3::M::30::12::55117\n4::F::25::21::02139\n",
                       ratings=ML1M_RATINGS + "3::1::4\n4::9::3::978244178\n")
    with pytest.raises(UsertwinError, match=r"users.dat:3: age is not an age code of the README \(age='30', "
                                            r"allowed 1, 18, 25, 35, 45, 50, 56\)"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    summary = convert_to_file("movielens", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert (summary.users, summary.items, summary.skipped) == (3, 6, 4)
    assert summary.skip_reasons == {"age is not an age code of the README": 1,
                                    "occupation is not an occupation code of the README": 1,
                                    "expected 4 fields separated by '::', got 3": 1,
                                    "movie id not in the movie list": 1}
    assert summary.skip_examples["occupation is not an occupation code of the README"].endswith(
        "users.dat:4: occupation is not an occupation code of the README (occupation='21', allowed 0..20)")
    assert summary.skip_examples["expected 4 fields separated by '::', got 3"].endswith(
        "ratings.dat:7: expected 4 fields separated by '::', got 3")
    (raw / "users.dat").write_text(ML1M_USERS, encoding="latin-1")
    with pytest.raises(UsertwinError, match=r"ratings.dat:7: expected 4 fields separated by '::', got 3"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    (raw / "ratings.dat").unlink()
    with pytest.raises(UsertwinError, match=r"ratings.dat: missing \(the ratings ratings.dat\)"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)


def _ml1m_real() -> Path:
    """The real ml-1m folder; its ratings.dat from ml-1m-partial (its first 487,650 lines) while the whole
    file is absent."""
    raw = shared("movielens", "ml-1m")
    return raw if (raw / "ratings.dat").exists() else shared("movielens", "ml-1m-partial")


def test_movielens_1m_real_first_users(tmp_path):
    real, raw = _ml1m_real(), tmp_path / "ml-1m"
    raw.mkdir()
    for name in ("movies.dat", "users.dat"):
        shutil.copy(real / name, raw / name)
    with open(real / "ratings.dat", "rb") as f:  # sorted by user: users 1..50 are the first 7,260 lines
        (raw / "ratings.dat").write_bytes(b"".join(line for _, line in zip(range(7_260), f)))
    summary, recs = _convert("movielens", raw, tmp_path)
    assert (summary.users, summary.items, summary.skipped) == (50, 7_260, 0)
    assert [r["user_hash"] for r in recs] == [str(n) for n in range(1, 51)]
    assert [len(_items(r)) for r in recs[:3]] == [53, 129, 51]
    assert recs[0]["user"]["profile"] == {"age_group": "Under 18", "gender": "F",
                                          "occupation": "K-12 student", "zip_code": "48067"}
    assert recs[1]["user"]["profile"]["occupation"] == "self-employed"
    cuckoo = [it for it in _items(recs[0]) if it["metadata"]["movie_id"] == 1193]
    assert cuckoo == [{"continuation_prefix": "One Flew Over the Cuckoo's Nest (1975) (Drama): ",
                       "continuation": "5.0", "timestamp": "2000-12-31T22:12:40Z",
                       "metadata": {"movie_id": 1193, "rating": 5.0}}]
    _assert_time_order(recs)


@pytest.mark.parametrize("folder, users, ratings, movies", [
    ("ml-1m", 6_040, 1_000_209, 3_706),  # as its README says
    ("ml-1m-partial", 2_999, 487_650, 3_615)])  # ml-1m's first 487,650 ratings (users 1..2999)
def test_movielens_1m_real_totals(tmp_path, folder, users, ratings, movies):
    raw = shared("movielens", folder)
    if not (raw / "ratings.dat").exists():
        pytest.skip(f"{raw}/ratings.dat not present: no stored copy of the 24 MB file could be fetched "
                    "(SOURCE.md in its parent folder says why)")
    summary = convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)  # counts only: fast
    assert (summary.users, summary.items, summary.skipped) == (users, ratings, 0)
    with open(tmp_path / "o.jsonl", encoding="utf-8") as f:
        rated = {it["metadata"]["movie_id"] for line in f for it in _items(json.loads(line))}
    assert len(rated) == movies


# --------------------------------------------------------------------------------------------- dmsc


def test_dmsc_fixture(tmp_path):
    with pytest.raises(UsertwinError, match=r"DMSC.csv:7: Star is not a whole number \(Star='x'\)"):
        _convert("dmsc", FIX / "dmsc" / "DMSC.csv", tmp_path)
    summary, recs = _convert("dmsc", FIX / "dmsc", tmp_path, on_error="skip")  # the folder works too
    assert (summary.users, summary.items) == (4, 6)
    assert summary.skip_reasons == {"empty comment": 1, "Star is not a whole number": 1}
    assert summary.line().startswith("dmsc: 4 users, 6 items, 2014-12-31 .. 2016-02-02 -> ")
    assert [r["user_hash"] for r in recs] == ["9", "10", "影志", "然潘"]  # numeric names numerically, then text
    assert recs[2]["user"]["profile"] == {"name": "影志"}
    assert recs[2]["task"]["language"] == "zh"
    assert recs[2]["task"]["task_behavior_collections"][0]["type"] == "movie_review"
    ying = _items(recs[2])
    assert [it["continuation_prefix"] for it in ying] == ["《大鱼》：", "《复仇者联盟2》："]
    assert ying[1] == {"continuation_prefix": "《复仇者联盟2》：",
                       "continuation": '好看，但"奥创"太弱了,\n第二行',  # comma, quotes and newline, via the BOM header
                       "timestamp": "2015-04-30",
                       "metadata": {"stars": 4, "likes": 1231, "movie_en": "Avengers Age of Ultron", "id": "1"}}
    assert _items(recs[0])[0]["metadata"] == {"stars": 3, "likes": 12, "movie_en": "Avengers Age of Ultron",
                                              "id": "7"}
    assert [it["timestamp"] for it in _items(recs[3])] == ["2014-12-31", "2015-05-13"]
    _assert_time_order(recs)


def test_dmsc_missing_column_and_short_row(tmp_path):
    bad = tmp_path / "DMSC.csv"
    bad.write_text("ID,Movie_Name_EN,Movie_Name_CN,Crawl_Date,Number,Username,Date,Star,Like\n", encoding="utf-8")
    with pytest.raises(UsertwinError, match=r"DMSC.csv: missing column\(s\) Comment; found ID, Movie_Name_EN, "):
        convert_to_file("dmsc", bad, tmp_path / "o.jsonl", progress=False)
    header = (FIX / "dmsc" / "DMSC.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    bad.write_text(f"{header}\n0,Big Fish,大鱼,2017-01-22,1,影志\n1,Big Fish,大鱼,2017-01-22,2,影志,2015-13-45,5,好,1\n",
                   encoding="utf-8")
    with pytest.raises(UsertwinError, match=r"DMSC.csv:2: expected 10 fields, got 6"):
        convert_to_file("dmsc", bad, tmp_path / "o.jsonl", progress=False)
    summary = convert_to_file("dmsc", bad, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert (summary.users, summary.items) == (0, 0)
    assert summary.skip_reasons == {"expected 10 fields, got 6": 1, "Date is not a date": 1}
    assert summary.skip_examples["Date is not a date"].endswith("DMSC.csv:3: Date is not a date (Date='2015-13-45')")


# --------------------------------------------------------------------------------------------- douban-dmr


def test_douban_dmr_real(tmp_path):
    raw = shared("douban_dmr")
    summary, recs = _convert("douban-dmr", raw, tmp_path)
    # 44 users, 1,583 user_reviews: no duplicate user, no duplicate review; 360 have no text (stars only)
    # and are counted, not kept; every entry's top-level review is its user's review0 (not added twice)
    assert (summary.users, summary.items + summary.skipped) == (44, 1583)
    assert (summary.items, summary.skip_reasons) == (1223, {"empty review text": 360})
    assert summary.line().startswith("douban-dmr: 44 users, 1223 items, 2014-01-12 .. 2021-03-31 -> ")
    _assert_time_order(recs)
    rec = [r for r in recs if r["user_hash"] == "5323ae9435a1efb493a53753c007225d"][0]
    assert rec["user"]["profile"] == {
        "name": "豆友233403034", "set_picture": 0, "register_time": "2021-02-18", "address": "",
        "self_description": "", "follow_count": 0, "followers_count": 0, "long_review_count": 0,
        "viewed_count": 49, "on_viewing_count": 0, "want_viewing_count": 32}
    assert rec["task"]["language"] == "zh"
    last = _items(rec)[-1]  # the top-level review: the latest, carrying the spam label
    assert last["continuation"].startswith("前几天在中央六台电影频道看了这部电影")
    assert last["continuation_prefix"] == "诛仙1 诛仙 Ⅰ（爱情/奇幻/古装）："
    assert last["timestamp"] == "2021-03-31"
    assert last["metadata"] == {"stars": 5, "useful": 28, "movie_id": "25779217", "tags": [], "label": 0}
    assert sum("label" in it["metadata"] for r in recs for it in _items(r)) == 44
    items = [it for r in recs for it in _items(r)]
    assert all(isinstance(it["metadata"]["stars"], int) for it in items)
    assert sum(bool(it["metadata"]["tags"]) for it in items) > 0
    prefixes = [it["continuation_prefix"] for it in items]
    assert prefixes.count("电影 26265170：") == 1  # the one kept review of a movie not in movies.json
    # same-day reviews: the file lists them newest first, the items oldest first
    reviews = json.loads((raw / "reviews.json").read_text(encoding="utf-8"))
    entry = reviews["review0"]
    texts = [v["text"].strip() for v in reversed(list(entry["user_reviews"].values())) if v["text"].strip()]
    assert [it["continuation"] for it in _items(rec)] == texts


def test_douban_dmr_duplicates_merged_and_counted(tmp_path):
    raw = tmp_path / "dmr"
    raw.mkdir()
    shutil.copy(shared("douban_dmr", "movies.json"), raw / "movies.json")
    reviews = json.loads(shared("douban_dmr", "reviews.json").read_text(encoding="utf-8"))
    small = {"review0": reviews["review0"], "review1": reviews["review1"]}
    twin = json.loads(json.dumps(reviews["review0"]))
    old = twin["user_reviews"]["review1"]
    twin["user_reviews"] = {"review0": old}  # the same user again, with one review the first entry also has
    twin.update(movie_id=str(old["movie_id"]), text=old["text"], date=old["date"] + " 10:00:00", stars=old["stars"])
    small["review2"] = twin
    (raw / "reviews.json").write_text(json.dumps(small, ensure_ascii=False), encoding="utf-8")
    summary, recs = _convert("douban-dmr", raw, tmp_path)
    n0 = sum(bool(v["text"].strip()) for v in reviews["review0"]["user_reviews"].values())
    n1 = sum(bool(v["text"].strip()) for v in reviews["review1"]["user_reviews"].values())
    assert (summary.users, summary.items) == (2, n0 + n1)
    assert summary.skip_reasons["duplicate review"] == 1
    (raw / "reviews.json").write_text('{"review0": {"user_id": "a", "user_reviews": {"review0": '
                                      '{"movie_id": 1, "text": "好", "date": "someday"}}}}', encoding="utf-8")
    with pytest.raises(UsertwinError, match=r"reviews.json, entry 'review0' \(user 'a'\), user_reviews.review0: "
                                            r"date is not a date \(field date='someday'\)"):
        convert_to_file("douban-dmr", raw, tmp_path / "o.jsonl", progress=False)
    # no screen_name: no name, rather than the encrypted user id shown in the prompt as one
    (raw / "reviews.json").write_text('{"review0": {"user_id": "a", "user_reviews": {"review0": '
                                      '{"movie_id": 1, "text": "好", "date": "2020-01-01"}}}}', encoding="utf-8")
    _, recs = _convert("douban-dmr", raw, tmp_path)
    assert (recs[0]["user_hash"], recs[0]["user"]["profile"]) == ("a", {})


# --------------------------------------------------------------------------------------------- cornell


def test_cornell_fixture(tmp_path):
    summary, recs = _convert("cornell", FIX / "cornell", tmp_path)
    assert (summary.users, summary.items) == (4, 10)
    assert summary.skip_reasons == {"empty line text": 1, "line in no conversation": 1}
    assert summary.line().startswith("cornell: 4 users, 10 items, no timestamps -> ")
    assert [r["user_hash"] for r in recs] == ["u0", "u2", "u10", "u11"]
    bianca = recs[0]
    # the profile (what the prompt shows) describes the character; the corpus' ids are the record's metadata
    assert bianca["user"]["profile"] == {"name": "BIANCA", "gender": "f",
                                         "movie_title": "10 things i hate about you", "movie_year": "1999",
                                         "movie_genres": ["comedy", "romance"]}
    assert bianca["metadata"] == {"movie_id": "m0", "credit_position": "4"}
    assert bianca["task"]["language"] == "en"
    assert all(r["task"]["role"] == "character" for r in recs)
    assert bianca["task"]["task_behavior_collections"][0]["type"] == "dialogue"
    items = _items(bianca)
    assert [it["continuation"] for it in items] == [
        "Can we make this quick?  Roxanne Korrine and Andrew Barrett are having an incredibly horrendous "
        "public break- up on the quad.  Again.", "Not the hacking and gagging and spitting part.  Please.",
        "They do not!"]
    assert items[0]["context"] == [] and items[0]["continuation_prefix"] == ""
    assert [t["source"] for t in items[1]["context"]] == ["BIANCA", "CAMERON"]
    assert items[2]["context"] == [{"source": "CAMERON", "content": "They do to!"}]
    assert [it["metadata"] for it in items] == [{"order": 0, "line_id": "L194", "movie_id": "m0"},
                                                {"order": 2, "line_id": "L196", "movie_id": "m0"},
                                                {"order": 4, "line_id": "L1045", "movie_id": "m0"}]
    assert all("timestamp" not in it for r in recs for it in _items(r))
    cameron = _items(recs[1])  # the empty line L197 is neither an item nor context
    assert [it["metadata"]["line_id"] for it in cameron] == ["L195", "L1044"]
    jose = recs[2]
    assert jose["user"]["profile"] == {"name": "JOSÉ",  # gender "?" is unknown: no profile line
                                       "movie_title": "1492: conquest of paradise", "movie_year": "1992",
                                       "movie_genres": ["adventure", "biography", "drama", "history"]}
    assert jose["metadata"] == {"movie_id": "m1", "credit_position": "?"}
    assert [it["continuation"] for it in _items(jose)] == ["¿Señor?", "Where?", "Sí, señor."]
    assert _items(jose)[1]["context"] == [{"source": "JOSÉ", "content": "¿Señor?"},
                                         {"source": "COLUMBUS", "content": "Land, José. Land."}]
    orders = [it["metadata"]["order"] for r in recs for it in _items(r)]
    assert sorted(orders) == list(range(10))


def test_cornell_without_the_metadata_files(tmp_path):
    raw = tmp_path / "c"
    shutil.copytree(FIX / "cornell", raw)
    (raw / "movie_characters_metadata.txt").unlink()
    _, recs = _convert("cornell", raw, tmp_path)
    assert recs[0]["user"]["profile"] == {"name": "BIANCA", "movie_title": "10 things i hate about you",
                                          "movie_year": "1999", "movie_genres": ["comedy", "romance"]}
    assert recs[0]["metadata"] == {"movie_id": "m0"}
    (raw / "movie_titles_metadata.txt").unlink()
    _, recs = _convert("cornell", raw, tmp_path)
    assert recs[0]["user"]["profile"] == {"name": "BIANCA"}
    assert load(tmp_path / "cornell.jsonl").records[0].role == "character"


def test_cornell_bad_rows(tmp_path):
    raw = tmp_path / "c"
    shutil.copytree(FIX / "cornell", raw)
    with open(raw / "movie_conversations.txt", "a", encoding="iso-8859-1") as f:
        f.write("u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L9999']\n")
    with pytest.raises(UsertwinError, match=r"movie_conversations.txt:5: conversation names line ids not in "
                                            r"movie_lines.txt \(L9999\)"):
        convert_to_file("cornell", raw, tmp_path / "o.jsonl", progress=False)
    with open(raw / "movie_lines.txt", "a", encoding="iso-8859-1") as f:
        f.write("L700 +++$+++ u0 +++$+++ m0\n")
        f.write("L701 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++\n")  # empty text, trailing space stripped
    summary = convert_to_file("cornell", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert summary.skip_reasons == {"empty line text": 2, "line in no conversation": 1,
                                    "conversation names line ids not in movie_lines.txt": 1,
                                    "expected 5 fields separated by '+++$+++', got 3": 1}
    assert summary.items == 10


# --------------------------------------------------------------------------------------------- seed samples


def test_seed_samples_real(tmp_path):
    summary, recs = _convert("seed-samples", shared("seed_examples", "all_samples.json"), tmp_path)
    assert (summary.users, summary.items, summary.skipped) == (5, 159, 0)
    ids = [r["user_hash"] for r in recs]
    assert ids == sorted(ids)
    rec = [r for r in recs if r["user_hash"] == "7592dfea30f271564f4402a6422daf9b"][0]
    profile = rec["user"]["profile"]
    assert profile["name"] == "HP" and "big_five" in profile["dimensions"] and profile["life_experience"]
    assert "user_object" not in profile  # it repeats user_profile in the real data
    assert rec["task"]["language"] == "ja"
    assert rec["task"]["description"].startswith("基于用户在 RealPersonaChat 数据集中的历史对话数据")
    first = _items(rec)[0]
    assert first["continuation"] == "すごく寒いです！そろそろニット着たいですね。"
    assert first["context"] == [{"source": "interlocutor", "content": "おはようございます。"},
                                {"source": "user", "content": "おはようございます。"},
                                {"source": "interlocutor",
                                 "content": "昨日からすごく涼しくなりましたね。今朝は寒いくらいです。そちらはどうですか？"}]
    assert first["metadata"] == {"order": 0, "source_file": "all_samples.json"}
    assert [it["metadata"]["order"] for it in _items(rec)] == sorted(it["metadata"]["order"] for it in _items(rec))
    # the folder: val_samples.json's 20 samples all repeat samples of all_samples.json -> kept once, counted
    summary, recs = _convert("seed-samples", shared("seed_examples"), tmp_path)
    assert (summary.users, summary.items) == (5, 159)
    assert summary.skip_reasons == {"duplicate sample": 20}
    also = [it for r in recs for it in _items(r) if it["metadata"].get("also_in")]
    assert len(also) == 20 and all(it["metadata"]["also_in"] == ["val_samples.json"] for it in also)


def test_seed_samples_bad_sample(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"user_hash": "u1", "context": [{"role": "user", "content": "hi"}],
                                 "next_question": "hello there", "user_profile": {"name": "Ann"}},
                                {"user_hash": "u1", "context": [], "next_question": ""},
                                {"user_hash": ["u2"], "context": [], "next_question": "hi"}]), encoding="utf-8")
    with pytest.raises(UsertwinError, match=r"s.json, sample 1 \(user 'u1'\): next_question is missing or empty"):
        convert_to_file("seed-samples", path, tmp_path / "o.jsonl", progress=False)
    summary, recs = _convert("seed-samples", path, tmp_path, on_error="skip")
    assert (summary.users, summary.items, summary.skipped) == (1, 1, 2)
    assert summary.skip_examples["sample without a user_hash string"].endswith(
        "s.json, sample 2: sample without a user_hash string (field user_hash=['u2'])")
    assert recs[0]["task"]["language"] == "en"
    assert recs[0]["user"]["profile"] == {"name": "Ann"}
    # a user without a name gets none: the user_hash is an id, not something to show in the prompt
    path.write_text(json.dumps([{"user_hash": "9f3a", "context": [], "next_question": "hi"}]), encoding="utf-8")
    _, recs = _convert("seed-samples", path, tmp_path)
    assert (recs[0]["user_hash"], recs[0]["user"]["profile"]) == ("9f3a", {})


# --------------------------------------------------------------------------------------------- records, errors


def test_records_pass_through_unchanged(tmp_path):
    summary, _ = _convert("movielens", FIX / "ml-100k", tmp_path)
    src = tmp_path / "movielens.jsonl"
    again = tmp_path / "again.jsonl"
    assert convert_to_file("records", src, again, progress=False).line().startswith(
        "records: 3 users, 7 items, 1997-09-22 .. 1998-02-27 -> ")
    assert again.read_bytes() == src.read_bytes()  # rating_scale and all
    lines = src.read_text(encoding="utf-8").splitlines()
    broken = json.loads(lines[1])
    broken["task"]["task_behavior_collections"][0]["data"][0]["continuation"] = ""
    src.write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n", encoding="utf-8")
    with pytest.raises(UsertwinError, match="empty continuation"):
        convert_to_file("records", src, again, progress=False)
    summary = convert_to_file("records", src, again, on_error="skip", progress=False)
    # the bad item is left out, not its user: the user's other items are written as they stood
    assert (summary.users, summary.items, summary.skip_reasons) == (3, 6, {"invalid item": 1})
    written = again.read_text(encoding="utf-8").splitlines()
    kept = json.loads(written[1])["task"]["task_behavior_collections"][0]["data"]
    assert kept == broken["task"]["task_behavior_collections"][0]["data"][1:]
    assert [written[0], written[2]] == [lines[0], lines[2]]


def test_unknown_dataset_missing_input_and_cli(tmp_path, capsys):
    with pytest.raises(UsertwinError, match="unknown dataset 'imdb'; choose one of movielens, dmsc, douban-dmr, "
                                            "cornell, seed-samples, realpersonachat, persona-bench, realtalk, "
                                            "lovink-questionnaire, records"):
        convert_to_file("imdb", tmp_path, tmp_path / "o.jsonl")
    with pytest.raises(UsertwinError, match="on_error must be 'stop' or 'skip'"):
        convert_to_file("movielens", FIX / "ml-100k", tmp_path / "o.jsonl", on_error="ignore")
    with pytest.raises(UsertwinError, match=r"DMSC.csv: expected the corpus folder"):
        convert_to_file("cornell", FIX / "dmsc" / "DMSC.csv", tmp_path / "o.jsonl")
    with pytest.raises(UsertwinError, match=r"is a directory; give the records file to write"):
        convert_to_file("movielens", FIX / "ml-100k", tmp_path)
    assert main(["convert", "movielens", str(tmp_path / "nope"), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope: does not exist" in err and "Traceback" not in err
    assert main(["convert", "cornell", str(FIX / "cornell"), "-o", str(tmp_path / "c.jsonl"), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("cornell: 4 users, 10 items, no timestamps -> ")


def test_shipped_quickstart_records_match_the_converter(tmp_path):
    example = ROOT / "examples" / "movielens-mini"
    out = tmp_path / "records.jsonl"
    summary = convert_to_file("movielens", example, out, progress=False)
    assert (summary.users, summary.items) == (12, 460)
    assert out.read_bytes() == (example / "records.jsonl").read_bytes()


def test_a_converter_on_invalid_json_points_to_validate_repair(tmp_path, capsys):
    """The seeds' LovinkQuestionnaire example holds an unescaped inner quote: convert names the place, shows the
    line and says which repair fixes it (validate --repair), then to convert the repaired copy."""
    from usertwin.cli import main

    raw = tmp_path / "q.json"
    raw.write_text('[{"user": {"profile": {"name": "u1"}}, "task": {"description": "d", "task_behavior_collections": '
                   '[{"type": "dialogue", "data": [{"context": [{"source": "questionnaire", "content": '
                   '"拍成电影，加一个"剧情大反转"，何时？"}], "continuation": "最后"}]}]}}]\n', encoding="utf-8")
    assert main(["convert", "lovink-questionnaire", str(raw), "-o", str(tmp_path / "q.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usertwin convert: error: {raw}:1:") and "invalid JSON at line 1" in err
    assert err.rstrip().endswith(f'likely cause: an unescaped double quote (") inside a string; run: usertwin '
                                 f"validate {raw} --repair OUT, then convert OUT")
    assert main(["validate", str(raw), "--repair", str(tmp_path / "fixed.json")]) == 0
    assert main(["convert", "lovink-questionnaire", str(tmp_path / "fixed.json"), "-o", str(tmp_path / "q.jsonl")]) == 0
