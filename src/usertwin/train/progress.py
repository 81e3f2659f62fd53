"""How far training is, on the main process: a tqdm bar on a terminal; elsewhere (a log file, a batch job, a
captured pipe) one plain line per logging step, since a redrawn bar there is either lost or a wall of control
characters, a line when an evaluation starts, and a line at least every minute while a long step or evaluation
would otherwise leave the log silent."""

from __future__ import annotations

import sys
import threading
import time

QUIET_SECONDS = 60.0  # off a terminal, the longest a running job stays silent


def _clock(seconds: float) -> str:
    from tqdm import tqdm

    return tqdm.format_interval(max(seconds, 0))


def _speed(tokens_per_second: float) -> str:
    # a CPU run of a real model is below 10 tokens/s: whole numbers would read "0"
    return f"{tokens_per_second:,.0f}" if tokens_per_second >= 10 else f"{tokens_per_second:.2g}"


class Progress:
    """Global steps done out of `total`; `done` of them before this process started (a resumed run)."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, terminal: bool | None = None,
                 quiet_seconds: float = QUIET_SECONDS):
        self.total, self.done, self.enabled = total, done, enabled
        self.first, self.start = done, time.time()
        self.bar = None
        self.doing, self.said = "training", time.time()
        self._stop = threading.Event()
        if enabled and (sys.stderr.isatty() if terminal is None else terminal):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True)
        elif enabled:
            threading.Thread(target=self._pulse, args=(quiet_seconds,), name="usertwin-progress",
                             daemon=True).start()

    def restart_clock(self) -> None:
        """Speed and ETA count from here (after the evaluation before training)."""
        self.start = time.time()

    def phase(self, doing: str) -> None:
        """What the run does now, for the lines a long silence gets: "training", "evaluating ..."."""
        self.doing = doing

    def _pulse(self, quiet_seconds: float) -> None:
        while not self._stop.wait(min(quiet_seconds, 5.0)):
            if time.time() - self.said >= quiet_seconds:
                self.write(f"step {self.done}/{self.total}: still {self.doing} (elapsed "
                           f"{_clock(time.time() - self.start)})")

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def logged(self, loss: float, target_tokens_per_second: float) -> None:
        """The loss of the last logging interval and its speed: the bar's postfix, or a plain line."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {_speed(target_tokens_per_second)} target tok/s")
        elif self.enabled:
            self.write(self.line(loss, target_tokens_per_second))

    def line(self, loss: float, target_tokens_per_second: float) -> str:
        elapsed = time.time() - self.start
        ran = self.done - self.first
        eta = elapsed / ran * (self.total - self.done) if ran else float("nan")
        return (f"step {self.done}/{self.total}: loss {loss:.4f}, {_speed(target_tokens_per_second)} target tokens/s, "
                f"elapsed {_clock(elapsed)}, ETA {_clock(eta) if ran else '?'}")

    def write(self, text: str) -> None:
        """A message that must not tear the bar apart: tqdm clears the bar, prints, and redraws it."""
        self.said = time.time()
        if self.bar is None:
            print(text, flush=True)
        else:
            self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
