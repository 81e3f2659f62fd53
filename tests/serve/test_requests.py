"""usertwin serve, in process (no subprocess, no training): what a request is refused for before it reaches the
model (size, types, a chat a ratings twin cannot have), and work whose client went away."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install 'usertwin[serve]')")
pytest.importorskip("httpx", reason="httpx is not installed (pip install 'usertwin[dev]')")

from fastapi.testclient import TestClient  # noqa: E402

from usertwin.config import Config, GenerateSettings  # noqa: E402
from usertwin.errors import UsertwinError  # noqa: E402
from usertwin.serve.app import create_app  # noqa: E402
from usertwin.serve.batching import Batcher, Job  # noqa: E402

ITEM = "Heat (1995) (Action, Crime, Thriller): "


def _record(uid: str, kinds: tuple[str, ...]) -> dict:
    collections = []
    if "movie_rating" in kinds:
        collections.append({"type": "movie_rating", "data": [
            {"continuation_prefix": f"Movie {i} (2000) (Drama): ", "continuation": f"{i % 5 + 1}.0",
             "timestamp": 1_000 + i} for i in range(4)]})
    if "dialogue" in kinds:
        collections.append({"type": "dialogue", "data": [
            {"continuation": "Sure.", "context": [{"source": "BOB", "content": "Coming?"}], "timestamp": 2_000}]})
    return {"user_hash": uid, "user": {"profile": {"age": 30}},
            "task": {"description": "Rate movies.", "language": "en", "task_behavior_collections": collections}}


def _twin(tmp_path, model_dir, kinds: tuple[str, ...]):
    """A zero-shot twin of the tiny model over records of `kinds`: its facts are those of the records."""
    from usertwin import Twin

    data = tmp_path / f"{'-'.join(kinds)}.jsonl"
    data.write_text("".join(json.dumps(_record(u, kinds)) + "\n" for u in ("1", "2")))
    return Twin.load(None, records=data, cfg=Config(model=str(model_dir), max_length=256), progress=False)


@pytest.fixture(scope="module")
def ratings_twin(tmp_path_factory, tiny_model_dir):
    return _twin(tmp_path_factory.mktemp("ratings"), tiny_model_dir, ("movie_rating",))


@pytest.fixture(scope="module")
def talking_twin(tmp_path_factory, tiny_model_dir):
    return _twin(tmp_path_factory.mktemp("talk"), tiny_model_dir, ("movie_rating", "dialogue"))


@pytest.fixture(scope="module")
def client(talking_twin):
    with TestClient(create_app(talking_twin, model_name="m", max_request_bytes=20_000)) as c:
        yield c


CHAT = {"model": "m", "user": "1", "messages": [{"role": "user", "content": "Coming?"}], "max_tokens": 2}


def _error(r, status: int, param=None, code=None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code, err
    return err["message"]


# ---------------------------------------------------------------- size


def test_an_oversized_body_is_413_before_it_is_read(client):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 30_000}]}
    body = json.dumps(big).encode()
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert _error(r, 413, code="request_too_large") == (
        f"the request body ({len(body):,} bytes) is larger than this server takes (20,000 bytes, "
        "`usertwin serve --max_request_bytes`)")
    # a chunked upload declares no length: refused once what was read passes the limit
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))
    message = _error(client.post("/v1/chat/completions", content=chunks,
                                 headers={"content-type": "application/json"}), 413, code="request_too_large")
    assert message == ("the request body is larger than this server takes (20,000 bytes, "
                       "`usertwin serve --max_request_bytes`)")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_text_too_long_for_max_length_is_refused_without_tokenizing(client, talking_twin, monkeypatch):
    bound = talking_twin.longest_token_bytes
    long = "x" * (2 * 256 * bound + 1)  # more bytes than 256 tokens can hold, under the body limit

    def never(*a, **kw):
        raise AssertionError("the model thread was asked to tokenize it")

    monkeypatch.setattr(talking_twin, "prompt", never)
    r = client.post("/v1/twin/predict", json={"user": "1", "item": long})
    message = _error(r, 400, param="item", code="context_length_exceeded")
    assert message == (f"item: {len(long):,} bytes of text cannot fit the twin's max_length 256 (a token of its "
                       f"tokenizer covers at most {bound} bytes): shorten it")


# ---------------------------------------------------------------- strict types


@pytest.mark.parametrize("path,body,param,message", [
    ("/v1/chat/completions", {**CHAT, "user": True}, "user", "user must be a string or an integer, not true"),
    ("/v1/chat/completions", {**CHAT, "user": 1.0}, "user", "user must be a string or an integer, not 1.0"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "max_tokens", "max_tokens must be an integer, not true"),
    ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream",
     'stream must be a boolean (true or false), not "yes"'),
    ("/v1/chat/completions", {**CHAT, "n": 1.0}, "n", "n must be an integer, not 1.0"),
    ("/v1/twin/predict", {"user": "1", "item": ITEM, "generate": 0}, "generate",
     "generate must be a boolean (true or false), not 0"),
    ("/v1/twin/predict", {"user": "1", "item": ITEM, "target": 1}, "target",
     "item and target: send one (target: an existing item of the user, by position; item: a new one)"),
    ("/v1/twin/score", {"user": "1", "item": ITEM, "target": 1, "continuations": ["4.0"]}, "target",
     "item and target: send one (target: an existing item of the user, by position; item: a new one)"),
])
def test_a_value_of_the_wrong_kind_is_refused_not_coerced(client, path, body, param, message):
    assert _error(client.post(path, json=body), 400, param=param,
                  code="invalid_request" if "must be" in message else None) == message


def test_strict_types_still_take_what_clients_send(client):
    # an integer temperature is a number; an integer user id is the id's text
    r = client.post("/v1/chat/completions", json={**CHAT, "user": 1, "temperature": 1, "seed": 3})
    assert r.status_code == 200, r.text
    r = client.post("/v1/twin/predict", json={"user": "1", "target": 2, "generate": False})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- what the twin was trained on


def test_models_say_what_the_twin_was_trained_on(ratings_twin, client):
    card = client.get("/v1/models").json()["data"][0]["usertwin"]
    assert card["collections"] == ["dialogue", "movie_rating"] and card["chat"] is True
    with TestClient(create_app(ratings_twin, model_name="m")) as c:
        card = c.get("/v1/models/m").json()["usertwin"]
        assert card == {"collections": ["movie_rating"], "rating_scale": ["1.0", "2.0", "3.0", "4.0"],
                        "task": "Rate movies.", "chat": False,
                        "endpoints": ["/v1/twin/predict", "/v1/twin/score", "/v1/completions"]}


def test_a_ratings_twin_refuses_to_chat(ratings_twin):
    expected = ("this twin was trained on ratings (movie_rating), never on a dialogue: it cannot chat as the "
                "user; ")
    with TestClient(create_app(ratings_twin, model_name="m")) as c:
        message = _error(c.post("/v1/chat/completions", json=CHAT), 400, param="messages", code="chat_not_trained")
        assert message == expected + ("ask for its next act with POST /v1/twin/predict (the rating and its "
                                      "distribution) or POST /v1/completions with the item as the prompt")
        r = c.post("/v1/twin/predict", json={"user": "1", "item": ITEM, "generate": False})
        assert r.status_code == 200 and len(r.json()["rating_distribution"]["probs"]) == 4
    with pytest.raises(UsertwinError) as e:
        ratings_twin.chat([{"role": "user", "content": "hi"}], user="1")
    assert str(e.value) == expected + ("ask for its next act with Twin.predict(user=..., item=...) or "
                                       "Twin.rating_distribution")


# ---------------------------------------------------------------- clients that went away


class SlowTwin:
    """Stands in for a twin: the first generation blocks until released; records the prompts it built."""

    scale, records_path, longest_token_bytes = None, None, 4

    def __init__(self):
        self.cfg = Config(max_length=256)
        self.release, self.started = threading.Event(), threading.Event()
        self.prompted = []

    def prompt(self, user, item, *args, **kwargs):
        self.prompted.append(item)
        return [1, 2]

    def generate_after(self, prompts, gen, seeds=None, stream=None, gone=None):
        self.started.set()
        self.release.wait(30)
        self.gone_seen = [g() for g in gone or []]  # what the engine would see at its next step
        return [["ok"] * gen.num_samples for _ in prompts]

    def count_tokens(self, text):
        return 1


def test_a_cancelled_queued_request_never_runs():
    twin = SlowTwin()
    batcher = Batcher(twin, wait_ms=0, max_batch=1)
    gen = GenerateSettings(max_new_tokens=2)

    def job(name):
        return Job(lambda: twin.prompted.append(name) or [1, 2], gen=gen)

    async def scenario():
        first, second, third = job("first"), job("second"), job("third")
        one = asyncio.ensure_future(batcher.run(first))
        while not twin.started.is_set():  # the model thread is busy with the first
            await asyncio.sleep(0.01)
        two = asyncio.ensure_future(batcher.run(second))
        three = asyncio.ensure_future(batcher.run(third))
        await asyncio.sleep(0.05)
        second.cancel()  # its client went away while it waited
        twin.release.set()
        done = [(await one).texts, (await three).texts]
        with pytest.raises(asyncio.CancelledError):
            await two
        return done

    batcher.start()
    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert results == [[("ok", 1)], [("ok", 1)]]
    assert twin.prompted == ["first", "third"]
    assert batcher.stats()["cancelled"] == 1 and batcher.stats()["requests"] == 2


def test_a_cancelled_request_stops_decoding_at_the_next_step(talking_twin):
    """The stopping criterion ends generation once every row's request is gone; the rows already running stop."""
    ids = talking_twin.prompt("1", ITEM)
    gen = GenerateSettings(max_new_tokens=40, temperature=1.0, seed=1)
    steps = []

    def gone_after_three():
        steps.append(1)
        return len(steps) >= 3

    full = talking_twin.engine.generate_ids([ids], gen)[0][0]
    cut = talking_twin.engine.generate_ids([ids], gen, gone=[gone_after_three])[0][0]
    assert len(steps) == 3 and cut == full[:3]
    assert len(full) > 3  # (a random tiny model rarely ends its turn within 3 tokens; seeded, so it did not)


