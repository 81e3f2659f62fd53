"""Streaming generation: each row's text sent in pieces as it is generated (`usertwin serve`'s stream=true),
decoded as it grows and cleaned as Engine.generate cleans the whole text, so that the pieces add up to the
final text."""

from __future__ import annotations

from typing import Callable


class Tap:
    """A transformers streamer for a whole batch: each output row's new token goes to its RowText."""

    def __init__(self, rows: list):
        self.rows, self.prompt_seen = rows, False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, tok in zip(self.rows, value.reshape(-1).tolist()):
            if row:
                row.add(tok)

    def end(self) -> None:
        pass


class RowText:
    """One generated row: `emit(piece)` is called with each new piece of its cleaned text."""

    def __init__(self, engine, emit: Callable[[str], None]):
        self.engine, self.emit = engine, emit
        self.ids: list[int] = []
        self.sent, self.done = "", False

    def add(self, tok: int) -> None:
        if self.done:
            return
        if tok == self.engine.eot_id:
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

    def finish(self, final: str) -> None:
        self._send(final)

    def _send(self, text: str) -> None:
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text
