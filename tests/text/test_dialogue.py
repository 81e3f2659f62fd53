"""Dialogue timelines: consecutive lines of a conversation are linked and each turn is rendered once; the
twin's lines are assistant turns, the other speakers' user turns; max_context_turns is the number of turns of
the current conversation shown before a target; windows cut conversations at turn boundaries, never a target;
every target is covered once per epoch; token counts are exact. (Loss equality: test_loss.py.)"""

from __future__ import annotations

import importlib.util

from conftest import shared
from helpers import ROOT, conversation_timeline, write_records

from usertwin.config import Config, RenderSettings
from usertwin.data.records import Item, Record
from usertwin.data.timeline import SPLITS, Sample, Timeline, WindowStats, build_windows, select_history
from usertwin.text.render import Renderer
from usertwin.text.styles import OMITTED
from usertwin.text.tokens import SequenceEncoder, measure

MARK = OMITTED["en"]
ASK = "Write the next line this user says:"


def _contents(tl) -> list[str]:
    """Every distinct turn of a timeline: context turns and lines."""
    seen = dict.fromkeys(t["content"] for it in tl.items for t in it.context)
    seen.update(dict.fromkeys(it.continuation for it in tl.items))
    return list(seen)


def test_consecutive_lines_of_a_conversation_are_linked():
    tl = conversation_timeline((4, 6, 5))
    conv = tl.conversations
    assert conv.start == [0] * 4 + [4] * 6 + [10] * 4
    assert [conv.new_from[p] for p in (1, 4, 5, 12)] == [2, None, 1, 4]  # item 12 follows the unsaid line
    tl.items[2].metadata["conversation_id"], tl.items[3].metadata["conversation_id"] = "a", "b"
    tl.relink()
    assert tl.conversations.start[:4] == [0, 0, 0, 3]  # different conversation ids never link
    one = Timeline("x", {"name": "A"}, "t", "en", [
        Item(continuation="hi", collection="dialogue", context=[{"source": "B", "content": "yo"}]),
        Item(continuation="fine", collection="dialogue", context=[{"source": "A", "content": "hi"}])])
    assert one.conversations.start == [0, 1]  # one shared turn alone (the line) does not link


def test_a_context_cut_to_fit_still_links():
    tl = conversation_timeline((6,), unsaid=None)
    tl.items[4].context = tl.items[4].context[3:]  # cut: overlaps the end of item 3's turns by 5 turns
    tl.relink()
    assert tl.conversations.start == [0] * 6 and tl.conversations.new_from[4] == 5


def test_seed_sample_conversations(tmp_path):
    from usertwin.data import records
    from usertwin.data.convert import convert_to_file
    from usertwin.data.timeline import build_timelines

    out = tmp_path / "seed.jsonl"
    convert_to_file("seed-samples", shared("seed_examples", "all_samples.json"), out, progress=False)
    tls, _ = build_timelines(records.load(out).records)
    starts = [p for tl in tls for p, s in enumerate(tl.conversations.start) if s == p]
    assert len(starts) == 16 and sum(len(tl.items) for tl in tls) == 159
    for tl in tls:  # every linked line's context is the conversation so far: the earlier line, then new turns
        for p in range(1, len(tl.items)):
            if tl.conversations.linked(p):
                k = tl.conversations.new_from[p]
                assert tl.items[p].context[k - 1]["content"] == tl.items[p - 1].continuation


def test_each_turn_is_rendered_once_lines_as_assistant_turns(tokenizer):
    tl = conversation_timeline((4, 6, 5), lead=2)
    r = Renderer(RenderSettings(), tokenizer)
    everything = list(range(len(tl.items)))
    rendered = r.render(tl, everything, everything)
    for text in _contents(tl):
        assert rendered.text.count(text) == 1, text
    spans = rendered.target_spans()
    assert [rendered.text[s:e] for s, e, _ in spans] == [it.continuation + "<|im_end|>" for it in tl.items]
    msgs = r.messages(tl, everything)
    assert all(m["content"].startswith("c") for m in msgs[2::2])  # assistant turns: the twin's lines only
    opening = [m["content"] for m in msgs if "[CONTEXT]" in m["content"]]  # one per conversation
    assert len(opening) == sum(ASK in m["content"] for m in msgs) == 3 and all(o.endswith(ASK) for o in opening)
    assert msgs[-4:] == [{"role": "user", "content": "CAMERON: c2 question 3?"},
                         {"role": "assistant", "content": "c2 answer 3"},  # said, no item: no loss
                         {"role": "user", "content": "CAMERON: c2 question 4?"},
                         {"role": "assistant", "content": "c2 answer 4"}]
    assert tokenizer.apply_chat_template(msgs, tokenize=False).rstrip("\n") == rendered.text


