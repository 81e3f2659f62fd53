"""The HTTP app of `usertwin serve`: OpenAI-compatible endpoints, the twin's own endpoints and a page.

Whose twin answers is chosen per request: `user` (an id of the records file given with --data; OpenAI's
own `user` field), or `profile` (an object) and `history` (items in the records format), sent as extra body
fields (`extra_body=` in the openai package). A chat's `system` message may describe the user instead.

    GET  /v1/models, /v1/models/{id}   the served twin
    POST /v1/chat/completions       the twin's next line in a conversation (stream: true for SSE chunks)
    POST /v1/completions            the twin's continuation of an item: `prompt` is the item (its prefix)
    POST /v1/twin/predict           continuations and the rating distribution of an item
    POST /v1/twin/score             log-likelihoods of given continuations
    GET  /v1/twin, /v1/twin/users, /v1/twin/users/{id}   what the page shows
    GET  /                          the page
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
import uuid
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from usertwin.config import GenerateSettings, range_of
from usertwin.errors import UsertwinError
from usertwin.serve.batching import Batcher, Job, Result
from usertwin.serve.continuous import ContinuousBatcher
from usertwin.twin.api import PromptTooLong
from usertwin.twin.chat import chat_prompt, check_chat, trained_on

log = logging.getLogger("usertwin.serve")
MAX_N = 16  # samples per request: more is a batch job for `usertwin predict`, not a request
MAX_REQUEST_BYTES = 1_000_000  # a body larger than this is refused before it is read whole


class ApiError(Exception):
    """An error a client caused, in OpenAI's shape."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


def error_body(message: str, kind: str, code=None, param=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ---------------------------------------------------------------- requests


class Strict(BaseModel):
    # an unknown field is refused, not ignored: a client must not believe a setting it sent took effect;
    # strict: `true` is no user id or token count and "yes" no boolean (coercing them hides a client's bug)
    model_config = ConfigDict(extra="forbid", strict=True)


class Who(Strict):
    user: str | int | None = Field(None, description="a user id of the records file (--data)")
    profile: dict | None = Field(None, description="describe the user: a profile object")
    history: list[dict] | None = Field(None, description="describe the user: earlier items, records format")


def limits(key: str) -> dict:
    """A generation setting's range as declared in config.py (GenerateSettings), as pydantic's bounds: a request
    takes what `usertwin predict` takes."""
    bounds = range_of(next(f for f in dataclasses.fields(GenerateSettings) if f.name == key))
    names = {"minimum": "ge", "maximum": "le", "above": "gt", "below": "lt"}
    return {names[k]: v for k, v in dataclasses.asdict(bounds).items() if v is not None} if bounds else {}


class Sampling(Strict):
    temperature: float | None = Field(None, **limits("temperature"))
    top_p: float | None = Field(None, **limits("top_p"))
    seed: int | None = Field(None, description="sample i draws with seed + i (the same in any batch)",
                             **limits("seed"))


class OpenAIRequest(Who, Sampling):
    """What the OpenAI-style endpoints share."""

    model: str
    max_tokens: int | None = Field(None, **limits("max_new_tokens"))
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None


class ChatRequest(OpenAIRequest):
    messages: list[dict] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, **limits("max_new_tokens"))


class CompletionRequest(OpenAIRequest):
    prompt: str | list[str] = Field(description="the item: what the user responds to (a continuation prefix)")
    context: list[dict] | None = None


class PredictRequest(Who, Sampling):
    item: str | None = None
    context: list[dict] | None = None
    target: int | None = Field(None, ge=0, description="an existing item of the user instead of a new one")
    max_new_tokens: int | None = Field(None, **limits("max_new_tokens"))
    num_samples: int = Field(1, ge=1, le=MAX_N)
    generate: bool = True
    rating_distribution: bool | None = Field(None, description="default: when the twin has a rating scale")


class ScoreRequest(Who):
    item: str | None = None
    context: list[dict] | None = None
    target: int | None = Field(None, ge=0)
    continuations: list[str] = Field(min_length=1, max_length=256)


# ---------------------------------------------------------------- the app


BATCHING = ("continuous", "static")


