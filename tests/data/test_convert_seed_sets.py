"""The seeds' other record sets: RealPersonaChat (Japanese), PERSONA-Bench, REALTALK (and the LoCoMo layout it
continues). Fixtures in tests/fixtures/seed_sets/ follow each corpus' published layout; exact counts after convert, the
rendered prompt of one target, Japanese fixed phrases only, and errors naming file, record, user and field."""

from __future__ import annotations

import json
import re

import pytest
from helpers import FIXTURES

from usertwin.cli import main
from usertwin.config import Config
from usertwin.data.convert import convert_to_file
from usertwin.data.records import load, parse_timestamp
from usertwin.data.timeline import Sample, build_timelines
from usertwin.errors import UsertwinError
from usertwin.text.render import Renderer
from usertwin.text.styles import OMITTED, PHRASES, ROLE_PHRASES

DATA = FIXTURES / "seed_sets"
SKIP_HINT = "; use --on_error skip to skip such rows and count them"


def _convert(dataset, raw, tmp_path, **kw):
    out = tmp_path / f"{dataset}.jsonl"
    summary = convert_to_file(dataset, raw, out, progress=False, **kw)
    recs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    loaded = load(out)  # the output passes validation
    assert len(loaded.records) == summary.users == len(recs) and loaded.n_items == summary.items
    return summary, recs, out


def _items(rec):
    return rec["task"]["task_behavior_collections"][0]["data"]


def _in_time_order(recs):
    return all([parse_timestamp(it["timestamp"]) for it in _items(r)]
               == sorted(parse_timestamp(it["timestamp"]) for it in _items(r)) for r in recs)


# --------------------------------------------------------------------------------------------- RealPersonaChat


def test_realpersonachat_fixture(tmp_path):
    summary, recs, _ = _convert("realpersonachat", DATA / "realpersonachat", tmp_path)
    assert summary.line() == (
        f"realpersonachat: 3 users, 11 items, 2022-08-05 .. 2022-08-07 -> {tmp_path / 'realpersonachat.jsonl'}; "
        "skipped 3: 1 empty utterance, 1 interlocutor without utterances, "
        "1 utterance without a time (took its neighbour's)")
    assert [r["user_hash"] for r in recs] == ["AA", "AB", "AC"]
    assert [len(_items(r)) for r in recs] == [3, 4, 4]
    assert {r["task"]["language"] for r in recs} == {"ja"} and _in_time_order(recs)
    aa, ab, ac = recs
    assert ab["user"]["profile"] == {
        "ペルソナ": "私は会社員である。\n毎朝コーヒーを飲む。", "性別": "Male", "年齢": "30-34",
        "学歴": "Four-year college", "就業状況": "Student", "居住地": "Osaka",
        "性格特性": {"ビッグファイブ": {"開放性": 3.0, "外向性": 3.5}, "他者との心理的距離": 4}}
    assert ab["metadata"]["text_chat_experience"]["typical_chat_content"] == "遊びの予定"
    # dialogue 3 (columns, as Hugging Face exports it) comes first in AA's timeline: it is the earliest
    assert [it["continuation"] for it in _items(aa)] == [
        "おはようございます。映画は好きですか？", "こんにちは。よろしくお願いします。", "本当に暑いです。何か冷たいものを飲みたいです。"]
    assert _items(aa)[2]["context"] == [
        {"role": "assistant", "content": "こんにちは。よろしくお願いします。"},
        {"role": "user", "content": "よろしくお願いします！今日は暑いですね。"}]
    assert _items(aa)[2]["metadata"] == {"conversation_id": 1, "utterance_id": 2, "partner": "AB"}
    curry = _items(ac)[3]  # "NaT": takes the previous utterance's time; the blank utterance is no turn
    assert (curry["continuation"], curry["timestamp"]) == ("料理をします。カレーを作る予定です。", "2022-08-07T10:00:30.000000")
    assert [t["content"] for t in curry["context"]] == ["はじめまして。", "はじめまして。週末は何をしますか？"]


