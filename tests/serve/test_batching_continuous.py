"""usertwin serve's continuous batching (serve/continuous.py), in process over a tiny zero-shot twin: concurrent
requests get what each gets alone through the static path (Twin.generate_after), a request that arrives while
another decodes joins that batch, a cancelled request frees its row, scoring is answered between decode steps,
and streamed deltas add up to the final texts."""

from __future__ import annotations

import asyncio
import json
import random
import threading

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'usertwin[serve]')")

from usertwin.cli import build_parser  # noqa: E402
from usertwin.config import Config, GenerateSettings  # noqa: E402
from usertwin.serve.batching import Job  # noqa: E402
from usertwin.serve.continuous import ContinuousBatcher  # noqa: E402


@pytest.fixture(scope="module")
def twin(tmp_path_factory, tiny_model_dir):
    from usertwin import Twin

    data = tmp_path_factory.mktemp("cb") / "r.jsonl"
    items = [{"continuation_prefix": f"Movie {i}: ", "continuation": f"{i % 5 + 1}.0", "timestamp": 1_000 + i}
             for i in range(4)]
    data.write_text(json.dumps({"user_hash": "1", "task": {"description": "Rate movies.", "language": "en",
                                "task_behavior_collections": [{"type": "movie_rating", "data": items}]}}) + "\n")
    return Twin.load(None, records=data, cfg=Config(model=str(tiny_model_dir), max_length=256), progress=False)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 300) for _ in range(rng.randrange(3, 60))] for _ in range(n)]


def _run(batcher: ContinuousBatcher, scenario):
    batcher.start()
    try:
        return asyncio.run(scenario())
    finally:
        batcher.stop()


GENS = [GenerateSettings(max_new_tokens=24), GenerateSettings(max_new_tokens=6),
        GenerateSettings(max_new_tokens=30, temperature=0.9, top_p=0.9, num_samples=2, seed=7),
        GenerateSettings(max_new_tokens=16, temperature=1.1, num_samples=3, seed=1), GenerateSettings(max_new_tokens=40)]


@pytest.mark.parametrize("decoding", ["auto", "static"])  # static: the rows in slots (twin/slots.py)
def test_concurrent_requests_get_what_each_gets_alone_through_the_static_path(twin, decoding, monkeypatch):
    prompts = _prompts(len(GENS))
    alone = [twin.generate_after([p], g)[0] for p, g in zip(prompts, GENS)]
    monkeypatch.setattr(twin.engine, "decoding", decoding)
    batcher = ContinuousBatcher(twin, wait_ms=0, max_batch=8)
    assert type(batcher.decoder).__name__ == ("SlotDecoder" if decoding == "static" else "Decoder")
    late = []
    # the last two arrive while the first three decode (the hook runs in the model thread before a step)
    batcher.decoder.on_step = lambda: batcher.decoder.steps == 3 and late.append(1)

    async def scenario():
        jobs = [Job(lambda p=p: p, gen=g) for p, g in zip(prompts, GENS)]
        first = [asyncio.ensure_future(batcher.run(j)) for j in jobs[:3]]
        while not late:
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(batcher.run(j)) for j in jobs[3:]]
        return [await f for f in first + rest]

    results = _run(batcher, scenario)
    assert [[t for t, _ in r.texts] for r in results] == alone
    stats = batcher.stats()
    assert stats["mode"] == "continuous" and stats["requests"] == 5 and stats["running"] == 0
    assert stats["most_rows"] >= 4 and any(len(a[0]) > 10 for a in alone)


def test_a_request_arriving_while_another_decodes_joins_before_it_finishes(twin):
    a, b = _prompts(2, seed=3)
    gen_a, gen_b = GenerateSettings(max_new_tokens=40), GenerateSettings(max_new_tokens=5)
    batcher = ContinuousBatcher(twin, wait_ms=0, max_batch=8)
    dec, running, queued, seen = batcher.decoder, threading.Event(), threading.Event(), []

    def hook():  # before each step: which rows run, with how many tokens; at step 2 wait until b is queued
        seen.append([len(r.ids) for r in dec.rows])
        if dec.steps == 2:
            running.set()
            assert queued.wait(30)

    dec.on_step = hook

    async def scenario():
        one = asyncio.ensure_future(batcher.run(Job(lambda: a, gen=gen_a)))
        await asyncio.to_thread(running.wait, 30)
        two = asyncio.ensure_future(batcher.run(Job(lambda: b, gen=gen_b)))
        await asyncio.sleep(0)  # its job is in the queue
        queued.set()
        return await one, await two

    ra, rb = _run(batcher, scenario)
    assert ra.texts[0][0] == twin.generate_after([a], gen_a)[0][0]
    assert rb.texts[0][0] == twin.generate_after([b], gen_b)[0][0]
    both = [rows for rows in seen if len(rows) == 2]
    assert both and both[0][0] < 40 and both[0][1] == 1  # b decoded beside a, a far from done
    assert batcher.stats()["joined_running"] == 1 and batcher.stats()["most_rows"] == 2