def test_a_client_that_disconnects_cancels_its_job():
    """Driven as the server drives the app (ASGI): the client disconnects while its request waits for the busy
    model thread; the request is cancelled and never prompted."""
    twin = SlowTwin()
    app = create_app(twin, model_name="m", batching="static")  # SlowTwin stands in for generate_after
    body = json.dumps({"item": ITEM, "max_new_tokens": 2}).encode()

    async def request(messages: asyncio.Queue, sent: list):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/twin/predict", "raw_path": b"/v1/twin/predict", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}

        async def send(message):
            sent.append(message)

        await app(scope, messages.get, send)

    async def scenario():
        busy, gone = asyncio.Queue(), asyncio.Queue()
        for q in (busy, gone):
            await q.put({"type": "http.request", "body": body, "more_body": False})
        first, second = [], []
        one = asyncio.ensure_future(request(busy, first))
        while not twin.started.is_set():  # the model thread is busy with the first request
            await asyncio.sleep(0.01)
        two = asyncio.ensure_future(request(gone, second))
        await asyncio.sleep(0.1)
        await gone.put({"type": "http.disconnect"})  # the second's client goes away while it waits
        await two
        twin.release.set()
        await one
        await asyncio.sleep(0.1)  # the worker picks up, and drops, the cancelled request
        return first, second

    async def lifespan():
        async with app.router.lifespan_context(app):
            return await scenario()

    first, second = asyncio.run(lifespan())
    assert first[0]["status"] == 200 and second[0]["status"] == 499
    assert json.loads(second[1]["body"])["error"]["code"] == "client_closed"
    assert twin.prompted == [ITEM]  # the first only
    assert app.state.served.batcher.stats()["cancelled"] == 1


def test_a_dropped_stream_stops_its_rows():
    """A streamed completion whose client disconnects mid-generation: its job is cancelled, so the rows the
    model thread is decoding are given up at the next step (the `gone` flags the engine polls)."""
    twin = SlowTwin()
    app = create_app(twin, model_name="m", batching="static")  # SlowTwin stands in for generate_after
    body = json.dumps({"model": "m", "prompt": ITEM, "max_tokens": 2, "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}

    async def scenario():
        messages, sent = asyncio.Queue(), []
        await messages.put({"type": "http.request", "body": body, "more_body": False})

        async def send(message):
            sent.append(message)

        done = asyncio.ensure_future(app(scope, messages.get, send))
        while not twin.started.is_set():  # the stream has begun: its rows are decoding
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await messages.put({"type": "http.disconnect"})
        await asyncio.wait_for(done, 10)
        return sent

    async def lifespan():
        async with app.router.lifespan_context(app):
            sent = await scenario()
            twin.release.set()
            await asyncio.sleep(0.2)
            return sent

    sent = asyncio.run(lifespan())
    assert sent[0]["status"] == 200 and sent[0]["headers"]  # the stream had started
    assert twin.gone_seen == [True]
