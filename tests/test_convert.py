"""Converters: exact counts on real data, fixtures in each published layout, and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared

from usertwin.cli import main
from usertwin.convert import convert_to_file
from usertwin.errors import UsertwinError
from usertwin.records import load

FIX = Path(__file__).parent / "fixtures" / "convert"


def _convert(dataset, raw, tmp_path, **kw):
    out = tmp_path / f"{dataset}.jsonl"
    summary = convert_to_file(dataset, raw, out, progress=False, **kw)
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    load(out)  # every converter's output passes validation
    return summary, recs


def _items(rec):
    return [it for c in rec["task"]["task_behavior_collections"] for it in c["data"]]


def test_movielens_latest_small_real(tmp_path):
    summary, recs = _convert("movielens", shared("movielens", "ml-latest-small"), tmp_path)
    assert (summary.users, summary.items) == (610, 100_836)
    assert summary.line().startswith("movielens: 610 users, 100836 items, 1996-03-29 .. 2018-09-24")
    first = recs[0]
    assert first["user_hash"] == "1" and first["user"]["profile"] == {"name": "user_1"}
    items = _items(first)
    assert [it["timestamp"] for it in items] == sorted(it["timestamp"] for it in items)
    toy = [it for it in items if it["metadata"]["movie_id"] == 1][0]
    assert toy["continuation_prefix"] == "Toy Story (1995) (Adventure, Animation, Children, Comedy, Fantasy): "
    assert toy["continuation"] == "4.0" and toy["timestamp"] == "2000-07-30T18:45:03Z"
    tagged = [it for r in recs if r["user_hash"] == "2" for it in _items(r) if "tags" in it["metadata"]]
    assert {"funny", "Highly quotable", "will ferrell"} <= {t for it in tagged for t in it["metadata"]["tags"]}


def test_movielens_100k_fixture(tmp_path):
    summary, recs = _convert("movielens", FIX / "ml-100k", tmp_path)
    assert (summary.users, summary.items) == (3, 7)
    assert recs[0]["user"]["profile"] == {"name": "user_1", "age": 24, "gender": "M", "occupation": "technician",
                                          "zip_code": "85711"}
    assert [(it["continuation_prefix"], it["continuation"]) for it in _items(recs[0])] == [
        ("Café au Lait (1994) (Comedy): ", "4.0"),
        ("Toy Story (1995) (Animation, Children's, Comedy): ", "5.0"),
        ("GoldenEye (1995) (Action, Adventure, Thriller): ", "3.0")]
    # a tie in time keeps file order
    assert [it["metadata"]["movie_id"] for it in _items(recs[1])] == [2, 3, 1]
    assert _items(recs[2])[0]["continuation_prefix"] == "Unknown Movie (1998): "
    assert recs[0]["task"]["rating_scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_movielens_missing_column_and_bad_row(tmp_path):
    raw = tmp_path / "ml"
    raw.mkdir()
    (raw / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    (raw / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,964982703\n")
    with pytest.raises(UsertwinError, match=r"ratings.csv: missing column\(s\) rating; found userId, movieId"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,1,four,964982704\n")
    with pytest.raises(UsertwinError, match=r"ratings.csv:3: rating is not a number \(rating='four'\)"):
        convert_to_file("movielens", raw, tmp_path / "o.jsonl", progress=False)
    assert not (tmp_path / "o.jsonl").exists()  # complete or absent
    summary = convert_to_file("movielens", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert summary.items == 1 and summary.skipped == {"rating is not a number": 1}


def test_dmsc_fixture(tmp_path):
    with pytest.raises(UsertwinError, match=r"DMSC.csv:7: Star or Like is not a number \(Star='x'"):
        _convert("dmsc", FIX / "dmsc" / "DMSC.csv", tmp_path)
    summary, recs = _convert("dmsc", FIX / "dmsc", tmp_path, on_error="skip")
    assert (summary.users, summary.items) == (2, 4)
    assert summary.skipped == {"empty comment": 1, "Star or Like is not a number": 1}
    assert [r["user_hash"] for r in recs] == ["影志", "然潘"]
    ying = _items(recs[0])
    assert [it["continuation_prefix"] for it in ying] == ["《大鱼》：", "《复仇者联盟2》："]
    assert ying[1]["continuation"] == '好看，但"奥创"太弱了,\n第二行'
    assert ying[1]["metadata"] == {"stars": 4, "likes": 1231, "movie_en": "Avengers Age of Ultron", "id": "1"}
    assert [it["timestamp"] for it in _items(recs[1])] == ["2014-12-31", "2015-05-13"]
    assert recs[0]["task"]["language"] == "zh"


def test_dmsc_missing_column(tmp_path):
    bad = tmp_path / "DMSC.csv"
    bad.write_text("ID,Movie_Name_EN,Movie_Name_CN,Crawl_Date,Number,Username,Date,Star,Like\n", encoding="utf-8")
    with pytest.raises(UsertwinError, match=r"DMSC.csv: missing column\(s\) Comment"):
        convert_to_file("dmsc", bad, tmp_path / "o.jsonl", progress=False)


def test_douban_dmr_real(tmp_path):
    summary, recs = _convert("douban-dmr", shared("douban_dmr"), tmp_path)
    # 1,583 reviews of 44 users, no duplicates; 360 have no text (stars only) and are counted, not kept
    assert (summary.users, summary.items) == (44, 1583 - 360)
    assert summary.skipped == {"empty review text (stars only)": 360}
    for rec in recs:
        ts = [it["timestamp"] for it in _items(rec)]
        assert ts == sorted(ts)
    rec = [r for r in recs if r["user_hash"] == "5323ae9435a1efb493a53753c007225d"][0]
    assert rec["user"]["profile"]["name"] == "豆友233403034"
    last = _items(rec)[-1]
    assert last["continuation"].startswith("前几天在中央六台电影频道看了这部电影")
    assert last["metadata"]["stars"] == 5
    assert last["continuation_prefix"] == "诛仙1 诛仙 Ⅰ（爱情/奇幻/古装）："
    prefixes = [it["continuation_prefix"] for r in recs for it in _items(r)]
    assert sum(p.startswith("电影 ") for p in prefixes) == 1  # the one kept review of a movie not in movies.json


def test_cornell_fixture(tmp_path):
    summary, recs = _convert("cornell", FIX / "cornell", tmp_path)
    assert (summary.users, summary.items) == (4, 8)
    assert summary.skipped == {"empty line text": 1}
    assert [r["user_hash"] for r in recs] == ["u0", "u2", "u10", "u11"]
    bianca = recs[0]
    assert bianca["user"]["profile"] == {"name": "BIANCA", "gender": "f", "credit_position": "4",
                                         "movie_title": "10 things i hate about you", "movie_year": "1999",
                                         "movie_genres": ["comedy", "romance"], "movie_id": "m0"}
    items = _items(bianca)
    assert [it["continuation"] for it in items] == [
        "Can we make this quick?  Roxanne Korrine and Andrew Barrett are having an incredibly horrendous "
        "public break- up on the quad.  Again.", "Not the hacking and gagging and spitting part.  Please.",
        "They do not!"]
    assert [t["source"] for t in items[1]["context"]] == ["BIANCA", "CAMERON"]
    assert items[2]["context"] == [{"source": "CAMERON", "content": "They do to!"}]
    jose = recs[2]
    assert jose["user"]["profile"]["name"] == "JOSÉ" and _items(jose)[0]["continuation"] == "¿Señor?"


def test_cornell_bad_conversation(tmp_path):
    import shutil

    raw = tmp_path / "c"
    shutil.copytree(FIX / "cornell", raw)
    with open(raw / "movie_conversations.txt", "a", encoding="iso-8859-1") as f:
        f.write("u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L9999']\n")
    with pytest.raises(UsertwinError, match=r"movie_conversations.txt:4: conversation names line ids not in "
                                            r"movie_lines.txt \(L9999\)"):
        convert_to_file("cornell", raw, tmp_path / "o.jsonl", progress=False)


def test_seed_samples_real(tmp_path):
    summary, recs = _convert("seed-samples", shared("seed_examples", "all_samples.json"), tmp_path)
    assert (summary.users, summary.items) == (5, 159)
    summary, recs = _convert("seed-samples", shared("seed_examples"), tmp_path)
    assert (summary.users, summary.items) == (5, 159) and summary.skipped == {"duplicate sample": 20}
    rec = recs[0]
    assert rec["user"]["profile"]["name"] == "HP" and "big_five" in rec["user"]["profile"]["dimensions"]
    assert rec["task"]["language"] == "ja"
    first = _items(rec)[0]
    assert first["continuation"] == "すごく寒いです！そろそろニット着たいですね。"
    assert [t["source"] for t in first["context"]] == ["Partner", "user", "Partner"]


def test_records_pass_through_unchanged(tmp_path):
    summary, recs = _convert("douban-dmr", shared("douban_dmr"), tmp_path)
    src = tmp_path / "douban-dmr.jsonl"
    again = tmp_path / "again.jsonl"
    convert_to_file("records", src, again, progress=False)
    assert again.read_bytes() == src.read_bytes()


def test_unknown_dataset_and_cli_error(tmp_path, capsys):
    with pytest.raises(UsertwinError, match="unknown dataset 'imdb'; choose one of movielens, dmsc"):
        convert_to_file("imdb", tmp_path, tmp_path / "o.jsonl")
    assert main(["convert", "movielens", str(tmp_path / "nope"), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "nope: does not exist" in err and "Traceback" not in err
