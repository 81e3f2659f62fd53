"""Public datasets -> records in the unified format (JSON Lines), one module per dataset.

Each module exposes `convert(raw, skips) -> Iterator[dict]` yielding raw record dicts in a deterministic order;
`skips` is a `Skips` that either raises (on_error="stop") or counts (on_error="skip") every bad row.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import atomic_open
from ..errors import UsertwinError


class Skips:
    """Bad rows: stop with a message naming file, line and field, or skip and count by reason."""

    def __init__(self, on_error: str = "stop"):
        if on_error not in ("stop", "skip"):
            raise UsertwinError(f"on_error must be stop or skip, not {on_error!r}")
        self.on_error = on_error
        self.reasons: Counter = Counter()
        self.examples: dict[str, str] = {}

    def bad(self, reason: str, where: str, detail: str = "") -> None:
        msg = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.on_error == "stop":
            raise UsertwinError(msg + "; use --on-error skip to skip such rows and count them")
        self.reasons[reason] += 1
        self.examples.setdefault(reason, msg)

    def count(self, reason: str) -> None:
        """A row left out by design (e.g. an empty comment): always counted, never an error."""
        self.reasons[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())


@dataclass
class ConvertSummary:
    dataset: str
    output: str
    users: int = 0
    items: int = 0
    first: str | None = None
    last: str | None = None
    skipped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        span = f", {self.first[:10]} .. {self.last[:10]}" if self.first else ", no timestamps"
        text = f"{self.dataset}: {self.users} users, {self.items} items{span} -> {self.output}"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return text


def iso_from_unix(seconds: int | float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsertwinError(f"{path}: missing ({what})")
    if path.is_dir():
        raise UsertwinError(f"{path}: is a directory, expected {what}")
    return path


def check_columns(path: Path, found: list, required: list) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        raise UsertwinError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(found) or 'none'}"
                            f" (expected {', '.join(required)})")


def open_csv(path: Path, required: list, encoding: str = "utf-8-sig"):
    """A DictReader over a CSV whose header must hold `required`; yields (line number, row)."""
    f = open(path, newline="", encoding=encoding)
    reader = csv.DictReader(f)
    check_columns(path, list(reader.fieldnames or []), required)

    def rows():
        with f:
            prev_line = 1
            try:
                for row in reader:
                    yield prev_line + 1, row
                    prev_line = reader.line_num
            except UnicodeDecodeError as e:
                raise UsertwinError(f"{path}:{prev_line + 1}: not {encoding} text ({e.reason})") from None
            except csv.Error as e:
                raise UsertwinError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None

    return rows()


def record(user_id: str, profile: dict, description: str, language: str, ctype: str, items: list,
           **task_extra) -> dict:
    task = {"description": description, "language": language, **task_extra,
            "task_behavior_collections": [{"type": ctype, "data": items}]}
    return {"user_hash": user_id, "user": {"id": user_id, "profile": profile}, "task": task}


def user_sort_key(user_id: str):
    return (0, int(user_id), "") if user_id.isdigit() else (1, 0, user_id)


def _registry():
    from . import cornell, dmsc, douban_dmr, movielens, passthrough, seed_samples

    return {"movielens": movielens.convert, "dmsc": dmsc.convert, "douban-dmr": douban_dmr.convert,
            "cornell": cornell.convert, "seed-samples": seed_samples.convert, "records": passthrough.convert}


DATASETS = ("movielens", "dmsc", "douban-dmr", "cornell", "seed-samples", "records")


def convert_to_file(dataset: str, raw, output, *, on_error: str = "stop", progress: bool = True) -> ConvertSummary:
    registry = _registry()
    if dataset not in registry:
        raise UsertwinError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    raw = Path(raw)
    if not raw.exists():
        raise UsertwinError(f"{raw}: does not exist")
    skips = Skips(on_error)
    summary = ConvertSummary(dataset, str(output))
    with atomic_open(output) as f:
        for rec in registry[dataset](raw, skips, progress=progress):
            items = [it for c in rec["task"]["task_behavior_collections"] for it in c["data"]]
            summary.users += 1
            summary.items += len(items)
            for it in items:
                ts = it.get("timestamp")
                if isinstance(ts, str):
                    summary.first = ts if summary.first is None or ts < summary.first else summary.first
                    summary.last = ts if summary.last is None or ts > summary.last else summary.last
            f.write(json.dumps(rec, ensure_ascii=False))
            f.write("\n")
    summary.skipped = skips.reasons
    return summary


def progress_bar(it, on: bool, desc: str, unit: str = "row", total=None):
    if not on:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit=unit, total=total, mininterval=1.0, leave=False)