def test_max_context_turns_shows_the_last_n_turns_of_the_conversation_with_a_marker(tokenizer):
    tl = conversation_timeline((4, 6, 5), lead=3)
    cfg = Config(max_context_turns=3)
    r = Renderer(cfg, tokenizer)
    sample = Sample("c1", 3, select_history(tl, 3, cfg, 42))  # the first conversation: no history
    assert [m["content"] for m in r.messages(tl, sample.history + [3])[1:]] == [
        f"[CONTEXT]\n{MARK}\nCAMERON: c0 question 2?\n{ASK}", "c0 answer 2", "CAMERON: c0 question 3?",
        "c0 answer 3"]
    later = Sample("c1", 7, select_history(tl, 7, cfg, 42))  # history: conversation 0, then 3 turns
    msgs = r.messages(tl, later.history + [7])
    assert [m["content"] for m in msgs[-4:]] == [f"[CONTEXT]\n{MARK}\nCAMERON: c1 question 2?\n{ASK}",
                                                 "c1 answer 2", "CAMERON: c1 question 3?", "c1 answer 3"]
    assert sum("c1 " in m["content"] for m in msgs) == 4  # 3 turns and the line: nothing older of it
    whole = Renderer(Config(max_context_turns=100), tokenizer).messages(tl, [3])
    assert MARK not in whole[1]["content"] and "c0 lead 0?" in whole[1]["content"]
    none = Renderer(Config(max_context_turns=0), tokenizer).messages(tl, [3])
    assert [m["content"] for m in none[1:]] == [f"[CONTEXT]\n{MARK}\n{ASK}", "c0 answer 3"]


def _windows(tl, renderer, tokenizer, max_length, split_labels=None):
    ln = measure(renderer, tokenizer, tl)
    labels = split_labels or ["train"] * len(tl.items)
    st = WindowStats()
    ws = build_windows(tl, labels, "train", ln.blocks(), ln.header, ln.join, max_length, stats=st,
                       follow=ln.follow_blocks())
    return ln, ws, st


def test_windows_cut_conversations_at_turn_boundaries_never_a_target(tokenizer):
    tl = conversation_timeline((8, 10, 9), lead=4)
    renderer = Renderer(Config(max_context_turns=6), tokenizer)
    encoder = SequenceEncoder(renderer, tokenizer)
    ln, ws, st = _windows(tl, renderer, tokenizer, max_length=400)
    assert len(ws) >= 4 and st.too_long == 0
    assert [t for w in ws for t in w.targets] == list(range(len(tl.items)))  # each target once
    mid = 0
    for w in ws:
        enc = encoder.encode(tl, w.items, w.targets)
        assert len(enc) == ln.sequence(w.items) <= 400  # planned lengths are exact
        text = renderer.render(tl, w.items, w.targets).text
        for t in w.targets:
            assert text.count(tl.items[t].continuation + "<|im_end|>") == 1  # whole, once
        if tl.conversations.start[w.items[0]] < w.items[0]:  # starts inside a conversation
            mid += 1
            assert f"[CONTEXT]\n{MARK}" in text
    assert mid >= 2
    assert st.tokens == sum(ln.sequence(w.items) for w in ws)


def test_without_history_a_window_still_holds_one_conversation(tokenizer):
    tl = conversation_timeline((4, 6, 5))
    renderer = Renderer(Config(ablation="profile_and_context"), tokenizer)
    ln = measure(renderer, tokenizer, tl)
    ws = build_windows(tl, ["train"] * 14, "train", ln.blocks(), ln.header, ln.join, 4096, use_history=False,
                       follow=ln.follow_blocks())
    assert [w.items for w in ws] == [[0, 1, 2, 3], list(range(4, 10)), [10, 11, 12, 13]]