def create_app(twin, *, api_key: str | None = None, model_name: str | None = None, wait_ms: float = 5.0,
               max_batch: int = 32, max_request_bytes: int = MAX_REQUEST_BYTES,
               batching: str = "continuous") -> FastAPI:
    """`batching`: continuous (requests join and leave the running batch between decode steps) or static (a
    batch decodes until all its rows are done; what --decode static and a vLLM engine need)."""
    if batching not in BATCHING:
        raise UsertwinError(f"batching must be one of {', '.join(BATCHING)}, not {batching!r}")
    kind = ContinuousBatcher if batching == "continuous" else Batcher
    state = Served(twin, model_name or "usertwin", kind(twin, wait_ms, max_batch))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        yield
        state.batcher.stop()

    app = FastAPI(title="usertwin", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = state
    _handlers(app)
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    auth = [Depends(_auth(api_key))]
    app.get("/", response_class=HTMLResponse, include_in_schema=False)(lambda: HTMLResponse(page_html()))
    # browsers ask for it on every page load: no content, rather than a 404 in the server's log
    app.get("/favicon.ico", include_in_schema=False)(lambda: Response(status_code=204))
    app.get("/v1/models", dependencies=auth)(state.models)
    app.get("/v1/models/{model_id}", dependencies=auth)(state.model)
    app.post("/v1/chat/completions", dependencies=auth)(state.chat)
    app.post("/v1/completions", dependencies=auth)(state.completions)
    app.post("/v1/twin/predict", dependencies=auth)(state.predict)
    app.post("/v1/twin/score", dependencies=auth)(state.score)
    app.get("/v1/twin", dependencies=auth)(state.info)
    app.get("/v1/twin/users", dependencies=auth)(state.users)
    app.get("/v1/twin/users/{user_id}", dependencies=auth)(state.user)
    return app


def page_html() -> str:
    return resources.files("usertwin.serve").joinpath("page.html").read_text(encoding="utf-8")


def _auth(api_key: str | None):
    expected = api_key.encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # the scheme is case-insensitive (RFC 9110): "bearer KEY" is "Bearer KEY"
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the "
                                "key given to `usertwin serve --api_key`", code="invalid_api_key")

    return check


class BodyLimit:
    """Refuses a body over `limit` bytes with 413 before the app reads it: at once when Content-Length declares
    it; a chunked upload (no length declared) is read up to the limit first, then handed on whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:  # the server holds a body to its declared length
            if declared.isdigit() and int(declared) > self.limit:
                return await self._refuse(scope, receive, send, int(declared))
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body, more = body + message.get("body", b""), message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(scope, receive, send, None)
        return await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, scope, receive, send, size: int | None):
        response = JSONResponse(too_large(self.limit, size), status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def _replay(body: bytes, receive):
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def too_large(limit: int, size: int | None = None) -> dict:
    sent = f" ({size:,} bytes)" if size is not None else ""
    return error_body(f"the request body{sent} is larger than this server takes ({limit:,} bytes, "
                      "`usertwin serve --max_request_bytes`)", "invalid_request_error", "request_too_large")


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(error_body(e.message, e.kind, e.code, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        message, param = _validation_message(e.errors())
        return JSONResponse(error_body(message, "invalid_request_error", "invalid_request", param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {e.detail}", kind), e.status_code)

    @app.exception_handler(Exception)
    async def crashed(request, e: Exception):  # a bug: logged with its traceback here, never sent to a client
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error ({type(e).__name__}); the server log has the details",
                                       "server_error"), 500)


def _validation_message(errors) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object (sent with Content-Type: application/json)", None
    if first.get("type") == "extra_forbidden":
        return f"unsupported parameter: {param}", param
    wrong = _wrong_kind(errors)
    if wrong:
        return wrong
    return (f"{param}: {first.get('msg')}" if param else f"the body: {first.get('msg')}"), param


def _wrong_kind(errors) -> tuple[str, str] | None:
    """"max_tokens must be an integer, not true": a top-level field of the wrong JSON kind. A union (`user`: a
    string or an integer) fails once per member, each member's name appended to the location: one message."""
    loc = tuple(errors[0].get("loc", ()))
    if len(loc) < 2 or loc[0] != "body":
        return None
    mine = [e for e in errors if tuple(e.get("loc", ()))[:2] == loc[:2]]
    kinds = [KINDS.get(e.get("type")) for e in mine]
    if not all(kinds) or any(len(e["loc"]) > 3 for e in mine):  # deeper: a list element, say; pydantic's words
        return None
    got = json.dumps(errors[0].get("input"), ensure_ascii=False)[:80]
    return f"{loc[1]} must be {' or '.join(dict.fromkeys(kinds))}, not {got}", str(loc[1])


