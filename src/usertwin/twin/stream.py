"""Streaming generation: each row's text sent in pieces as it is generated (`usertwin serve`'s stream=true),
decoded as it grows and cleaned as Engine.generate cleans the whole text, so that the pieces add up to the
final text."""

from __future__ import annotations

from typing import Callable


class Tap:
    """A transformers streamer for a whole batch: each generated row's new token goes to its RowText. Model row
    i of prompt j (n rows a prompt: one when greedy) is the text of its samples i, i + n, ... (`stream`: one
    callable or None per sample, num_samples a prompt)."""

    def __init__(self, engine, stream: list, num_samples: int, n: int):
        self.rows = []
        for j in range(len(stream) // num_samples):
            for i in range(n):
                emits = [e for e in stream[j * num_samples + i:(j + 1) * num_samples:n] if e]
                self.rows.append(RowText(engine, emits) if emits else None)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, tok in zip(self.rows, value.reshape(-1).tolist()):
            if row:
                row.add(tok)

    def end(self) -> None:
        for row in self.rows:
            if row:
                row.end()


class RowText:
    """One generated row: each callable of `emits` is called with each new piece of its cleaned text."""

    def __init__(self, engine, emits: list[Callable[[str], None]]):
        self.engine, self.emits = engine, emits
        self.ids: list[int] = []
        self.sent, self.done = "", False

    def add(self, tok: int) -> None:
        if self.done:
            return
        if tok in (self.engine.eot_id, self.engine.pad_id):
            self.done = True
            return
        self.ids.append(tok)
        text = self.engine.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest of it
            return
        eot, pad = self.engine.renderer.fmt.eot, self.engine.tokenizer.pad_token or "\0"
        clean = (text.split(eot)[0] if eot else text).replace(pad, "").lstrip()
        # trailing spaces are held back: the final text is stripped, and they may yet be followed by words
        self._send(clean.rstrip())

    def end(self) -> None:
        """The rest of the text, as the engine decodes the whole row (what generation returns)."""
        self._send(self.engine.decode(self.ids))

    def _send(self, text: str) -> None:
        if text.startswith(self.sent) and len(text) > len(self.sent):
            for emit in self.emits:
                emit(text[len(self.sent):])
            self.sent = text
