"""One error type for every problem a user can fix; the CLI prints it without a traceback."""

from __future__ import annotations


class UsertwinError(Exception):
    """A problem with the user's input or setup, with a message that says where and what to do."""


def where(path=None, *, line=None, column=None, record=None, user=None, field=None, item=None) -> str:
    """Format a location as `file:line:column, record 3 (user 'u1'), item 2, field task...data[2].continuation`
    (`item`: the item's index among all items of its record, in file order)."""
    parts = []
    if path is not None:
        loc = str(path)
        if line is not None:
            loc += f":{line}"
            if column is not None:
                loc += f":{column}"
        parts.append(loc)
    if record is not None:
        rec = f"record {record}"
        if user is not None:
            rec += f" (user {user!r})"
        parts.append(rec)
    elif user is not None:
        parts.append(f"user {user!r}")
    if item is not None:
        parts.append(f"item {item}")
    if field:
        parts.append(f"field {field}")
    return ", ".join(parts)