def test_a_cancelled_request_frees_its_row_at_the_next_step(twin):
    a, b = _prompts(2, seed=4)
    gen = GenerateSettings(max_new_tokens=30, temperature=1.0, seed=3)
    batcher = ContinuousBatcher(twin, wait_ms=50, max_batch=8)
    dec, seen = batcher.decoder, []
    jobs = [Job(lambda: a, gen=gen), Job(lambda: b, gen=gen)]

    def hook():
        seen.append(len(dec))
        if dec.steps == 3:
            jobs[0].cancel()  # its client went away mid-generation

    dec.on_step = hook

    async def scenario():
        return await asyncio.gather(*(batcher.run(j) for j in jobs))

    ra, rb = _run(batcher, scenario)
    assert seen[:3] == [2, 2, 2] and set(seen[4:]) == {1}  # gone after its 4th token; b went on alone
    full = twin.generate_after([a], gen)[0][0]
    assert len(ra.texts[0][0]) < len(full) and rb.texts[0][0] == twin.generate_after([b], gen)[0][0]
    assert batcher.stats()["given_up"] == 1 and len(dec) == 0


def test_scoring_is_answered_between_decode_steps(twin):
    a, p = _prompts(2, seed=5)
    cands = [[10, 11], [12], [13, 14, 15]]
    batcher = ContinuousBatcher(twin, wait_ms=0, max_batch=8)
    dec, running, scored, answered = batcher.decoder, threading.Event(), threading.Event(), []

    def hook():
        if dec.steps == 2:
            running.set()
        if dec.steps == 4:  # the scoring job came in after step 2: answered while a still decodes
            answered.append(scored.wait(30))

    dec.on_step = hook

    async def scenario():
        one = asyncio.ensure_future(batcher.run(Job(lambda: a, gen=GenerateSettings(max_new_tokens=40))))
        await asyncio.to_thread(running.wait, 30)
        score = await batcher.run(Job(lambda: p, candidates=lambda: cands))
        scored.set()
        return await one, score

    ra, rs = _run(batcher, scenario)
    assert answered == [True]
    expected = twin.score_after([p], [cands])[0]
    assert [s for s, _ in rs.scores] == pytest.approx([s for s, _ in expected], abs=1e-5)
    assert ra.texts[0][0] == twin.generate_after([a], GenerateSettings(max_new_tokens=40))[0][0]


def test_streamed_deltas_add_up_to_the_final_texts(twin):
    prompts = _prompts(3, seed=6)
    gens = [GenerateSettings(max_new_tokens=20, temperature=0.9, num_samples=2, seed=2),
            GenerateSettings(max_new_tokens=12), GenerateSettings(max_new_tokens=30, temperature=0.7, seed=8)]
    batcher = ContinuousBatcher(twin, wait_ms=0, max_batch=8)
    events = [[] for _ in prompts]
    jobs = [Job(lambda p=p: p, gen=g, stream=events[k].append) for k, (p, g) in enumerate(zip(prompts, gens))]

    async def scenario():
        return await asyncio.gather(*(batcher.run(j) for j in jobs))

    results = _run(batcher, scenario)
    for k, (r, g) in enumerate(zip(results, gens)):
        assert events[k][0] == ("start",)
        deltas = ["".join(e[2] for e in events[k] if e[0] == "delta" and e[1] == i) for i in range(g.num_samples)]
        assert deltas == [t for t, _ in r.texts]
        assert [t for t, _ in r.texts] == twin.generate_after([prompts[k]], g)[0]
    assert sum(e[0] == "delta" for ev in events for e in ev) > 6  # in pieces, not once at the end


def test_the_batching_flag(twin, monkeypatch):
    assert build_parser().parse_args(["serve", "--run", "r"]).batching is None  # continuous
    assert build_parser().parse_args(["serve", "--run", "r", "--batching", "static"]).batching == "static"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--run", "r", "--batching", "dynamic"])
    from usertwin.twin.slots import SlotDecoder

    assert type(twin.decoder()).__name__ == "Decoder"
    monkeypatch.setattr(twin.engine, "decoding", "static")  # the rows in slots, a CUDA graph a step on a GPU
    assert isinstance(twin.decoder(), SlotDecoder)
