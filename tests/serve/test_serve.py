"""usertwin serve: Twin.chat renders a conversation as training renders a dialogue item; a live server (a
subprocess on a free port, tiny trained run) answers the official openai client, httpx and headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import ROOT

from usertwin.cli import main

KEY = "test-key-123"
CHROMIUM = "/usr/bin/chromium"
USERS = {"10": 8, "11": 6, "12": 5}
ITEM = "Movie 2 (2000) (Drama): "
DESCRIBE = "\u0000describe"  # the page's option for a described user


def _items(uid: str, n: int) -> list[dict]:
    """Ratings and dialogue lines of one user, interleaved in time; each names its collection."""
    out = []
    for i in range(n):
        t = 1_000_000 + 60 * i
        out.append({"type": "movie_rating", "continuation_prefix": f"Movie {(i + int(uid)) % 6} (2000) (Drama): ",
                    "continuation": f"{(i * int(uid)) % 5 + 1}.0", "timestamp": t})
        out.append({"type": "dialogue", "timestamp": t + 30, "continuation": f"I liked movie {i}.",
                    "context": [{"source": "BOB", "content": f"Seen movie {i}?"},
                                {"source": "user", "content": "Maybe."},
                                {"source": "BOB", "content": "And?"}]})
    return out


def _raw(uid: str, n: int) -> dict:
    collections = {}
    for it in _items(uid, n):
        it = dict(it)
        collections.setdefault(it.pop("type"), []).append(it)
    return {"user_hash": uid, "user": {"profile": {"name": f"user {uid}", "age": int(uid) + 10}},
            "task": {"description": "Rate movies and talk about them.", "language": "en",
                     "task_behavior_collections": [{"type": k, "data": v} for k, v in collections.items()]}}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("serve")
    data = tmp / "r.jsonl"
    data.write_text("".join(json.dumps(_raw(u, n)) + "\n" for u, n in USERS.items()))
    run = tmp / "twin-run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(run),
                 "--max_length", "512", "--learning_rate", "0.01", "--max_steps", "2", "--eval_steps", "2",
                 # the chat tests compare with the training prompt of a looked-up user's item; crowd context
                 # counts a described history's ratings by another rule (tests/data/test_crowd.py)
                 "--crowd_context", "none", "--no-progress"]) == 0
    return run, data


@pytest.fixture(scope="module")
def twin(made):
    from usertwin import Twin

    return Twin.load(made[0], records=made[1])


# ---------------------------------------------------------------- Twin.chat


def _messages(context: list[dict]) -> list[dict]:
    """A records dialogue context as OpenAI messages: the twin's turns are the assistant's."""
    return [{"role": "assistant", "content": t["content"]} if t["source"] == "user"
            else {"role": "user", "name": t["source"], "content": t["content"]} for t in context]


def test_chat_prompt_is_the_training_prompt_of_a_dialogue_item(twin):
    from usertwin.twin.chat import chat_prompt

    items = _items("11", USERS["11"])
    profile = {"name": "user 11", "age": 21}
    k = 7  # a dialogue item: the earlier items are its history, its context is the conversation
    assert items[k]["type"] == "dialogue"
    expected = twin.prompt(user="11", target=k)
    messages = _messages(items[k]["context"])
    assert chat_prompt(twin, messages, profile=profile, history=items[:k]) == expected
    # the profile as a system message (JSON) is the same prompt
    system = [{"role": "system", "content": json.dumps(profile)}]
    assert chat_prompt(twin, system + messages, history=items[:k]) == expected
    # a looked-up user: all their items are history, and the reply is a dialogue item even after a rating
    whole = twin.timeline("11")
    assert whole.items[-1].collection == "dialogue"
    text = twin.engine.tokenizer.decode(chat_prompt(twin, messages, user="11"))
    # the conversation renders as training renders a dialogue: opened once, the twin's turns as its own
    assert text.endswith("[CONTEXT]\nBOB: Seen movie 3?\nWrite the next line this user says:<|im_end|>\n"
                         "<|im_start|>assistant\nMaybe.<|im_end|>\n<|im_start|>user\nBOB: And?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    reply = twin.chat(messages, user="11", max_new_tokens=3)
    assert isinstance(reply, str)


def test_chat_refuses_what_it_cannot_render(twin):
    from usertwin.errors import UsertwinError

    with pytest.raises(UsertwinError, match="non-empty list"):
        twin.chat([], user="11")
    with pytest.raises(UsertwinError, match=r"messages\[0\]\.role must be"):
        twin.chat([{"role": "tool", "content": "x"}], user="11")
    with pytest.raises(UsertwinError, match="not both"):
        twin.chat([{"role": "system", "content": "a film buff"}, {"role": "user", "content": "hi"}], user="11")
    with pytest.raises(UsertwinError, match="only text parts"):
        twin.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], user="11")


def test_system_text_describes_the_user(twin):
    from usertwin.twin.chat import chat_prompt

    said = [{"role": "user", "content": "Hello there"}]
    described = chat_prompt(twin, [{"role": "system", "content": "A retired teacher."}] + said)
    assert described == chat_prompt(twin, said, profile={"description": "A retired teacher."})
    assert "[USER_DESCRIPTION=A retired teacher.]" in twin.engine.tokenizer.decode(described)


# ---------------------------------------------------------------- a live server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_deps():
    """Skips before the run is trained when the server or its clients cannot run."""
    for name in ("fastapi", "uvicorn", "httpx"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install 'usertwin[dev]')")


@pytest.fixture(scope="module")
def server(serve_deps, made, tmp_path_factory):
    import httpx

    run, data = made
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    src = str(ROOT / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("USERTWIN_API_KEY", None)
    cmd = [sys.executable, "-m", "usertwin.cli", "serve", "--run", str(run), "--data", str(data),
           "--port", str(port), "--api_key", KEY, "--batch_wait_ms", "50"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, base, log, httpx)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(proc, base: str, log: Path, httpx) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"usertwin serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/v1/models", headers=_auth(), timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"usertwin serve did not answer within 240 s:\n{log.read_text()[-3000:]}")


def _auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server, headers=_auth(), timeout=120) as c:
        yield c


def test_openai_model_list(client, made):
    import openai

    assert [m.id for m in client.models.list()] == [made[0].name]
    assert client.models.retrieve(made[0].name).id == made[0].name  # OpenAI's models.retrieve
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_seed_is_taken_and_repeats_the_samples(client, made):
    messages = _messages(_items("11", 2)[3]["context"])
    ask = dict(model=made[0].name, messages=messages, user="11", max_tokens=6, temperature=1.0, n=2)
    first = [c.message.content for c in client.chat.completions.create(**ask, seed=7).choices]
    again = [c.message.content for c in client.chat.completions.create(**ask, seed=7).choices]
    other = [c.message.content for c in client.chat.completions.create(**ask, seed=8).choices]
    assert first == again and first != other


def test_openai_chat_completion_and_its_stream(client, made):
    messages = _messages(_items("11", 2)[3]["context"])
    done = client.chat.completions.create(model=made[0].name, messages=messages, user="11", max_tokens=5)
    choice = done.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 20 and done.usage.total_tokens >= done.usage.prompt_tokens
    stream = client.chat.completions.create(model=made[0].name, messages=messages, user="11", max_tokens=5,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same reply, in pieces
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.prompt_tokens == done.usage.prompt_tokens
    reply = choice.message.content
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    # token by token, as the batch generates; a random tiny model may emit bytes that are no text yet (the
    # streamer holds them until they decode), so the count is checked where the reply is plain text
    if reply.isascii():
        assert len(pieces) > 1 or len(reply) <= 1
    if reply:  # a stop string cuts the reply before it, streamed or not
        cut = client.chat.completions.create(model=made[0].name, messages=messages, user="11", max_tokens=5,
                                             stop=[reply[-1]])
        assert cut.choices[0].message.content == reply[:reply.index(reply[-1])]
        assert cut.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(model=made[0].name, messages=messages, user="11", max_tokens=5,
                                                  stop=[reply[-1]], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.choices[0].message.content


def test_stop_strings_cut_a_stream_without_showing_their_start():
    pytest.importorskip("fastapi")
    from usertwin.serve.app import _StopCut

    cut = _StopCut(["END", "\n\n"])
    out = [cut.add(x) for x in ["Hello E", "N", "and more", " E", "ND tail"]]
    assert out == ["Hello ", "", "ENand more", " ", ""] and cut.flush() == ""
    assert "".join(out) == "Hello ENand more "
    keep = _StopCut(["xyz"])
    assert keep.add("abx") == "ab" and keep.flush() == "x"


def test_openai_chat_with_a_described_user(client, made, twin):
    from usertwin.twin.chat import chat_prompt

    items = _items("12", 3)
    messages = [{"role": "system", "content": "A quiet film critic."}, {"role": "user", "content": "Hi!"}]
    done = client.chat.completions.create(model=made[0].name, messages=messages, max_tokens=3, n=2,
                                          temperature=0.8, extra_body={"history": items})
    assert len(done.choices) == 2 and [c.index for c in done.choices] == [0, 1]
    assert done.usage.prompt_tokens == len(chat_prompt(twin, messages, history=items, room=3))


def test_openai_completions(client, made, twin):
    done = client.completions.create(model=made[0].name, prompt=ITEM, user="10", max_tokens=3)
    assert isinstance(done.choices[0].text, str)
    assert done.usage.prompt_tokens == len(twin.prompt(user="10", item=ITEM, room=3))
    two = client.completions.create(model=made[0].name, prompt=[ITEM, "Movie 3 (2000) (Drama): "], user="10",
                                    max_tokens=3)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == done.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=made[0].name, prompt=ITEM, user="10", max_tokens=3, stream=True) if c.choices)
    assert streamed == done.choices[0].text


def test_twin_predict_matches_the_python_twin(http, twin):
    r = http.post("/v1/twin/predict", json={"user": "10", "item": ITEM, "max_new_tokens": 3, "num_samples": 2,
                                            "temperature": 0.7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["continuations"]) == 2
    dist = body["rating_distribution"]
    assert dist["scale"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert dist["probs"] == pytest.approx(twin.rating_distribution(user="10", item=ITEM)["probs"], abs=1e-5)
    # a described user: profile + history instead of an id; likelihoods only
    items = _items("12", 3)
    r = http.post("/v1/twin/predict", json={"profile": {"age": 30}, "history": items, "item": ITEM,
                                            "generate": False})
    assert r.status_code == 200, r.text
    assert r.json()["continuations"] is None
    expected = twin.rating_distribution(profile={"age": 30}, history=items, item=ITEM)
    assert r.json()["rating_distribution"]["probs"] == pytest.approx(expected["probs"], abs=1e-5)


def test_twin_score_matches_the_python_twin(http, twin):
    r = http.post("/v1/twin/score", json={"user": "11", "item": ITEM, "continuations": ["4.0", "I liked it."]})
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert [s["continuation"] for s in scores] == ["4.0", "I liked it."]
    assert scores[0]["logprob"] == pytest.approx(twin.score(user="11", item=ITEM, continuation="4.0"), abs=1e-4)
    assert all(s["tokens"] > 0 and s["logprob"] < 0 for s in scores)


def test_concurrent_requests_are_batched_with_the_same_answers(http, server):
    import httpx

    alone = {u: http.post("/v1/twin/predict", json={"user": u, "item": ITEM, "generate": False}).json()
             for u in USERS}
    before = http.get("/v1/twin").json()["batching"]
    results = {}

    def one(i: int) -> None:
        u = list(USERS)[i % len(USERS)]
        with httpx.Client(base_url=server, headers=_auth(), timeout=120) as c:
            results[i] = (u, c.post("/v1/twin/predict", json={"user": u, "item": ITEM, "max_new_tokens": 2}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for _, r in results.values()), [r.text for _, r in results.values()]
    for u, r in results.values():  # a row's answer does not depend on the rows batched with it
        probs = r.json()["rating_distribution"]["probs"]
        assert probs == pytest.approx(alone[u]["rating_distribution"]["probs"], abs=1e-4)
    after = http.get("/v1/twin").json()["batching"]
    assert after["requests"] - before["requests"] == 12
    assert after["largest"] > 1, after
    assert after["max_batch"] == 8 and after["largest"] <= 8  # no --max_batch: a CPU's default
    assert after["mode"] == "continuous" and after["steps"] > before["steps"]  # the default batching


# ---------------------------------------------------------------- errors: 4xx in OpenAI's shape


def _error(r, status: int, code=None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    if code:
        assert err["code"] == code, err
    return err


def test_bad_requests_get_4xx_json(http, made):
    name = made[0].name
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "user": "11", "max_tokens": 2}
    err = _error(http.post("/v1/chat/completions", content=b'{"model": "x", "messages": [',
                           headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in err["message"]
    err = _error(http.post("/v1/chat/completions", json={**chat, "user": "nobody"}), 404, "user_not_found")
    assert "'nobody'" in err["message"] and err["param"] == "user"
    _error(http.post("/v1/twin/predict", json={"user": "nobody", "item": ITEM}), 404, "user_not_found")
    long = {**chat, "messages": [{"role": "user", "content": "word " * 800}]}
    err = _error(http.post("/v1/chat/completions", json=long), 400, "context_length_exceeded")
    assert "max_length 512" in err["message"]
    _error(http.post("/v1/chat/completions", json={**chat, "max_tokens": 10_000}), 400, "context_length_exceeded")
    err = _error(http.post("/v1/chat/completions", json={**chat, "logit_bias": {"1": 5}}), 400)
    assert err["message"] == "unsupported parameter: logit_bias"
    _error(http.post("/v1/chat/completions", json={**chat, "model": "gpt-4o"}), 404, "model_not_found")
    _error(http.post("/v1/chat/completions", json={**chat, "messages": [{"role": "tool", "content": "x"}]}), 400)
    _error(http.post("/v1/chat/completions", json={**chat, "n": 0}), 400)
    _error(http.post("/v1/chat/completions", json={**chat, "n": 2, "temperature": 0}), 400)  # greedy has one answer
    # a stream that cannot start is a plain error response, not an event stream
    _error(http.post("/v1/chat/completions", json={**chat, "user": "nobody", "stream": True}), 404, "user_not_found")
    _error(http.post("/v1/chat/completions", json={**long, "stream": True}), 400, "context_length_exceeded")
    assert "must be a JSON object" in _error(http.post("/v1/chat/completions", json=[1, 2]), 400)["message"]
    _error(http.post("/v1/twin/predict", json={"user": "11", "target": 99}), 400)
    _error(http.post("/v1/twin/score", json={"user": "11", "continuations": []}), 400)
    _error(http.post("/v1/twin/predict", json={"history": [{"continuation_prefix": "no continuation"}]}), 400)
    _error(http.get("/v1/nothing-here"), 404)
    _error(http.get("/v1/twin/users/nobody"), 404, "user_not_found")


def test_the_key_is_required(server, made):
    import httpx

    chat = {"model": made[0].name, "messages": [{"role": "user", "content": "hi"}], "user": "11"}
    for headers in ({}, _auth("wrong"), {"Authorization": KEY}):
        r = httpx.post(server + "/v1/chat/completions", json=chat, headers=headers, timeout=60)
        _error(r, 401, "invalid_api_key")
    assert httpx.get(server + "/v1/models", timeout=60).status_code == 401
    # the scheme is case-insensitive; the key is not
    assert httpx.get(server + "/v1/models", headers={"Authorization": f"bearer {KEY}"}, timeout=60).status_code == 200
    assert httpx.get(server + "/v1/models", headers={"Authorization": f"Bearer {KEY.upper()}"},
                     timeout=60).status_code == 401
    page = httpx.get(server + "/", timeout=60)  # the page holds no data; what it fetches needs the key
    assert page.status_code == 200 and "<script>" in page.text


def test_openai_client_sees_errors_as_its_own_exceptions(server, made):
    openai = pytest.importorskip("openai")
    bad = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="nobody"):
        good.chat.completions.create(model=made[0].name, messages=[{"role": "user", "content": "hi"}], user="nobody")
    with pytest.raises(openai.BadRequestError, match="max_length 512") as e:
        good.chat.completions.create(model=made[0].name, messages=[{"role": "user", "content": "word " * 800}],
                                     user="11")
    assert e.value.code == "context_length_exceeded"


# ---------------------------------------------------------------- the page, in headless Chromium


class Chromium:
    """Headless Chromium driven through the DevTools protocol over --remote-debugging-pipe (fd 3: commands in,
    fd 4: replies out, each message JSON ended by a NUL byte), so no websocket client or driver is needed."""

    def __init__(self, tmp: Path, width: int = 1280, height: int = 1000):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        to_child, from_child = _above_4(to_child), _above_4(from_child)  # not 3 or 4: the moves below would clash
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
               f"--user-data-dir={tmp / 'profile'}", "--remote-debugging-pipe", "about:blank"]

        # bash puts the pipe ends where Chromium expects them (no preexec_fn: this process has threads; dash
        # takes single-digit descriptors only)
        move = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        self.proc = subprocess.Popen(["bash", "-c", move, *cmd], pass_fds=(to_child, from_child),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf, self._next = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            data = os.read(self._in, 1 << 20)
            if not data:
                raise RuntimeError("Chromium closed the pipe")
            self._buf += data
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                      awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"never true: {expression}\npage: {self.js('document.body.innerText')[:2000]}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


def _above_4(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


def use_page(browser: Chromium, base: str, user: str, item: str, say: str, key: str | None = None) -> dict:
    """Open the page, (give the key,) pick `user`, ask for the next act on `item`, then say `say` in the chat.
    Returns what the page shows."""
    browser.open(base + "/")
    if key:
        browser.wait_for("getComputedStyle(document.getElementById('keybox')).display !== 'none'")
        browser.js(f"document.getElementById('key').value = {json.dumps(key)}; "
                   "document.getElementById('key-save').click()")
    browser.wait_for(f"[...document.querySelectorAll('#user option')].some(o => o.value === {json.dumps(user)})")
    browser.js(f"var s = document.getElementById('user'); s.value = {json.dumps(user)}; "
               "s.dispatchEvent(new Event('change'))")
    browser.wait_for("document.querySelectorAll('#history-view tr').length > 0")
    browser.js(f"document.getElementById('item').value = {json.dumps(item)}; "
               "document.getElementById('predict-form').requestSubmit()")
    answer = browser.wait_for("(t => t.startsWith('The twin answers') && t)"
                              "(document.getElementById('answer').textContent)")
    browser.js(f"document.getElementById('chat-input').value = {json.dumps(say)}; "
               "document.getElementById('chat-form').requestSubmit()")
    browser.wait_for("document.querySelectorAll('#chat-log .msg.assistant').length > 0")
    bars = browser.js("document.querySelectorAll('#dist .bar').length")
    profile = browser.js("document.getElementById('profile-view').textContent")
    chat = browser.js("[...document.querySelectorAll('#chat-log .msg')].map(m => m.className)")
    # an empty item box asks for an item; it never sends the placeholder (the user's last item)
    browser.js("document.getElementById('item').value = ''; document.getElementById('predict-form').requestSubmit()")
    empty = browser.wait_for("(t => t.startsWith('type the item') && t)(document.getElementById('answer').textContent)")
    # describing a user: the picked user's history count goes with their history
    browser.js(f"var s = document.getElementById('user'); s.value = {json.dumps(DESCRIBE)}; "
               "s.dispatchEvent(new Event('change'))")
    return {"empty": empty, "count": browser.js("document.getElementById('history-count').textContent"),
            "keybox": browser.js("getComputedStyle(document.getElementById('keybox')).display"),
            "favicon": browser.js("fetch('/favicon.ico').then(r => r.status)"),
            "chat_form": browser.js("document.getElementById('chat-form').hidden"),
            "answer": answer, "bars": bars,
            "profile": profile,
            "chat": chat,
            "errors": browser.js("[...document.querySelectorAll('.error')].map(e => e.textContent)")}


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed; .ci/run installs it")
def test_page_in_headless_chromium(server, tmp_path):
    browser = Chromium(tmp_path)
    try:
        shown = use_page(browser, server, "11", ITEM, "What did you think of it?", key=KEY)
        shot = tmp_path / "serve-page.png"
        browser.screenshot(shot)
    finally:
        browser.close()
    assert shown["answer"].startswith("The twin answers") and "expected rating" in shown["answer"]
    assert shown["bars"] == 5 and '"age": 21' in shown["profile"]
    assert shown["chat"] == ["msg user", "msg assistant"] and shown["errors"] == [shown["empty"]]
    assert shown["empty"] == "type the item first, e.g. Heat (1995) (Action, Crime, Thriller): "
    assert shown["count"] == ""
    assert shown["keybox"] == "none" and shown["favicon"] == 204 and shown["chat_form"] is False
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000
