"""Continuous batching for `usertwin serve` (--batching continuous, the default): the model thread keeps one
running batch (Twin.decoder) and, between its decode steps, takes the requests that have arrived since -- it
builds their prompts, scores their candidates at once and prefills their generations into the running batch --
so a request never waits for another's whole generation. Rows leave as they finish, or at the next step once
their client has gone. Each request's texts are those static batching (and Twin.generate_after alone) gives it:
greedy token for token, sampling with the same seed + i per sample."""

from __future__ import annotations

import functools
import logging

from usertwin.serve.batching import Batcher, Pending, deliver, delta_to, fail
from usertwin.twin.continuous import Request

log = logging.getLogger("usertwin.serve")


class ContinuousBatcher(Batcher):
    mode = "continuous"

    def __init__(self, twin, wait_ms: float = 5.0, max_batch: int = 32):
        super().__init__(twin, wait_ms, max_batch)
        self.decoder = twin.decoder()  # here, not in the thread: a model it cannot batch is refused at start
        self.running: dict[int, Pending] = {}  # generating requests, by id
        self.joined = 0  # requests that joined a batch already decoding
        self.given_up = 0  # requests whose rows left mid-generation: their clients had gone

    def stats(self) -> dict:
        d = self.decoder
        return {**super().stats(), "steps": d.steps, "most_rows": d.most_rows, "row_steps": d.row_steps, "joined_running": self.joined,
                "given_up": self.given_up, "running": len(self.running)}

    # -- the worker thread

    def _loop(self) -> None:
        stopping = False
        while True:
            if not self.running:
                if stopping:
                    return
                batch = self.collect()  # idle: wait for a first request, then wait_ms for more
                if batch is None:
                    return
            else:
                batch, stopping = self._drain(stopping)
            batch = self.live(batch)
            if batch:
                self._admit(batch)
            if self.running:
                self._guarded(self.decoder.step)

    def _drain(self, stopping: bool) -> tuple[list[Pending], bool]:
        """What has arrived, without waiting (the running rows must not), up to max_batch running requests."""
        batch = []
        while not stopping and len(self.running) + len(batch) < self.max_batch and not self.queue.empty():
            item = self.queue.get_nowait()
            if item is None:
                stopping = True  # finish the running rows, take nothing new
            else:
                batch.append(item)
        return batch, stopping

    def _admit(self, batch: list[Pending]) -> None:
        self.requests, self.batches = self.requests + len(batch), self.batches + 1
        if self.running:
            self.joined += len(batch)
        ready = [p for p in batch if self.prepare(p)]
        scoring = [p for p in ready if p.cands is not None]
        try:
            self.score(scoring)
        except Exception as e:  # a bug or out of memory: these requests hear of it, the running ones go on
            log.exception("scoring %d requests failed", len(scoring))
            for p in ready:
                fail(p, e)
            return
        gens = [p for p in ready if p.job.gen is not None]
        for p in ready:
            if p.job.gen is None:
                deliver(p, p.result)
        self.running.update({id(p): p for p in gens})
        self.largest = max(self.largest, len(self.running))
        self._guarded(functools.partial(self.decoder.join, [self._request(p) for p in gens]))

    def _request(self, p: Pending) -> Request:
        gen = p.job.gen
        stream = [delta_to(p.job.stream, s) for s in range(gen.num_samples)] if p.job.stream else None
        return Request(p.ids, gen, functools.partial(self._done, p), stream=stream, gone=p.job.gone.is_set)

    def _done(self, p: Pending, samples: list[list[int]]) -> None:
        del self.running[id(p)]
        if p.job.gone.is_set():
            self.given_up += 1
        texts = [self.twin.text_of(ids) for ids in samples]
        p.result.texts = [(t, self.twin.count_tokens(t)) for t in texts]
        deliver(p, p.result)

    def _guarded(self, work) -> None:
        """A prefill or step that fails (a bug, out of memory) fails every running request; the worker lives."""
        try:
            work()
        except Exception as e:
            log.exception("decoding %d requests failed", len(self.running))
            self.decoder.abandon()
            for p in self.running.values():
                fail(p, e)
            self.running.clear()