# the JSON a field takes, by pydantic's error type: named when a request sends another kind (strict: no coercion)
KINDS = {"string_type": "a string", "int_type": "an integer", "float_type": "a number",
         "bool_type": "a boolean (true or false)", "list_type": "a list", "dict_type": "an object"}


# ---------------------------------------------------------------- endpoints


class Served:
    """The endpoints over one twin and its batcher."""

    def __init__(self, twin, model_name: str, batcher: Batcher):
        self.twin, self.model_name, self.batcher = twin, model_name, batcher
        self.created = int(time.time())

    @property
    def max_new_tokens(self) -> int:
        return GenerateSettings().max_new_tokens

    # -- OpenAI

    async def models(self):
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str):
        """OpenAI's models.retrieve."""
        self._check_model(model_id)
        return self._model_card()

    async def chat(self, req: ChatRequest, request: Request):
        self._check_model(req.model)
        try:
            check_chat(self.twin, "ask for its next act with POST /v1/twin/predict (the rating and its "
                                  "distribution) or POST /v1/completions with the item as the prompt")
        except UsertwinError as e:
            raise ApiError(400, str(e), code="chat_not_trained", param="messages") from None
        gen = self._gen(req.max_completion_tokens or req.max_tokens, req.temperature, req.top_p, req.n, req.seed)
        self._check_user(req)
        last = req.messages[-1].get("content") if isinstance(req.messages[-1], dict) else None
        self._check_size(last, "messages[-1].content")
        twin = self.twin
        job = Job(lambda: chat_prompt(twin, req.messages, req.user, req.profile, req.history,
                                      room=gen.max_new_tokens), gen=gen)
        if req.stream:
            chunks = _ChatChunks(_ids("chatcmpl"), self.model_name, _include_usage(req.stream_options))
            return await self._stream(job, chunks, req.stop, gen, request)
        result = await self._run(job, request)
        choices = _finish(result.texts, req.stop, gen.max_new_tokens)
        return {"id": _ids("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "system_fingerprint": None,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": why} for i, (text, why) in enumerate(choices)],
                "usage": _usage(result, choices)}

    async def completions(self, req: CompletionRequest, request: Request):
        self._check_model(req.model)
        gen = self._gen(req.max_tokens, req.temperature, req.top_p, req.n, req.seed)
        self._check_user(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: give an item (text) or a list of items", param="prompt")
        for p in prompts:
            self._check_size(p, "prompt")
        if req.stream:
            if len(prompts) > 1:
                raise ApiError(400, "stream: one prompt at a time (send a list without stream)", param="stream")
            chunks = _CompletionChunks(_ids("cmpl"), self.model_name, _include_usage(req.stream_options))
            return await self._stream(self._item_job(req, prompts[0], req.context, None, gen), chunks, req.stop,
                                      gen, request)
        results = await self._gather([self._item_job(req, p, req.context, None, gen) for p in prompts], request)
        choices = [c for r in results for c in _finish(r.texts, req.stop, gen.max_new_tokens)]
        usage = _usage_many(results, choices)
        return {"id": _ids("cmpl"), "object": "text_completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": why}
                            for i, (text, why) in enumerate(choices)], "usage": usage}

    # -- the twin's own

    async def predict(self, req: PredictRequest, request: Request):
        self._check_item(req)
        scale = self.twin.scale
        want_dist = bool(scale) if req.rating_distribution is None else req.rating_distribution
        if want_dist and not scale:
            raise ApiError(400, "this twin's data has no rating collection: no rating distribution",
                           param="rating_distribution")
        if not req.generate and not want_dist:
            raise ApiError(400, "nothing asked: generate is false and no rating distribution", param="generate")
        gen = self._gen(req.max_new_tokens, req.temperature, req.top_p, req.num_samples, req.seed) if req.generate \
            else None
        self._check_user(req)
        job = self._item_job(req, req.item, req.context, req.target, gen)
        if want_dist:
            twin = self.twin
            job.candidates = lambda: [twin.ids_of(t) for t in scale]
        result = await self._run(job, request)
        out = {"model": self.model_name, "prompt_tokens": result.prompt_tokens,
               "continuations": [t for t, _ in result.texts] if result.texts is not None else None,
               "rating_distribution": None}
        if want_dist:
            out["rating_distribution"] = self.twin.rating_distribution_of([s for s, _ in result.scores])
        return out

    async def score(self, req: ScoreRequest, request: Request):
        self._check_item(req)
        self._check_user(req)
        twin = self.twin
        job = self._item_job(req, req.item, req.context, req.target, None)
        job.candidates = lambda: [twin.ids_of(c) for c in req.continuations]
        result = await self._run(job, request)
        return {"model": self.model_name, "prompt_tokens": result.prompt_tokens,
                "scores": [{"continuation": c, "logprob": round(s, 6), "tokens": n,
                            "logprob_per_token": round(s / max(1, n), 6)}
                           for c, (s, n) in zip(req.continuations, result.scores)]}

    async def info(self):
        twin = self.twin
        return {"model": self.model_name, "facts": twin.facts, "users": len(twin.users),
                "records": str(twin.records_path) if twin.records_path else None,
                "max_length": twin.cfg.max_length, "max_new_tokens": self.max_new_tokens,
                "batching": self.batcher.stats()}

    async def users(self, limit: int = 1000):
        ids = self.twin.users
        return {"object": "list", "total": len(ids),
                "data": [{"id": u, "items": len(self.twin.timeline(u).items)} for u in ids[:max(0, limit)]]}

    async def user(self, user_id: str, recent: int = 10):
        tl = self._timeline(user_id)
        items = tl.items[-recent:] if recent > 0 else []
        return {"id": tl.user_id, "profile": tl.profile, "task": tl.task, "items": len(tl.items),
                "recent": [{"position": it.position, "type": it.collection, "item": it.prefix,
                            "continuation": it.continuation, "context": it.context, "time": it.time_text}
                           for it in items]}

    # -- helpers

    def _model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "usertwin",
                "usertwin": self._trained_on()}

    def _trained_on(self) -> dict:
        """What the twin learned from, so a client can tell a rating twin from one that talks."""
        kinds = trained_on(self.twin)
        facts = {} if kinds is None else self.twin.facts
        return {"collections": kinds, "rating_scale": facts.get("rating_scale"), "task": facts.get("task"),
                "chat": kinds is None or "dialogue" in kinds,
                "endpoints": ["/v1/twin/predict", "/v1/twin/score", "/v1/completions"]
                + (["/v1/chat/completions"] if kinds is None or "dialogue" in kinds else [])}

    def _check_item(self, req) -> None:
        """`target` names an item the user already has; `item` describes a new one: one of them."""
        if req.target is not None and req.item is not None:
            raise ApiError(400, "item and target: send one (target: an existing item of the user, by position; "
                                "item: a new one)", param="target")
        self._check_size(req.item, "item")
        if req.context:
            self._check_size(req.context[-1].get("content"), "context[-1].content")

    def _check_size(self, text, param: str) -> None:
        """A text the prompt must hold whole, refused before the model thread tokenizes it when its bytes alone
        prove it cannot fit: each token stands for at most `longest_token_bytes` bytes. Twice that bound:
        a tokenizer's normalizer may shorten text."""
        if not isinstance(text, str):
            return
        size, limit = len(text.encode("utf-8", "surrogatepass")), self.twin.cfg.max_length
        if size > 2 * limit * self.twin.longest_token_bytes:
            raise ApiError(400, f"{param}: {size:,} bytes of text cannot fit the twin's max_length {limit} "
                                f"(a token of its tokenizer covers at most {self.twin.longest_token_bytes} "
                                "bytes): shorten it", code="context_length_exceeded", param=param)

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {self.model_name!r}",
                           code="model_not_found", param="model")

    def _gen(self, max_new, temperature, top_p, n, seed: int | None = None) -> GenerateSettings:
        limit = self.twin.cfg.max_length - 1
        if max_new is not None and max_new > limit:
            raise ApiError(400, f"max_tokens {max_new} is more than the twin's max_length allows ({limit})",
                           code="context_length_exceeded", param="max_tokens")
        base = GenerateSettings()
        if n > 1 and temperature == 0:  # unset: several samples are drawn at the default temperature
            raise ApiError(400, f"{n} samples need sampling: set temperature above 0 (greedy decoding has one "
                                "answer)", param="temperature")
        return GenerateSettings(max_new_tokens=max_new or base.max_new_tokens, temperature=temperature,
                                top_p=base.top_p if top_p is None else top_p, num_samples=n, seed=seed)

    def _check_user(self, req: Who) -> None:
        """A looked-up user must exist: 404 before the request waits for the model."""
        if req.user is not None and req.profile is None and req.history is None:
            self._timeline(req.user)

    def _timeline(self, user):
        if self.twin.records_path is None:
            raise ApiError(400, f"user {user!r}: the server was started without --data RECORDS, so users cannot "
                                "be looked up by id; describe the user with profile and history", param="user")
        try:
            return self.twin.timeline(user)
        except UsertwinError as e:
            raise ApiError(404, str(e), code="user_not_found", param="user") from None

    def _item_job(self, req: Who, item: str, context, target, gen) -> Job:
        twin = self.twin

        def prompt() -> list[int]:
            # history is fitted to leave room for what follows the prompt: the generation, and the longest
            # continuation scored after it
            room = max([gen.max_new_tokens if gen else 0] + [len(c) for c in (job.candidates or list)()])
            return twin.prompt(req.user, item, context, target=target,
                               profile=req.profile, history=req.history, room=room)

        job = Job(prompt, gen=gen)
        return job

    async def _run(self, job: Job, request: Request | None = None) -> Result:
        work = asyncio.ensure_future(self._answer(job))
        if request is not None:
            await _unless_gone(request, work, [job])
        return await work

    async def _answer(self, job: Job) -> Result:
        try:
            return await self.batcher.run(job)
        except PromptTooLong as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None
        except UsertwinError as e:
            raise ApiError(400, str(e)) from None

    async def _stream(self, job: Job, chunks, stop, gen: GenerateSettings, request: Request) -> StreamingResponse:
        """Server-sent events as the tokens come. A request that fails before its generation starts (unknown
        user, prompt too long) gets a plain 4xx response instead of a stream."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job.stream = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        task = asyncio.ensure_future(self._answer(job))
        started = asyncio.ensure_future(events.get())
        try:
            await _unless_gone(request, asyncio.ensure_future(asyncio.wait({task, started},
                                                                           return_when=asyncio.FIRST_COMPLETED)),
                               [job])
        except ApiError:
            started.cancel()
            task.cancel()
            raise
        if not started.done():
            started.cancel()
            task.result()  # raises the request's ApiError
        body = _stream_events(task, events, chunks, _stops(stop), gen, job)
        return StreamingResponse(_sse(body), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _gather(self, jobs: list[Job], request: Request) -> list[Result]:
        work = asyncio.ensure_future(asyncio.gather(*(self._answer(j) for j in jobs)))
        await _unless_gone(request, work, jobs)
        return list(await work)


async def _unless_gone(request: Request, work: asyncio.Future, jobs: list[Job]) -> None:
    """Waits for `work`; if the client disconnects first, its jobs are cancelled (dropped before they start,
    their rows stopped if decoding) so the model thread does not spend itself on an answer nobody reads."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work.done():
        return
    for job in jobs:
        job.cancel()
    work.cancel()
    log.info("%s %s: the client went away; its work is cancelled", request.method, request.url.path)
    raise ApiError(499, "the client closed the request", code="client_closed")


