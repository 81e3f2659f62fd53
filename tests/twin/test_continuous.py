"""The continuous decoder (twin/continuous.py): rows that join and leave a running batch between decode steps get
the tokens Engine.generate_ids gives each prompt alone -- greedy, seeded sampling, top-k, repetition penalty --
and a row whose request is gone leaves at the next step."""

from __future__ import annotations

import random

import pytest
from conftest import tiny_model

from usertwin.config import Config, GenerateSettings
from usertwin.errors import UsertwinError
from usertwin.twin.continuous import Decoder, Request
from usertwin.twin.engine import Engine

SETTINGS = [dict(max_new_tokens=20), dict(max_new_tokens=7),
            dict(max_new_tokens=30, temperature=0.9, top_p=0.9, num_samples=3, seed=5),
            dict(max_new_tokens=12, repetition_penalty=1.3),
            dict(max_new_tokens=25, temperature=1.2, top_k=20, seed=9, num_samples=2),
            dict(max_new_tokens=15, temperature=0.8, repetition_penalty=1.2, seed=3)]


def _engine(tokenizer, kind: str = "qwen3", **kw) -> Engine:
    return Engine(Config(max_length=256), tiny_model(kind, vocab_size=len(tokenizer)), tokenizer, **kw)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 300) for _ in range(rng.randrange(3, 40))] for _ in range(n)]


def drive(dec, prompts: list, gens: list, plan: list[tuple[int, int]]) -> list:
    """Each prompt's tokens: per (n, steps) of `plan`, the next n requests join and the batch decodes `steps`
    steps (while the earlier ones decode, each at its own length); then the rest join and all finish."""
    got, at = {}, 0
    requests = [Request(p, g, done=lambda ids, k=k: got.__setitem__(k, ids)) for k, (p, g) in
                enumerate(zip(prompts, gens))]
    for n, steps in plan:
        dec.join(requests[at:at + n])
        at += n
        for _ in range(steps):
            dec.step()
    dec.join(requests[at:])
    while len(dec):
        dec.step()
    return [got[k] for k in range(len(prompts))]


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_rows_joining_and_leaving_get_what_each_prompt_gets_alone(tokenizer, kind):
    engine = _engine(tokenizer, kind)
    prompts, gens = _prompts(len(SETTINGS)), [GenerateSettings(**s) for s in SETTINGS]
    alone = [engine.generate_ids([p], g)[0] for p, g in zip(prompts, gens)]
    dec = Decoder(engine)
    assert drive(dec, prompts, gens, [(2, 2), (2, 5), (2, 0)]) == alone
    assert dec.most_rows >= 6 and dec.cache is None  # rows of different settings shared steps; all left
    assert sum(map(len, (s for a in alone for s in a))) > 100  # (real generations, not empty ones)


def test_a_gone_request_leaves_at_the_next_step_and_the_others_go_on(tokenizer):
    engine = _engine(tokenizer)
    (p, q), gen = _prompts(2, seed=1), GenerateSettings(max_new_tokens=30, temperature=1.0, seed=2)
    full = engine.generate_ids([p], gen)[0][0]
    other = engine.generate_ids([q], gen)[0][0]
    calls, rows_seen, got = [], [], {}

    def gone_after_three():
        calls.append(1)
        return len(calls) >= 3

    dec = Decoder(engine)
    dec.on_step = lambda: rows_seen.append(len(dec))
    dec.join([Request(p, gen, done=lambda ids: got.__setitem__("p", ids), gone=gone_after_three),
              Request(q, gen, done=lambda ids: got.__setitem__("q", ids))])
    while len(dec):
        dec.step()
    assert got["p"] == [full[:3]] and got["q"] == [other]
    assert len(full) > 3 and len(other) > 4
    assert rows_seen[:2] == [2, 2] and set(rows_seen[2:]) == {1}  # its row was freed at once


def test_streamed_pieces_add_up_to_each_samples_text(tokenizer):
    engine = _engine(tokenizer)
    prompts = _prompts(2, seed=2)
    gens = [GenerateSettings(max_new_tokens=20, temperature=0.9, num_samples=2, seed=4),
            GenerateSettings(max_new_tokens=12, num_samples=2, temperature=0.0)]
    pieces = {(j, i): [] for j in range(2) for i in range(2)}
    got, dec = {}, Decoder(engine)
    dec.join([Request(p, g, done=lambda ids, j=j: got.__setitem__(j, ids),
                      stream=[lambda t, j=j, i=i: pieces[j, i].append(t) for i in range(2)])
              for j, (p, g) in enumerate(zip(prompts, gens))])
    while len(dec):
        dec.step()
    texts = {(j, i): engine.decode(ids) for j in got for i, ids in enumerate(got[j])}
    assert {k: "".join(v) for k, v in pieces.items()} == texts
    assert sum(len(v) > 1 for v in pieces.values()) >= 2  # streamed in pieces, not once at the end
    assert texts[1, 0] == texts[1, 1]  # greedy: one row, its text for both samples


