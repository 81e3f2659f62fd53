"""Shared prefill: prompts that begin alike (one user's history, many items) read that beginning once and
score every candidate as if each prompt ran alone (Engine.score_many, shared_groups), and generate the texts each
prompt read whole generates (twin/prefix.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from usertwin.config import Config, GenerateSettings
from usertwin.twin import prefix
from usertwin.twin.engine import Engine, shared_groups

HISTORY = list(range(10, 70))  # 60 tokens every prompt of the user begins with


@pytest.fixture(scope="module")
def engines(tokenizer):
    torch.manual_seed(0)
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    return (Engine(Config(max_length=256), model, tokenizer, prefill="shared"),
            Engine(Config(max_length=256), model, tokenizer, prefill="each"))


def _prompts():
    user_a = [HISTORY + [80 + i, 90, 91 + i % 3] for i in range(6)]  # six items after one history
    user_b = [[5, 6, 7] + HISTORY[:30] + [99, 100 + i] for i in range(3)]
    lone = [[3, 4, 200, 201]]
    return user_a + lone + user_b + [HISTORY]  # the bare history: a prompt with no tail of its own


def test_groups_follow_the_shared_beginnings():
    prompts = _prompts()
    cands = [[[1], [2, 3]]] * len(prompts)
    groups = shared_groups(prompts, cands, block_tokens=1024)
    assert sorted(groups) == sorted([(60, [0, 1, 2, 3, 4, 5, 10]), (4, [6]), (34, [7, 8, 9])])


def test_a_full_block_starts_a_new_group():
    prompts = [HISTORY + [80 + i] for i in range(6)]
    cands = [[[1], [2, 3]]] * 6  # each member adds 1 tail token and 3 candidate tokens
    groups = shared_groups(prompts, cands, block_tokens=8)
    assert groups == [(60, [0, 1]), (60, [2, 3]), (60, [4, 5])]


def test_unrelated_prompts_each_keep_their_own_window():
    prompts = [[1, 2, 3], [4, 5, 6, 7], [1, 9, 9, 9, 9, 9]]  # one shared token is not worth six tail tokens
    assert sorted(shared_groups(prompts, [[[1]]] * 3, 1024)) == [(3, [0]), (4, [1]), (6, [2])]


def test_shared_prefill_scores_as_each_prompt_alone(engines):
    shared, each = engines
    prompts = _prompts()
    cands = [[[5], [6, 7], [8, 9, 10]] if k % 2 else [[11, 12], [5]] for k in range(len(prompts))]
    fast, slow = shared.score_many(prompts, cands), each.score_many(prompts, cands)
    assert [[n for _, n in row] for row in fast] == [[len(c) for c in cs] for cs in cands]
    for a, b in zip(fast, slow):
        assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=1e-4)


def test_shared_prefill_reads_the_history_once(engines, monkeypatch):
    shared, each = engines
    prompts, cands = _prompts()[:6], [[[5], [6, 7]]] * 6
    read = []
    for engine in (shared, each):
        backbone = engine.model.model
        forward = backbone.forward

        def counting(*a, input_ids=None, _forward=forward, **kw):
            read.append(input_ids.shape)
            return _forward(*a, input_ids=input_ids, **kw)

        monkeypatch.setattr(backbone, "forward", counting)
        engine.score_many(prompts, cands)
        monkeypatch.undo()
    # shared: one window of the 60 history tokens, then a block of 6 x (3 tail + 3 candidate) tokens;
    # each: six windows of 63 tokens, then six blocks of 3 candidate tokens
    assert read == [torch.Size([1, 60]), torch.Size([1, 36]), torch.Size([6, 63]), torch.Size([6, 3])]


def test_rating_distributions_are_the_same_either_way(engines, tokenizer):
    shared, each = engines
    for e in engines:
        e.scale = ["1", "2", "3", "4", "5"]
    prompts = _prompts()
    for a, b in zip(shared.rating_distributions(prompts), each.rating_distributions(prompts)):
        assert a.keys() == b.keys() and a["scale"] == b["scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-5)


def test_an_unknown_prefill_is_refused(tokenizer):
    from usertwin.errors import UsertwinError

    with pytest.raises(UsertwinError, match="prefill must be one of shared, each, not 'once'"):
        Engine(Config(), None, tokenizer, prefill="once")


# ---------------------------------------------------------------- generation (twin/prefix.py)


def _generation_prompts():
    user_a = [HISTORY + [80 + i, 90, 91 + i % 3][: 1 + i % 3] for i in range(5)]  # tails of 1-3 tokens
    user_b = [[5, 6, 7] + HISTORY[:30] + [99, 100 + i] for i in range(3)]
    return user_a + user_b + [HISTORY]  # the bare history: its last token stays out of the cache


def test_layout_reads_each_beginning_once_and_keeps_every_row_whole():
    rows = _generation_prompts()
    layout = prefix.plan(rows)
    assert sorted(map(len, layout.groups)) == [34, 59]  # user b's 34 (with 99); user a's history less the bare one's last
    assert layout.shared == 59 and layout.width == 59 + 4  # history's last token + a 3-token tail
    for k, row in enumerate(rows):
        ids, mask = layout.row(k, row, pad=0)
        assert len(ids) == len(mask) == layout.width
        assert [t for t, m in zip(ids, mask) if m] == row  # the row's own tokens, in order, nothing else
        assert mask[layout.shared:].count(1) >= 1  # at least its last token is read after the cache


def test_unrelated_prompts_are_not_laid_out():
    assert prefix.plan([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]) is None
    assert prefix.plan([[1, 2, 3, 4, 9], [1, 7, 3, 4, 8]]) is None  # 1 token of 10 saved: under MIN_SAVED
    assert prefix.plan([[1, 2, 3, 4, 9], [1, 2, 3, 4, 8]]).groups == [[1, 2, 3, 4]]  # 4 of 10


@pytest.mark.parametrize("settings", [
    dict(max_new_tokens=8),
    dict(max_new_tokens=8, num_samples=3, temperature=0.9, top_p=0.9, seed=5),
    dict(max_new_tokens=8, repetition_penalty=1.5),
], ids=["greedy", "sampled", "penalty"])
def test_shared_generation_equals_each_prompt_read_whole(engines, monkeypatch, settings):
    shared, each = engines
    calls = []
    original = prefix.cached_beginnings
    monkeypatch.setattr(prefix, "cached_beginnings", lambda *a: calls.append(a[1]) or original(*a))
    gen = GenerateSettings(**settings)
    prompts = _generation_prompts()
    seeds = [11 * j for j in range(len(prompts))]
    assert shared.generate_ids(prompts, gen, seeds) == each.generate_ids(prompts, gen, seeds)
    assert len(calls) == 1 and len(calls[0].groups) == 2  # one forward of the two beginnings
    assert all(len(row) for rows in each.generate_ids(prompts, gen, seeds) for row in rows)
