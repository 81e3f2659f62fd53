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