def _prepare(tmp_path, tokenizer, data, **kw):
    from usertwin.config import from_mapping
    from usertwin.sequences.prepare import prepare

    cfg = from_mapping({"data": str(data), "cache_dir": str(tmp_path / "cache"), **kw}, "test", Config())
    return prepare(cfg, tokenizer=tokenizer, use_cache=False, progress=False)


def _exact_tokens(prep, tokenizer) -> int:
    encoder = SequenceEncoder(Renderer(prep.config, tokenizer), tokenizer)
    return sum(len(encoder.encode(prep.timeline(s.user_id), *s.items_and_targets()))
               for s in prep.sequences["train"])


def test_seed_sample_every_target_once_per_epoch(tmp_path, tokenizer):
    from usertwin.data.convert import convert_to_file

    data = tmp_path / "seed.jsonl"
    convert_to_file("seed-samples", shared("seed_examples", "all_samples.json"), data, progress=False)
    prep = _prepare(tmp_path, tokenizer, data, max_length=4096)
    for split in SPLITS:
        covered = sorted((w.user_id, t) for w in prep.sequences[split] for t in w.targets)
        expected = sorted((u, p) for u, labels in prep.splits.items() for p, lab in enumerate(labels) if lab == split)
        assert covered == expected and prep.stats[split].too_long == 0
    assert prep.stats["train"].tokens == _exact_tokens(prep, tokenizer)
    assert prep.stats["train"].sequences < prep.stats["train"].targets / 2  # conversations share windows


def _benchmark():
    path = ROOT / "benchmarks" / "timeline_efficiency.py"
    spec = importlib.util.spec_from_file_location("timeline_efficiency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_token_ratio_is_what_the_benchmark_reports(tmp_path, tokenizer):
    """Exact counts on a small fixture: the benchmark's numbers are the tokens of the sequences training
    encodes, in both units, every target covered by both."""
    tls = [conversation_timeline((4, 6, 5), lead=2), conversation_timeline((7, 3), name="KAT")]
    recs = [Record(i, f"c{i}", tl.profile, tl.task, "en", tl.items) for i, tl in enumerate(tls)]
    data = write_records(tmp_path / "conv.jsonl", recs)
    bench = _benchmark()
    rows = {mode: bench.measure(data, 512, mode, tokenizer, tmp_path) for mode in ("full", "timeline")}
    for mode, unit in (("full", "sample"), ("timeline", "timeline")):
        prep = _prepare(tmp_path, tokenizer, data, max_length=512, unit=unit)
        assert rows[mode]["tokens"] == prep.stats["train"].tokens == _exact_tokens(prep, tokenizer)
    assert rows["full"]["targets"] == rows["timeline"]["targets"] == 17
    assert (rows["full"]["tokens"], rows["timeline"]["tokens"]) == (EXACT_FULL, EXACT_TIMELINE)


EXACT_FULL, EXACT_TIMELINE = 5198, 1182  # the fixture's exact train tokens (4.40x), test tokenizer of conftest


def test_inspect_dump_offsets_point_at_each_line(tmp_path, tokenizer):
    from usertwin.sequences.preview import dump_rows

    tl = conversation_timeline((4, 6, 5), lead=2)
    data = write_records(tmp_path / "conv.jsonl", [Record(0, "c1", tl.profile, tl.task, "en", tl.items)])
    prep = _prepare(tmp_path, tokenizer, data, max_length=260, max_context_turns=3)
    renderer = Renderer(prep.config, tokenizer)
    windows = {(w.user_id, t): w for seqs in prep.sequences.values() for w in seqs for t in w.targets}
    rows = list(dump_rows(prep, renderer))
    assert len(rows) == 14 and len({len(w.items) for w in windows.values()}) > 1
    for row in rows:
        w = windows[(row["user"], row["target_index"])]
        text = renderer.render(prep.timeline(w.user_id), w.items, w.targets).text
        assert text[row["prompt_chars"]:].startswith(row["target_text"] + "<|im_end|>")