async def _disconnected(request: Request) -> None:
    # the body has been read: the next message the server has for this request is its disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------- responses


def _ids(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _finish(texts, stop, max_new: int) -> list[tuple[str, str]]:
    """(text, finish_reason) per sample: cut at the first stop string; `length` when the budget ran out."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    out = []
    for text, tokens in texts:
        cuts = [text.index(s) for s in stops if s and s in text]
        if cuts:
            out.append((text[:min(cuts)], "stop"))
        else:
            out.append((text, "length" if tokens >= max_new else "stop"))
    return out


def _usage(result: Result, choices) -> dict:
    return _usage_many([result], choices)


def _usage_many(results: list[Result], choices) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(n for r in results for _, n in r.texts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _include_usage(options: dict | None) -> bool:
    return bool((options or {}).get("include_usage"))


def _stops(stop) -> list[str]:
    return [x for x in ([stop] if isinstance(stop, str) else list(stop or [])) if x]


async def _sse(events):
    async for event in events:
        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


async def _stream_events(task: asyncio.Future, events: asyncio.Queue, chunks, stops: list[str],
                         gen: GenerateSettings, job: Job):
    """The chunks of one streamed request: deltas while the batch generates, then each sample's finish. Closed
    early (the client dropped the stream), its job is cancelled: its rows stop decoding."""
    try:
        async for chunk in _chunks(task, events, chunks, stops, gen):
            yield chunk
    finally:
        if not task.done():
            job.cancel()


async def _chunks(task: asyncio.Future, events: asyncio.Queue, chunks, stops: list[str], gen: GenerateSettings):
    cuts = [_StopCut(stops) for _ in range(gen.num_samples)]
    for i in range(gen.num_samples):
        opening = chunks.open(i)
        if opening:
            yield opening
    while True:
        get = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            break
        for chunk in _delta(get.result(), cuts, chunks):
            yield chunk
    while not events.empty():
        for chunk in _delta(events.get_nowait(), cuts, chunks):
            yield chunk
    try:
        result = task.result()
    except ApiError as e:  # failed after the stream began: OpenAI's in-stream error event
        yield error_body(e.message, e.kind, e.code, e.param)
        return
    except Exception as e:
        log.exception("a streamed request failed")
        yield error_body(f"internal error ({type(e).__name__}); the server log has the details", "server_error")
        return
    choices = _finish(result.texts, stops, gen.max_new_tokens)
    for i, (_, why) in enumerate(choices):
        rest = cuts[i].flush()
        if rest:
            yield chunks.delta(i, rest)
        yield chunks.close(i, why)
    if chunks.with_usage:
        yield chunks.usage(_usage(result, choices))


def _delta(event: tuple, cuts: list, chunks):
    if event[0] == "delta":
        piece = cuts[event[1]].add(event[2])
        if piece:
            yield chunks.delta(event[1], piece)


class _StopCut:
    """One sample's deltas, cut at the first stop string; text that may be the start of one is held back."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.stopped = stops, "", 0, False

    def add(self, delta: str) -> str:
        if self.stopped:
            return ""
        self.text += delta
        hits = [self.text.find(s) for s in self.stops if s in self.text]
        if hits:
            self.stopped, end = True, min(hits)
        else:
            end = len(self.text) - self._held()
        return self._take(end)

    def flush(self) -> str:
        return "" if self.stopped else self._take(len(self.text))

    def _held(self) -> int:
        return max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)

    def _take(self, end: int) -> str:
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out


class _ChatChunks:
    """chat.completion.chunk objects of one response."""

    kind = "chat.completion.chunk"

    def __init__(self, cid: str, model: str, with_usage: bool):
        self.cid, self.model, self.with_usage, self.created = cid, model, with_usage, int(time.time())

    def _chunk(self, choices: list, **extra) -> dict:
        c = {"id": self.cid, "object": self.kind, "created": self.created, "model": self.model,
             "choices": choices}
        if self.with_usage:
            c["usage"] = None
        return {**c, **extra}

    def open(self, i: int) -> dict | None:
        return self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])

    def delta(self, i: int, text: str) -> dict:
        return self._chunk([{"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])

    def close(self, i: int, why: str) -> dict:
        return self._chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": why}])

    def usage(self, usage: dict) -> dict:
        return self._chunk([], usage=usage)


class _CompletionChunks(_ChatChunks):
    """text_completion objects of one streamed response (a completion has no opening chunk)."""

    kind = "text_completion"

    def open(self, i: int) -> dict | None:
        return None

    def delta(self, i: int, text: str) -> dict:
        return self._chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])

    def close(self, i: int, why: str) -> dict:
        return self._chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": why}])


def model_name_of(run_dir) -> str:
    return Path(run_dir).resolve().name
