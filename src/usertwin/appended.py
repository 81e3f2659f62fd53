"""Output files written a batch at a time (predictions, simulations, scenario generations): each batch's rows
appended and flushed, so a killed run keeps every finished batch and the next one resumes after the last
complete line; one writer per file."""

from __future__ import annotations

import json
from pathlib import Path

from usertwin.atomic import write_text
from usertwin.lock import acquire
from usertwin.rundir import RunDir

KEY = ("user", "target_index")  # a prediction row: one per user and target


def completed_rows(path: Path, key: tuple = KEY) -> dict:
    """The rows already in a (possibly cut-off) output file that is appended to per batch, by their `key`
    fields (predict: user and target; simulate: user and step). A torn last line (the process was killed
    while writing it) and anything after it are dropped; the file is then rewritten atomically, so a second
    crash here leaves either the old file or the repaired one."""
    done = {}
    if not path.is_file():
        return done
    good, torn = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
                k = tuple(row[name] for name in key)
            except (json.JSONDecodeError, TypeError, KeyError):
                torn = True
                break
            if not line.endswith("\n"):
                torn, line = True, line + "\n"
            if k in done:  # never twice
                torn = True
                continue
            done[k] = row
            good.append(line)
    if torn:
        write_text(path, "".join(good))
    return done


def output_lock(output: Path, what: str = "predictions file"):
    """One writer per output: a run directory is locked as a whole (training may write there too);
    a file elsewhere gets its own lock beside it."""
    run = RunDir(output.parent)
    if run.is_run():
        return acquire(run.lock, f"run directory {run.path}", hint="write elsewhere with -o")
    return acquire(output.with_name(f".{output.name}.lock"), f"{what} {output}", hint="write elsewhere with -o")


def progress_bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None)  # None: no bar written into a log file


def append_batches(output: Path, batches, rows_of, bar=None) -> int:
    """Appends the rows of each batch to `output` and flushes: appended, not atomic, by design — every flushed
    batch survives a kill, and the next run resumes after the last complete line (completed_rows drops a torn
    one). Returns the rows written."""
    written = 0
    with open(output, "a", encoding="utf-8") as f:
        for batch in batches:
            rows = rows_of(batch)
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            f.flush()
            written += len(rows)
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    return written
