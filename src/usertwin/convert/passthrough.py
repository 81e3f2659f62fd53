"""Records already in the unified format: validated, then written back unchanged (as JSON Lines)."""

from __future__ import annotations

from pathlib import Path

from .. import records


def convert(raw: Path, skips, progress: bool = True):
    loaded = records.load(raw, on_error=skips.on_error)
    for problem in loaded.skipped:
        skips.count("invalid record")
        skips.examples.setdefault("invalid record", str(problem))
    for raw_record in _raw_records(raw, loaded):
        yield raw_record


def _raw_records(path, loaded):
    """The validated records as they are in the file (not re-serialised from our data classes)."""
    keep = {r.index for r in loaded.records}
    for index, raw, _ in records.iter_raw(path, on_error="skip"):
        if index in keep:
            yield raw
