"""Tokenizers and token lengths.

Segments of a rendered sequence are tokenized one by one (no special tokens added) and concatenated, so the
token length of a sequence is exactly the sum of its segments' lengths: windows and truncation can be
planned from per-item lengths without rendering every sample, and a target's tokens are the same wherever
it appears.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from usertwin.errors import UsertwinError
from usertwin.hub import resolve_model


def _cache_root() -> Path:
    return Path(os.environ.get("USERTWIN_CACHE", Path.home() / ".cache" / "usertwin"))


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of `model` (anything `resolve_model` accepts)."""
    from transformers import AutoTokenizer

    src, gguf = resolve_model(model)
    try:
        if gguf is None:
            return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        return _gguf_tokenizer(src, gguf)
    except UsertwinError:
        raise
    except (OSError, ValueError) as e:
        raise UsertwinError(f"cannot load the tokenizer of model {model!r}: {e}".splitlines()[0]) from None


def _gguf_tokenizer(src: str, gguf: str):
    """Converting a GGUF's tokenizer is slow: do it once per file version and keep a tokenizer folder."""
    from transformers import AutoTokenizer

    gguf_path = Path(src) / gguf
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = _cache_root() / "tokenizers" / key
    if cached.is_dir():
        return AutoTokenizer.from_pretrained(cached)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=cached.parent))
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, cached)  # complete or absent, even with two processes racing
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def tokenizer_id(tokenizer) -> str:
    """A short fingerprint of a tokenizer (vocab + template), for cache keys."""
    if tokenizer is None:
        return "none"
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(str(len(tokenizer)).encode())
    h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    h.update(str(getattr(tokenizer, "eos_token", "")).encode())
    try:
        h.update(str(sorted(tokenizer.get_vocab().items())[:: max(1, len(tokenizer) // 512)]).encode())
    except Exception:  # some tokenizers have no vocab listing; the rest of the fingerprint stands
        pass
    return h.hexdigest()[:16]


def encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass
class ItemLengths:
    """Token (and character) lengths of one timeline's parts under one renderer.

    An item opens a sequence (or its conversation in it) with `prompt` + `target` tokens; a dialogue line
    right after the previous line of its conversation costs `follow` + `target` (only the new turns).
    """

    header: int
    join: int
    prompt: list  # per item: join-less prompt segments where the item opens a sequence or conversation
    target: list  # per item: continuation + end of turn
    header_chars: int
    join_chars: int
    prompt_chars: list
    target_chars: list
    follow: list | None = None  # per item: join-less prompt after the previous line of its conversation; None: opens
    follow_chars: list | None = None

    def block(self, i: int) -> int:
        return self.prompt[i] + self.target[i]

    def blocks(self) -> list[int]:
        return [p + t for p, t in zip(self.prompt, self.target)]

    def linked(self, i: int) -> bool:
        return self.follow is not None and self.follow[i] is not None

    def follow_blocks(self) -> list:
        """Per item: its tokens right after the previous line of its conversation (None where it opens one)."""
        return [self.follow[i] + self.target[i] if self.linked(i) else None for i in range(len(self.target))]

    def after(self, q: int | None, p: int) -> int:
        """Tokens of item p right after item q in a sequence (join not counted): only the turns new since q
        when both are lines of one conversation (the lines between then render as context), else its block."""
        if q is None or not q < p or not all(self.linked(r) for r in range(q + 1, p + 1)):
            return self.block(p)
        return sum(self.follow[r] + self.target[r] for r in range(q + 1, p + 1)) + (p - q - 1) * self.join

    def chars_before_target(self, q: int | None, p: int) -> int:
        """Characters of item p right after item q, up to where its target starts (join not counted)."""
        if q is None or not q < p or not all(self.linked(r) for r in range(q + 1, p + 1)):
            return self.prompt_chars[p]
        between = sum(self.follow_chars[r] + self.target_chars[r] for r in range(q + 1, p))
        return between + (p - q - 1) * self.join_chars + self.follow_chars[p]

    def sequence(self, items: list[int]) -> int:
        prev = [None] + list(items[:-1])
        return self.header + sum(self.after(q, p) for q, p in zip(prev, items)) + max(0, len(items) - 1) * self.join


def measure_all(renderer, tokenizer, timelines, progress: bool = False) -> dict:
    """user id -> ItemLengths. Each distinct text is tokenized once: the same movie, review or line
    rendered for many users costs one encoding."""
    timelines = list(timelines)
    return dict(zip((tl.user_id for tl in timelines), measure_each(renderer, tokenizer, timelines, progress)))


def measure_each(renderer, tokenizer, timelines: list, progress: bool = False) -> list:
    """The ItemLengths of each timeline, in order (one user may come several times: the same history with
    different new items)."""
    join = renderer.fmt.join
    if progress:
        from tqdm import tqdm

        # disable=None: off a terminal (a log file) a bar is a stuck "render: 0%" line, not progress
        timelines = tqdm(timelines, desc="render", unit="user", leave=False, mininterval=1.0, disable=None)
    plan = [_item_texts(renderer, tl) for tl in timelines]
    distinct = dict.fromkeys(t for header, prompts, targets, follows in plan
                             for t in (header, join, *_flat(prompts), *targets, *_flat(f for f in follows if f)))
    n = _token_counts(tokenizer, list(distinct))
    return [_lengths(n, join, *texts) for texts in plan]


def measure_next(renderer, tokenizer, base: ItemLengths, tl) -> ItemLengths:
    """The lengths of `tl` when it is base's timeline with one item more at the end (a simulated next item):
    only that item is rendered and tokenized, so asking one user about many items costs each item once, not
    the whole history each time. An item with context (a dialogue line renders after the earlier lines of its
    conversation) or a header that differs is measured whole."""
    pos = len(tl.items) - 1
    header = renderer.header(tl)
    if tl.items[pos].context or len(header) != base.header_chars or base.follow is not None:
        return measure_each(renderer, tokenizer, [tl])[0]
    *prompt, target = renderer.item_segments(tl, pos, first=True, target=True)
    texts = [seg.text for seg in prompt]
    n = _token_counts(tokenizer, list(dict.fromkeys([*texts, target.text])))
    return replace(
        base, prompt=[*base.prompt, sum(n[t] for t in texts)], target=[*base.target, n[target.text]],
        prompt_chars=[*base.prompt_chars, sum(map(len, texts))], target_chars=[*base.target_chars, len(target.text)])


def _flat(lists):
    return (t for texts in lists for t in texts)


def _lengths(n: dict, join: str, header: str, prompts, targets, follows) -> ItemLengths:
    linked = any(f is not None for f in follows)
    tokens = lambda texts: sum(n[t] for t in texts)  # noqa: E731
    chars = lambda texts: sum(len(t) for t in texts)  # noqa: E731
    return ItemLengths(
        header=n[header], join=n[join] if join else 0,
        prompt=[tokens(p) for p in prompts], target=[n[t] for t in targets],
        header_chars=len(header), join_chars=len(join),
        prompt_chars=[chars(p) for p in prompts], target_chars=[len(t) for t in targets],
        follow=[None if f is None else tokens(f) for f in follows] if linked else None,
        follow_chars=[None if f is None else chars(f) for f in follows] if linked else None)


def _item_texts(renderer, tl) -> tuple:
    """The header and, per item, the texts of its join-less prompt segments, of its target segment, and of
    the prompt segments it has right after the previous line of its conversation (None where it opens one)."""
    prompts, targets, follows = [], [], []
    for pos in range(len(tl.items)):
        *prompt, target = renderer.item_segments(tl, pos, first=True, target=True)
        prompts.append([seg.text for seg in prompt])
        targets.append(target.text)
        follows.append(renderer.follow_texts(tl, pos))
    return renderer.header(tl), prompts, targets, follows


def _token_counts(tokenizer, texts: list[str], chunk: int = 4096) -> dict[str, int]:
    counts = {}
    for i in range(0, len(texts), chunk):  # chunks keep memory flat on large files
        part = texts[i:i + chunk]
        counts.update(zip(part, (len(ids) for ids in encode_many(tokenizer, part))))
    return counts


def measure(renderer, tokenizer, tl) -> ItemLengths:
    """Lengths of every item of one timeline."""
    return measure_all(renderer, tokenizer, [tl])[tl.user_id]


# ---------------------------------------------------------------- sequences -> ids and labels

IGNORE = -100


@dataclass
class Encoded:
    """One tokenized sequence: loss only on target tokens (labels -100 elsewhere)."""

    input_ids: list
    labels: list
    targets: list  # [(position in timeline, first token, end token)] of every target

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class SequenceEncoder:
    """Rendered segments -> token ids, each distinct segment text tokenized once and reused."""

    def __init__(self, renderer, tokenizer):
        self.renderer = renderer
        self.tokenizer = tokenizer
        self._ids: dict[str, list] = {}

    def _lookup(self, texts: list[str]) -> list[list]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._ids]
        for t, ids in zip(missing, encode_many(self.tokenizer, missing)):
            self._ids[t] = ids
        return [self._ids[t] for t in texts]

    def encode(self, tl, items: list[int], targets) -> Encoded:
        rendered = self.renderer.render(tl, items, targets)
        ids_per_seg = self._lookup([s.text for s in rendered.segments])
        input_ids, labels, spans = [], [], []
        for seg, ids in zip(rendered.segments, ids_per_seg):
            if seg.kind == "target":
                spans.append((seg.position, len(input_ids), len(input_ids) + len(ids)))
                labels.extend(ids)
            else:
                labels.extend([IGNORE] * len(ids))
            input_ids.extend(ids)
        return Encoded(input_ids, labels, spans)
