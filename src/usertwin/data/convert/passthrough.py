"""Records already in the unified format (JSON list, one record, or JSON Lines): validated, re-emitted as JSONL.

Validation is `usertwin.data.records.load(path, on_error)`: with "stop" any invalid record stops the conversion
(the message lists file, record, user and field); with "skip" invalid records are left out and counted
("invalid record"), and so are the invalid items of valid records ("invalid item"). The valid records are
written back with their content unchanged (less any invalid item): they are taken as they stand in the file (`records.iter_raw`), not rebuilt with `records.record_to_raw`, because the rebuilt
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
    left_out: dict = {}  # record index -> (collection, data index) of its items left out
    for problem in loaded.skipped_items:
        skips.count("invalid item")
        skips.examples.setdefault("invalid item", str(problem))
        left_out.setdefault(problem.record, set()).add(problem.slot)
    keep = {r.index for r in loaded.records}
    del loaded
    return (_without(raw, left_out.get(index)) for index, raw, _line in records.iter_raw(path, on_error="skip")
            if index in keep)


def _without(raw: dict, slots: set | None) -> dict:
    """The raw record without the items at `slots` (collection index, data index); the rest as it stands."""
    if not slots:
        return raw
    colls = raw["task"]["task_behavior_collections"]
    kept = [{**c, "data": [it for di, it in enumerate(c["data"]) if (ci, di) not in slots]}
            for ci, c in enumerate(colls)]
    # a collection all of whose items were left out goes too: an empty collection is not valid
    return {**raw, "task": {**raw["task"], "task_behavior_collections": [c for c in kept if c["data"]]}}
