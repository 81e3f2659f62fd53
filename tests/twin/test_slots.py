"""The slot decoder (twin/slots.py): continuous batching over fixed key/value buffers, the decode step of a bucket
of rows a CUDA graph on a GPU. Here its steps run without graphs: the slots, the moving column, the moves when
rows leave, the shifts and the growth must give every request the tokens it gets alone."""

from __future__ import annotations

import pytest
from conftest import tiny_model
from test_continuous import SETTINGS, _prompts, drive  # the plain decoder's requests and choreography

from usertwin.config import Config, GenerateSettings
from usertwin.twin.continuous import Request
from usertwin.twin.engine import Engine
from usertwin.twin.slots import SlotDecoder, _Slots


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_rows_in_slots_get_what_each_prompt_gets_alone(tokenizer, kind, monkeypatch):
    engine = Engine(Config(max_length=256), tiny_model(kind, vocab_size=len(tokenizer)), tokenizer)
    prompts, gens = _prompts(len(SETTINGS) + 2, seed=1), [GenerateSettings(**s) for s in SETTINGS * 2]
    prompts[-1] = prompts[-1] * 6  # a long prompt joining late: the columns must move right to take it
    alone = [engine.generate_ids([p], g)[0] for p, g in zip(prompts, gens)]
    shifts, moves = [], []
    for name, log in (("shift", shifts), ("move", moves)):
        original = getattr(_Slots, name)
        monkeypatch.setattr(_Slots, name, lambda self, *a, o=original, log=log: log.append(a) or o(self, *a))
    dec = SlotDecoder(engine)
    assert not dec.graphs  # a CPU: the same steps without graphs
    assert drive(dec, prompts, gens, [(2, 2), (2, 5), (2, 9)]) == alone  # the long prompt joins last
    assert dec.most_rows >= 6 and dec.slots.rows >= 8 and dec.slots.n == 0
    assert any(by > 0 for by, in shifts)  # the long prompt moved the columns right
    assert any(movers for movers, _, _ in moves)  # rows that left were filled by later rows
    assert sum(map(len, (s for a in alone for s in a))) > 100  # (real generations, not empty ones)


def test_the_buffers_hold_twice_the_longest_row_and_grow_in_powers_of_two(tokenizer):
    engine = Engine(Config(max_length=256), tiny_model("qwen3", vocab_size=len(tokenizer)), tokenizer)
    dec, got = SlotDecoder(engine), {}
    gen = GenerateSettings(max_new_tokens=6)
    dec.join([Request([7] * 10, gen, done=lambda ids: got.__setitem__(0, ids))])
    assert (dec.slots.rows, dec.slots.width, dec.slots.column) == (1, 2 * (10 + 6), 10)
    dec.join([Request([8] * 4, gen, done=lambda ids, k=k: got.__setitem__(k, ids)) for k in (1, 2)])
    assert dec.slots.rows == 4 and dec.starts == [0, 6, 6]
    while len(dec):
        dec.step()
    assert got[0] == engine.generate_ids([[7] * 10], gen)[0] and got[1] == got[2]


def test_a_step_that_cannot_be_recorded_decodes_without_graphs(tokenizer, monkeypatch, capsys):
    engine = Engine(Config(max_length=256), tiny_model("qwen3", vocab_size=len(tokenizer)), tokenizer)
    gen, prompt, got = GenerateSettings(max_new_tokens=9), _prompts(1, seed=3)[0], {}

    def refuse(self, *a):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_Slots, "_replay", refuse)
    dec = SlotDecoder(engine, graphs=True)
    dec.join([Request(prompt, gen, done=lambda ids: got.__setitem__(0, ids))])
    while len(dec):
        dec.step()
    assert got[0] == engine.generate_ids([prompt], gen)[0] and not dec.graphs
    assert "could not be recorded as a CUDA graph (operation not permitted" in capsys.readouterr().err
