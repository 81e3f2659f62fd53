"""Public datasets -> records in the unified format (JSON Lines), one module per dataset.

    from usertwin.data.convert import convert_to_file
    summary = convert_to_file("movielens", "ml-latest-small", "records.jsonl", on_error="skip")
    print(summary.line())  # movielens: 610 users, 100836 items, 1996-03-29 .. 2018-09-24 -> records.jsonl

`DATASETS` maps each dataset name to its module; a module's `NOTE`, when it has one, is printed after the
summary (what the user should know about the converted data). Every module exposes
`convert(raw_path, on_error="stop", *, progress=False) -> Iterator[dict]`, yielding raw record dicts (see
`usertwin.data.records`) one user at a time, users in a deterministic order (numeric ids numerically). on_error
is "stop" (a bad row raises UsertwinError naming file, line and field), "skip" (bad rows are left out and
counted), or a `Skips` that collects the counts (what `convert_to_file` passes).
"""

from __future__ import annotations

import json
from pathlib import Path

from usertwin.atomic import atomic_open
from usertwin.data.convert import (
    cornell,
    dmsc,
    douban_dmr,
    lovink_questionnaire,
    movielens,
    passthrough,
    persona_bench,
    realpersonachat,
    realtalk,
    seed_samples,
)
from usertwin.data.convert._common import ConvertSummary, Skips, iso_from_unix
from usertwin.data.records import parse_timestamp
from usertwin.errors import UsertwinError

__all__ = ["DATASETS", "ConvertSummary", "Skips", "convert_to_file"]

DATASETS = {
    "movielens": movielens,
    "dmsc": dmsc,
    "douban-dmr": douban_dmr,
    "cornell": cornell,
    "seed-samples": seed_samples,
    "realpersonachat": realpersonachat,
    "persona-bench": persona_bench,
    "realtalk": realtalk,
    "lovink-questionnaire": lovink_questionnaire,
    "records": passthrough,
}


def _iso(stamp) -> str | None:
    """An item's timestamp as ISO text for the summary's time range (None when it has none or is unreadable)."""
    if isinstance(stamp, str) and len(stamp) >= 10 and stamp[4] == "-" and stamp[:4].isdigit():
        return stamp
    if stamp is None or isinstance(stamp, bool):
        return None
    try:
        return iso_from_unix(parse_timestamp(stamp))
    except (ValueError, OverflowError):
        return None


def convert_to_file(dataset: str, raw, output, *, on_error: str = "stop", progress: bool = True) -> ConvertSummary:
    """Convert `raw` (a file or folder of `dataset`) into a records file (JSON Lines), atomically.

    The output is complete or absent: on an error nothing is left at `output`.
    """
    name = dataset.strip().lower().replace("_", "-")
    if name not in DATASETS:
        raise UsertwinError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    raw = Path(raw)
    if not raw.exists():
        raise UsertwinError(f"{raw}: does not exist (the raw {name} data to convert)")
    skips = Skips(on_error)
    if Path(output).is_dir():
        raise UsertwinError(f"{output}: is a directory; give the records file to write, e.g. {Path(output) / 'records.jsonl'}")
    try:
        return _convert(name, raw, output, skips, progress)
    except OSError as e:  # unreadable input, unwritable output, full disk: a message, not a traceback
        raise UsertwinError(f"{e.filename or output}: {e.strerror or e}") from None


def _convert(name: str, raw: Path, output, skips: Skips, progress: bool) -> ConvertSummary:
    summary = ConvertSummary(name, str(output))
    first = last = None
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    with atomic_open(output) as f:
        for rec in DATASETS[name].convert(raw, skips, progress=progress):
            summary.users += 1
            for coll in rec["task"]["task_behavior_collections"]:
                summary.items += len(coll["data"])
                for item in coll["data"]:
                    stamp = item.get("timestamp")
                    if stamp is None:
                        continue
                    iso = _iso(stamp)
                    if iso is not None:
                        if first is None or iso < first:
                            first = iso
                        if last is None or iso > last:
                            last = iso
            f.write(dumps(rec))
            f.write("\n")
    summary.first, summary.last = first, last
    summary.skip_reasons = skips.reasons
    summary.skipped = skips.total
    summary.skip_examples = dict(skips.examples)
    return summary