def _rpc_timeline(tmp_path, user):
    _, _, out = _convert("realpersonachat", DATA / "realpersonachat", tmp_path)
    tls, _ = build_timelines(load(out).records)
    return next(tl for tl in tls if tl.user_id == user)


RPC_PROMPT = """=== ユーザープロフィール ===
ペルソナ: 私は会社員である。
毎朝コーヒーを飲む。
性別: Male
年齢: 30-34
学歴: Four-year college
就業状況: Student
居住地: Osaka
性格特性 ビッグファイブ 開放性: 3
性格特性 ビッグファイブ 外向性: 3.5
性格特性 他者との心理的距離: 4

=== タスク ===
雑談対話で、この話者が相手に次に送る発話を予測してください。

=== これまでの会話 ===
相手: こんにちは。よろしくお願いします。
このユーザーの次の発話を書いてください：
よろしくお願いします！今日は暑いですね。

相手: 本当に暑いです。何か冷たいものを飲みたいです。
私はアイスコーヒーをよく飲みます。

=== これまでの会話 ===
相手: はじめまして。
このユーザーの次の発話を書いてください：
"""


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_realpersonachat_prompt_is_japanese(tmp_path):
    tl = _rpc_timeline(tmp_path, "AB")
    target = 2  # AB's first line of dialogue 2; history: its two lines of dialogue 1
    rendered = Renderer(Config(prompt_style="detailed", chat_template="none")).render_sample(
        tl, Sample("AB", target, [0, 1]))
    (start, end, pos), = rendered.target_spans()
    assert rendered.text[:start] == RPC_PROMPT and pos == target
    assert rendered.text[start:end] == "はじめまして。週末は何をしますか？"
    # the only Latin words are the corpus' own profile values; every fixed phrase is Japanese
    assert re.findall(r"[A-Za-z]+", rendered.text) == ["Male", "Four", "year", "college", "Student", "Osaka"]
    for style in ("detailed", "simple"):
        text = Renderer(Config(prompt_style=style, chat_template="none")).render_sample(
            tl, Sample("AB", target, [0, 1])).text
        assert PHRASES["ja"]["instruction"]["dialogue"] in text and f"{PHRASES['ja']['other']}: " in text
        foreign = [*_strings(PHRASES["en"]), *_strings(PHRASES["zh"]), OMITTED["en"], OMITTED["zh"],
                   *(s for role in ROLE_PHRASES.values() for lang in ("en", "zh") for s in _strings(role[lang]))]
        assert [p for p in foreign if p in text] == []
    cut = Renderer(Config(prompt_style="detailed", chat_template="none", max_context_turns=1))
    assert OMITTED["ja"] in cut.render_sample(tl, Sample("AB", 1, [])).text  # the marker of cut turns too


def test_realpersonachat_language_auto_follows_the_record(tmp_path):
    tl = _rpc_timeline(tmp_path, "AA")
    assert tl.language == "ja"
    assert Renderer(Config(language="auto")).language(tl) == "ja"
    assert "Write the next line this user says:" in Renderer(Config(language="en", chat_template="none")) \
        .render_sample(tl, Sample("AA", 0, [])).text  # language: en still overrides


