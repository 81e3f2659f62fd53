"""Generation with a shared beginning read once (--prefill shared, twin/prefix.py): the same texts as every
prompt read whole -- greedy, seeded sampling, the repetition penalty -- while the beginning is read once."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from usertwin.config import Config, GenerateSettings
from usertwin.twin import prefix
from usertwin.twin.engine import Engine

HISTORY = list(range(10, 70))  # 60 tokens every prompt of the user begins with


@pytest.fixture(scope="module")
def engines(tokenizer):
    torch.manual_seed(0)
    model = tiny_model("qwen3", vocab_size=len(tokenizer))
    return (Engine(Config(max_length=256), model, tokenizer, prefill="shared"),
            Engine(Config(max_length=256), model, tokenizer, prefill="each"))


def _prompts():
    user_a = [HISTORY + [80 + i, 90, 91 + i % 3][: 1 + i % 3] for i in range(5)]  # tails of 1-3 tokens
    user_b = [[5, 6, 7] + HISTORY[:30] + [99, 100 + i] for i in range(3)]
    return user_a + user_b + [HISTORY]  # the bare history: its last token stays out of the cache


def test_layout_reads_each_beginning_once_and_keeps_every_row_whole():
    rows = _prompts()
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
    seeds = [11 * j for j in range(len(_prompts()))]
    assert shared.generate_ids(_prompts(), gen, seeds) == each.generate_ids(_prompts(), gen, seeds)
    assert len(calls) == 1 and len(calls[0].groups) == 2  # one forward of the two beginnings
    assert all(len(row) for rows in each.generate_ids(_prompts(), gen, seeds) for row in rows)
