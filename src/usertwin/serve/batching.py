"""Concurrent requests -> batched model calls. The model, its tokenizer and the renderer live in one worker
thread (none of them is safe to share between threads); requests wait on asyncio futures. The worker takes the
first waiting job, collects more for `wait_ms` (or until `max_batch`), builds every prompt, then runs one
`generate` per distinct generation setting and one scoring forward for all scoring jobs. A streaming job hears
("start",) once its prompt is accepted and ("delta", sample, text) as its tokens come out of the batch.
A cancelled job (its client went away) is dropped if it has not started, and its rows stop decoding if it has:
a batch whose every request is cancelled ends at the next step."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable

from usertwin.config import GenerateSettings
from usertwin.twin.api import PromptTooLong

log = logging.getLogger("usertwin.serve")


@dataclasses.dataclass
class Job:
    """What one request needs from the model. `prompt` and `candidates` run in the worker (they tokenize)."""

    prompt: Callable[[], list[int]]
    gen: GenerateSettings | None = None  # generate with these settings
    candidates: Callable[[], list[list[int]]] | None = None  # score these continuations after the prompt
    stream: Callable[[tuple], None] | None = None  # called from the worker thread; must not block
    gone: threading.Event = dataclasses.field(default_factory=threading.Event)  # set: nobody waits for it

    def cancel(self) -> None:
        self.gone.set()


@dataclasses.dataclass
class Result:
    prompt_tokens: int
    texts: list[tuple[str, int]] | None = None  # (text, tokens) per generated sample
    scores: list[tuple[float, int]] | None = None  # (log-probability, tokens) per candidate


@dataclasses.dataclass
class Pending:
    job: Job
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    ids: list[int] | None = None
    cands: list[list[int]] | None = None
    result: Result | None = None


class Batcher:
    """Static batching (--batching static): a batch runs until every row of it has finished."""

    mode = "static"

    def __init__(self, twin, wait_ms: float = 5.0, max_batch: int = 32):
        self.twin, self.wait, self.max_batch = twin, wait_ms / 1000, max(1, max_batch)
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="usertwin-model", daemon=True)
        self.requests = self.batches = self.largest = 0  # what batching achieved: GET /v1/twin shows it
        self.cancelled = 0  # requests dropped before they ran: their clients had gone

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def stats(self) -> dict:
        return {"mode": self.mode, "requests": self.requests, "batches": self.batches, "largest": self.largest,
                "cancelled": self.cancelled, "wait_ms": self.wait * 1000, "max_batch": self.max_batch}

    async def run(self, job: Job) -> Result:
        loop = asyncio.get_running_loop()
        pending = Pending(job, loop, loop.create_future())
        self.queue.put(pending)
        try:
            return await pending.future
        except asyncio.CancelledError:  # the request's task was cancelled: nobody will read the result
            job.cancel()
            raise

    # -- the worker thread

    def _loop(self) -> None:
        while True:
            batch = self.collect()
            if batch is None:
                return
            batch = self.live(batch)
            if not batch:
                continue
            self.requests, self.batches = self.requests + len(batch), self.batches + 1
            self.largest = max(self.largest, len(batch))
            try:
                self._run(batch)
            except Exception as e:  # a bug or out of memory: every waiting request hears of it, the worker lives
                log.exception("batch of %d failed", len(batch))
                for p in batch:
                    fail(p, e)

    def live(self, batch: list[Pending]) -> list[Pending]:
        """The jobs whose clients still wait; the others are dropped before they run."""
        live = [p for p in batch if not p.job.gone.is_set()]
        for p in batch:
            if p.job.gone.is_set():
                p.loop.call_soon_threadsafe(p.future.cancel)  # its waiter, if any, ends too
        self.cancelled += len(batch) - len(live)
        return live

    def collect(self) -> list[Pending] | None:
        first = self.queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _run(self, batch: list[Pending]) -> None:
        ready = [p for p in batch if self.prepare(p)]
        self._generate([p for p in ready if p.job.gen is not None])
        self.score([p for p in ready if p.cands is not None])
        for p in ready:
            if not p.future.done():
                deliver(p, p.result)

    def prepare(self, p: Pending) -> bool:
        """Builds the prompt (and candidates); a request error goes back to its own request only."""
        try:
            p.ids = p.job.prompt()
            p.cands = p.job.candidates() if p.job.candidates else None
            room = max([p.job.gen.max_new_tokens if p.job.gen else 0] + [len(c) for c in p.cands or []])
            limit = self.twin.cfg.max_length
            if len(p.ids) + room > limit:
                what = "max_tokens" if p.job.gen else "the longest continuation"
                raise PromptTooLong(f"the prompt has {len(p.ids)} tokens and {what} {room} more; the twin's "
                                    f"max_length is {limit}: shorten the conversation, history or item")
        except Exception as e:
            fail(p, e)
            return False
        p.result = Result(len(p.ids))
        if p.job.stream:
            p.job.stream(("start",))
        return True

    def _generate(self, pending: list[Pending]) -> None:
        groups: dict[tuple, list[Pending]] = {}
        for p in pending:  # one generate call per setting: a call decodes every row the same way
            groups.setdefault(dataclasses.astuple(p.job.gen), []).append(p)
        for group in groups.values():
            gen = group[0].job.gen
            stream = [delta_to(p.job.stream, s) if p.job.stream else None
                      for p in group for s in range(gen.num_samples)]
            gone = [p.job.gone.is_set for p in group]
            texts = self.twin.generate_after([p.ids for p in group], gen, stream=stream, gone=gone)
            for p, samples in zip(group, texts):
                p.result.texts = [(t, self.twin.count_tokens(t)) for t in samples]

    def score(self, pending: list[Pending]) -> None:
        if not pending:
            return
        scores = self.twin.score_after([p.ids for p in pending], [p.cands for p in pending])
        for p, s in zip(pending, scores):
            p.result.scores = s


def delta_to(emit: Callable[[tuple], None], sample: int) -> Callable[[str], None]:
    return lambda text: emit(("delta", sample, text))


def deliver(p: Pending, value) -> None:
    p.loop.call_soon_threadsafe(_set, p.future, value, None)


def fail(p: Pending, error: BaseException) -> None:
    p.loop.call_soon_threadsafe(_set, p.future, None, error)


def _set(future: asyncio.Future, value, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