def test_realpersonachat_bad_utterance(tmp_path):
    raw = DATA / "realpersonachat_bad"
    where = raw / "real_persona_chat" / "dialogues" / "00001.json"
    with pytest.raises(UsertwinError) as e:
        convert_to_file("realpersonachat", raw, tmp_path / "o.jsonl", progress=False)
    assert str(e.value) == (f"{where}, dialogue 1, utterances[2] (user 'AA'): text is not a string "
                            f"(field text=5){SKIP_HINT}")
    assert not (tmp_path / "o.jsonl").exists()
    summary = convert_to_file("realpersonachat", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert (summary.users, summary.items, dict(summary.skip_reasons)) == (
        2, 3, {"text is not a string": 1, "interlocutor without utterances": 2})


# --------------------------------------------------------------------------------------------- REALTALK


def test_realtalk_fixture(tmp_path):
    summary, recs, _ = _convert("realtalk", DATA / "realtalk", tmp_path)
    assert summary.line() == (f"realtalk: 3 users, 9 items, 2023-12-29 .. 2023-12-31 -> "
                              f"{tmp_path / 'realtalk.jsonl'}; skipped 1: 1 empty message")
    assert [(r["user_hash"], r["user"]["profile"], len(_items(r))) for r in recs] == [
        ("Ann", {"name": "Ann"}, 3), ("Bo", {"name": "Bo"}, 4), ("Cy", {"name": "Cy"}, 2)]
    assert {r["task"]["language"] for r in recs} == {"en"} and _in_time_order(recs)
    bo = _items(recs[1])  # one person across both chats, in time order
    assert [(it["continuation"], it["timestamp"], it["metadata"]["conversation_id"]) for it in bo] == [
        ("Great, I went hiking.", "2023-12-30T00:32:20", "Chat_1_Ann_Bo:session_1"),
        ("Look at this view", "2023-12-30T00:32:40", "Chat_1_Ann_Bo:session_1"),
        ("Cy! Good to hear from you.", "2023-12-30T12:05:00", "Chat_2_Cy_Bo:session_1"),
        ("Morning! Any plans today?", "2023-12-31T09:10:00", "Chat_1_Ann_Bo:session_2")]
    assert bo[1]["context"] == [{"source": "Ann", "content": "Hey! How was your weekend?"},
                                {"source": "Bo", "content": "Great, I went hiking."}]
    assert bo[1]["metadata"] == {"conversation_id": "Chat_1_Ann_Bo:session_1", "dia_id": "D1:3",
                                 "partner": "Ann", "image_caption": "a mountain lake under a blue sky"}
    assert bo[3]["context"] == []  # a new session starts a new conversation


def test_realtalk_prompt(tmp_path):
    _, _, out = _convert("realtalk", DATA / "realtalk", tmp_path)
    tl = next(t for t in build_timelines(load(out).records)[0] if t.user_id == "Ann")
    text = Renderer(Config(chat_template="none")).render_sample(tl, Sample("Ann", 1, [])).text
    assert text == ("[USER_PROFILE]\n[USER_NAME=Ann]\n\n[TASK]\nContinue this person's real-world messaging "
                    "conversations: predict the next message they send.\n\n[CONTEXT]\n"
                    "Write the next line this user says:\nHey! How was your weekend?\n\n"  # her own line: a turn
                    "Bo: Great, I went hiking.\nBo: Look at this view\nWow, where is that?")


def test_locomo_layout(tmp_path):
    summary, recs, _ = _convert("realtalk", DATA / "locomo", tmp_path)
    assert summary.line() == f"realtalk: 4 users, 7 items, 2023-05-08 .. 2023-06-01 -> {tmp_path / 'realtalk.jsonl'}"
    assert [(r["user_hash"], r["user"]["profile"]["name"], len(_items(r))) for r in recs] == [
        ("conv-1/John", "John", 3), ("conv-1/Maria", "Maria", 2), ("conv-2/John", "John", 1),
        ("conv-2/Tim", "Tim", 1)]
    assert [it["timestamp"] for it in _items(recs[0])] == [
        "2023-05-08T13:56:00", "2023-05-08T13:56:00", "2023-05-15T10:00:00"]  # each message: its session's time


def test_realtalk_bad_time(tmp_path):
    raw = DATA / "realtalk_bad"
    with pytest.raises(UsertwinError) as e:
        convert_to_file("realtalk", raw, tmp_path / "o.jsonl", progress=False)
    assert str(e.value) == (f"{raw / 'Chat_1_Ann_Bo.json'}, session_2[0] (user 'Bo'): date_time is not a time like "
                            f"'DD.MM.YYYY, HH:MM:SS' (field date_time='yesterday'){SKIP_HINT}")
    summary = convert_to_file("realtalk", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert (summary.users, summary.items, dict(summary.skip_reasons)) == (
        2, 5, {"date_time is not a time like 'DD.MM.YYYY, HH:MM:SS'": 1, "empty message": 1})


# --------------------------------------------------------------------------------------------- PERSONA-Bench


def test_persona_bench_fixture(tmp_path):
    summary, recs, _ = _convert("persona-bench", DATA / "persona_bench", tmp_path)
    assert summary.line() == (f"persona-bench: 2 users, 5 items, 2014-02-01 .. 2014-04-01 -> "
                              f"{tmp_path / 'persona-bench.jsonl'}; skipped 1: 1 deleted comment")
    assert [(r["user_hash"], r["user"]["profile"], len(_items(r))) for r in recs] == [
        ("alice_r", {"name": "alice_r"}, 4), ("bob_k", {"name": "bob_k"}, 1)]
    alice = _items(recs[0])  # her replies in time order, across her posts
    assert [(it["continuation"], it["metadata"]["comment_id"]) for it in alice] == [
        ("Adding it to my list, thanks.", "alice_r/1-c1-c2"),
        ("Mystery, set in a small harbour town.", "alice_r/0-c1-c2"),
        ("No spoilers!", "alice_r/0-c1-c2-c3-c4"),
        ("I wrote 300 words every morning.", "alice_r/0-c5-c7")]
    assert alice[2]["context"] == [
        {"source": "alice_r", "content": "Finished my first novel draft\n\n200 pages in six months."},
        {"source": "bob_k", "content": "Congrats! What genre?"},
        {"source": "alice_r", "content": "Mystery, set in a small harbour town."},
        {"source": "bob_k", "content": "Sounds fun. Any twist?"}]
    assert alice[2]["timestamp"] == "2014-03-07T00:12:30Z"
    assert alice[2]["metadata"] == {"conversation_id": "alice_r/0:alice_r/0-c1", "comment_id": "alice_r/0-c1-c2-c3-c4",
                                    "subreddit": "books", "score": 1}
    assert _in_time_order(recs)


def test_persona_bench_flat_list_of_posts(tmp_path):
    grouped = json.loads((DATA / "persona_bench" / "merged_posts_remapped.json").read_text(encoding="utf-8"))
    flat = tmp_path / "Raw_Data_Postized.json"  # the Hugging Face release: one list, each post names its author
    flat.write_text(json.dumps([p for posts in grouped.values() for p in posts]), encoding="utf-8")
    summary, recs, _ = _convert("persona-bench", flat, tmp_path)
    assert (summary.users, summary.items) == (2, 5)
    assert [it["metadata"]["comment_id"] for it in _items(recs[0])] == ["1-c1-c2", "0-c1-c2", "0-c1-c2-c3-c4",
                                                                        "0-c5-c7"]


def test_persona_bench_bad_timestamp(tmp_path):
    raw = DATA / "persona_bench_bad"
    with pytest.raises(UsertwinError) as e:
        convert_to_file("persona-bench", raw, tmp_path / "o.jsonl", progress=False)
    assert str(e.value).startswith(
        f"{raw / 'merged_posts_remapped.json'}, post 0 of author 'alice_r' (user 'alice_r'), comment "
        "alice_r/0-c1-c2: timestamp is not a time (field timestamp='soon': ")
    assert str(e.value).endswith(SKIP_HINT)
    summary = convert_to_file("persona-bench", raw, tmp_path / "o.jsonl", on_error="skip", progress=False)
    assert (summary.items, dict(summary.skip_reasons)) == (4, {"timestamp is not a time": 1, "deleted comment": 1})


def test_cli_convert(tmp_path, capsys):
    out = tmp_path / "rpc.jsonl"
    assert main(["convert", "RealPersonaChat", str(DATA / "realpersonachat"), "-o", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("realpersonachat: 3 users, 11 items, 2022-08-05 .. 2022-08-07 -> ")
    assert main(["convert", "PERSONA_Bench", str(DATA / "persona_bench"), "-o", str(tmp_path / "p.jsonl"),
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("persona-bench: 2 users, 5 items")
