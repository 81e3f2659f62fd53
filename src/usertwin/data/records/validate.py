"""`usertwin validate`: check a records file, optionally after writing a repaired copy, and summarise it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.atomic import atomic_open
from usertwin.data.records.format import MAX_LISTED
from usertwin.data.records.jsontext import decode_utf8, too_deep
from usertwin.data.records.load import check_on_error, check_path, load
from usertwin.data.records.repair import repair_text
from usertwin.errors import UsertwinError


@dataclass
class ValidationReport:
    records: int
    users: int
    items: int
    skipped: list = field(default_factory=list)  # list[Problem]
    skipped_items: list = field(default_factory=list)  # list[Problem]: items left out of kept records
    warnings: list = field(default_factory=list)  # list[str]
    repairs: list = field(default_factory=list)  # list[str], the changes made by --repair
    path: str | None = None
    repaired_to: str | None = None
    targets: int | None = None  # validated as a test file (targets=True): items without a continuation

    def summary_lines(self) -> list:
        lines = [f"OK: {self.records} records, {self.users} users, {self.items} items"]
        if self.targets is not None:
            lines[0] += f", {self.targets} of them targets (no continuation)"
        if self.repaired_to is not None:
            if self.repairs:
                n = len(self.repairs)
                lines.append(f"repaired {n} problem{'s' * (n != 1)}; wrote {self.repaired_to}:")
                lines += [f"  {c}" for c in self.repairs]
            else:
                lines.append(f"nothing to repair; wrote an unchanged copy to {self.repaired_to}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.skipped:
            n = len(self.skipped)
            lines.append(f"skipped {n} bad record{'s' * (n != 1)}:")
            lines += [f"  {p}" for p in self.skipped[:MAX_LISTED]]
            if n > MAX_LISTED:
                lines.append(f"  ... and {n - MAX_LISTED} more")
        if self.skipped_items:
            n, users = len(self.skipped_items), len({(p.record, p.user) for p in self.skipped_items})
            lines.append(f"skipped {n} bad item{'s' * (n != 1)} of {users} kept user{'s' * (users != 1)}:")
            lines += [f"  {p}" for p in self.skipped_items[:MAX_LISTED]]
            if n > MAX_LISTED:
                lines.append(f"  ... and {n - MAX_LISTED} more")
        return lines


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def validate_file(path, repair_out=None, on_error: str = "stop", targets: bool = False) -> ValidationReport:
    """Check a records file; with `repair_out`, first write a repaired copy there and check that copy.
    `targets`: a test file, whose items may have no continuation (see records.load)."""
    check_on_error(on_error)
    repairs: list = []
    target = path
    if repair_out is not None:
        p = check_path(path)
        out = Path(repair_out)
        if _same_file(p, out):
            raise UsertwinError(
                f"{repair_out}: the repaired copy must go to another file; repair never works in place"
            )
        if out.is_dir():
            raise UsertwinError(f"{repair_out}: is a directory; give a file name for the repaired copy")
        text = decode_utf8(path, p.read_bytes())
        try:
            fixed, repairs = repair_text(text)
        except UsertwinError as err:
            raise UsertwinError(f"{path}: {err}") from None
        except RecursionError:
            raise UsertwinError(too_deep(path)) from None
        with atomic_open(out) as f:
            f.write(fixed)
        target = repair_out
    result = load(target, on_error=on_error, targets=targets)
    from usertwin.data.timeline import (
        build_timelines,  # the same notes as prepare: merged users, sorted items
    )

    _, notes = build_timelines(result.records)
    return ValidationReport(
        records=len(result.records),
        users=len({r.user_id for r in result.records}),
        items=result.n_items,
        skipped=result.skipped,
        skipped_items=result.skipped_items,
        warnings=result.warnings + notes,
        repairs=repairs,
        path=str(path),
        repaired_to=None if repair_out is None else str(repair_out),
        targets=sum(not it.continuation for r in result.records for it in r.items) if targets else None,
    )
