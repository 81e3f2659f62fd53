"""Records already in the unified format (JSON list, one record, or JSON Lines): validated, re-emitted as JSONL.

Validation is `usertwin.data.records.load(path, on_error)`: with "stop" any invalid record stops the conversion
(the message lists file, record, user and field); with "skip" invalid records are left out and counted
("invalid record"). The valid records are written back with their content unchanged: they are taken as
they stand in the file (`records.iter_raw`), not rebuilt with `records.record_to_raw`, because the rebuilt
form would drop what the data classes do not hold (extra task keys such as MovieLens' `rating_scale`,
empty prefixes) and would turn date timestamps into text the loader had to parse again.
"""

from __future__ import annotations

from pathlib import Path

from usertwin.data import records
from usertwin.data.convert._common import Skips


def convert(raw_path, on_error="stop", *, progress: bool = False):
    path, skips = Path(raw_path), Skips.of(on_error)
    loaded = records.load(path, on_error=skips.on_error)
    for problem in loaded.skipped:
        skips.count("invalid record")
        skips.examples.setdefault("invalid record", str(problem))
    keep = {r.index for r in loaded.records}
    del loaded
    return (raw for index, raw, _line in records.iter_raw(path, on_error="skip") if index in keep)