def test_what_it_cannot_batch_is_refused(tokenizer):
    with pytest.raises(UsertwinError, match="not with --engine vllm or --decode static"):
        Decoder(_engine(tokenizer, decode="static"))
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, use_sliding_window=True,
                         sliding_window=8, max_window_layers=1, layer_types=["sliding_attention", "full_attention"])
    engine = Engine(Config(max_length=256), AutoModelForCausalLM.from_config(config), tokenizer)
    with pytest.raises(UsertwinError, match="sliding-window or linear-attention layers: use --batching static"):
        Decoder(engine)


# ---------------------------------------------------------------- a whole job decoded continuously (decode_all)


def _ending_often(engine, prompts, gen, seeds=None) -> int:
    """A token the model generates often at different steps: as the end of turn, rows end at varied lengths."""
    from collections import Counter

    engine.eot_id = -1
    seen = Counter(t for rows in engine.generate_ids(prompts, gen, seeds) for t in rows[0][1:])
    return seen.most_common(1)[0][0]


@pytest.mark.parametrize("settings", [dict(max_new_tokens=24),
                                      dict(max_new_tokens=24, temperature=0.9, num_samples=2, seed=7),
                                      dict(max_new_tokens=24, repetition_penalty=1.3)],
                         ids=["greedy", "sampled", "penalty"])
def test_a_job_decoded_continuously_gets_what_generate_gives(tokenizer, settings):
    """More prompts than running rows: each joins as rows finish, and every prompt's tokens are those
    generate_ids gives the prompts together (rows of varied lengths, so joins happen beside running rows)."""
    engine = _engine(tokenizer, prefill="each")
    gen, prompts = GenerateSettings(**settings), _prompts(11, seed=5)
    engine.eot_id = _ending_often(engine, prompts, gen)
    seeds = [3 * j for j in range(len(prompts))]
    together = engine.generate_ids(prompts, gen, seeds)
    steps = []
    original = Decoder.step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Decoder, "step", lambda self: steps.append(len(self)) or original(self))
        got = engine.generate_ids(prompts, gen, seeds, running=3)
    assert got == together
    lengths = [len(s) for rows in together for s in rows]
    assert len(set(lengths)) >= 3 and min(lengths) < 24  # ends at varied steps
    n = 2 if gen.temperature else 1
    assert max(steps) <= 3 * n  # never more rows than asked for
    assert sum(steps) < len(prompts) * n * 24  # finished rows did not decode on


def test_continuous_prefill_reads_a_users_history_once(tokenizer, monkeypatch):
    """Prompts of one user (the same history, different items) joining together share the history's forward
    (--prefill shared) and decode what each prompt read whole decodes."""
    from usertwin.twin import prefix

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    shared, each = (Engine(Config(max_length=256), model, tokenizer, prefill=p) for p in ("shared", "each"))
    history = list(range(10, 70))
    prompts = [history + [80 + i, 90 + i][: 1 + i % 2] for i in range(8)]
    gen = GenerateSettings(max_new_tokens=10, temperature=0.8, seed=1)
    seeds = [5 * j for j in range(len(prompts))]
    shared.eot_id = each.eot_id = _ending_often(each, prompts, gen, seeds)  # rows leave one by one, gaps and all
    calls = []
    original = prefix.read_beginnings
    monkeypatch.setattr(prefix, "read_beginnings", lambda *a: calls.append(a[1]) or original(*a))
    got = shared.generate_ids(prompts, gen, seeds, running=4)
    assert got == each.generate_ids(prompts, gen, seeds)
    # the first join reads the history; later joins (of one prompt, too) go on from the kept cache
    assert len(calls) == 1 and calls[0].groups == [history]


@pytest.mark.parametrize("slots", [False, True], ids=["dynamic", "slots"])
def test_a_row_with_a_gap_keeps_its_first_tokens_when_the_others_leave(tokenizer, slots):
    """A shared prefill leaves a gap between a short tail and the history; when the rows without a gap leave,
    the columns cut off the left are those no row uses -- not as many as the gap."""
    engine = _engine(tokenizer)
    history = list(range(10, 50))
    short, long = history + [80], history + [81, 82, 83]  # the short one's row: history, 2 padding, its token
    gen = GenerateSettings(max_new_tokens=12, temperature=0.9, seed=4)
    alone = engine.generate_ids([short], gen)[0]
    got, steps = {}, []
    from usertwin.twin.slots import SlotDecoder

    dec = SlotDecoder(engine, graphs=False) if slots else Decoder(engine)
    dec.on_step = lambda: steps.append(1)
    dec.join([Request(short, gen, done=lambda ids: got.__setitem__("short", ids)),
              Request(long, gen, done=lambda ids: got.__setitem__("long", ids), gone=lambda: len(steps) >= 2)])
    if not slots:
        assert dec.mask[0].tolist().count(0) == 2  # the gap
    while len(dec):
        dec.step()
    assert got["short"] == alone and len(got["long"][0]) == 3  # its first token, then two steps


def test_a_running_count_below_the_samples_still_decodes_everything(tokenizer):
    engine = _engine(tokenizer)
    gen = GenerateSettings(max_new_tokens=6, temperature=0.9, num_samples=3, seed=2)
    prompts = _prompts(3, seed=8)
    assert engine.generate_ids(prompts, gen, running=1) == engine.generate_ids(prompts, gen)
