"""Schema checks: one parsed record becomes a Record, or every Problem found in it (record, user, field)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from usertwin.data.records.format import ITEM_KEYS, ROLES, Item, Record, got_text, is_rating, shown_value
from usertwin.data.records.timestamps import in_future, parse_timestamp, today_iso
from usertwin.errors import where

_COLLECTIONS = "task.task_behavior_collections"
_ID_FIELDS = "user_hash, user.id, user.hash or user.profile.name"
_MISSING = object()  # tells a missing key from one set to null, which is allowed for optional fields


def user_id_of(raw: dict, index: int) -> str:
    """The user's id: first non-empty of user_hash, user.id, user.hash, user.profile.name; else record-N."""
    found = _declared_id(raw)
    return f"record-{index}" if found is None else found


def _declared_id(raw) -> str | None:
    """The first non-empty of user_hash, user.id, user.hash, user.profile.name, or None."""
    if isinstance(raw, dict):
        user = raw.get("user")
        profile = user.get("profile") if isinstance(user, dict) else None
        for value in (
            raw.get("user_hash"),
            user.get("id") if isinstance(user, dict) else None,
            user.get("hash") if isinstance(user, dict) else None,
            profile.get("name") if isinstance(profile, dict) else None,
        ):
            if value is None or isinstance(value, (dict, list)):
                continue
            text = str(value)
            if text.strip():
                return text
    return None


@dataclass
class Problem:
    """One thing wrong with a file: where (file, line/column or record/user/field) and what."""

    path: object
    message: str
    line: int | None = None
    column: int | None = None
    record: int | None = None
    user: str | None = None
    field: str | None = None
    all_problems: list = dataclasses.field(default_factory=list)  # every problem of a skipped record (list[Problem])
    explanation: str = ""  # longer text: for a syntax error the offending line, a caret and the likely cause
    item: int | None = None  # a skipped item: its index among all items of the record, in file order
    slot: tuple | None = None  # a skipped item: (collection index, index in that collection's data)

    def __str__(self) -> str:
        loc = where(
            self.path, line=self.line, column=self.column, record=self.record, user=self.user, field=self.field,
            item=self.item,
        )
        return f"{loc}: {self.message}" if loc else self.message


def build_record(raw, index: int, path, dropped: list | None = None, targets: bool = False) -> tuple[Record | None, list]:
    """The Record of one raw record, or (None, every problem found in it). With `dropped` (on_error skip), a bad
    item is left out of the record instead of rejecting it: one Problem per left-out item goes to `dropped`
    (its `item` and `slot` say which). The record is still rejected for a problem outside its items (no user
    id, not an object, a bad task or collection) or when no item is left. `targets`: the record is a scenario's
    test record, whose items may have no continuation (read as "")."""
    uid = user_id_of(raw, index)
    declared = _declared_id(raw)
    problems: list = []

    def bad(fld, message):
        problems.append(Problem(path, message, record=index, user=declared, field=fld))

    if not isinstance(raw, dict):
        bad(None, f"a record must be a JSON object {{...}}, got {got_text(raw)}")
        return None, problems

    profile: dict = {}
    user = raw.get("user")
    if declared is None and (user is None or isinstance(user, dict)):
        bad("user" if user is None else "user.id", f"missing; a record needs a user id ({_ID_FIELDS})")
    if user is not None:
        if not isinstance(user, dict):
            bad("user", f"must be an object, got {got_text(user)}")
        else:
            prof = user.get("profile")
            if isinstance(prof, dict):
                profile = prof
            elif prof is not None:
                bad("user.profile", f"must be an object, got {got_text(prof)}")
            personality = user.get("personality")
            structured = personality.get("structured") if isinstance(personality, dict) else None
            if isinstance(structured, dict) and structured:
                dims = profile.get("dimensions")
                if dims is None or isinstance(dims, dict):
                    merged = dict(dims or {})
                    for key, value in structured.items():
                        merged.setdefault(key, value)
                    profile = {**profile, "dimensions": merged}

    task = raw.get("task", _MISSING)
    description, language, colls, scale, role, choice_sets = "", None, None, None, "user", {}
    if task is _MISSING:
        bad("task", "missing")
    elif not isinstance(task, dict):
        bad("task", f"must be an object, got {got_text(task)}")
    else:
        description = task.get("description")
        if description is None:
            description = ""
        elif not isinstance(description, str):
            bad("task.description", f"must be a string, got {got_text(description)}")
        language = task.get("language")
        if language is not None and not isinstance(language, str):
            bad("task.language", f"must be a string such as \"en\" or \"zh\", got {got_text(language)}")
        colls = task.get("task_behavior_collections", _MISSING)
        if colls is _MISSING:
            bad(_COLLECTIONS, "missing")
            colls = None
        elif not isinstance(colls, list):
            bad(_COLLECTIONS, f"must be a list of collections, got {got_text(colls)}")
            colls = None
        elif not colls:
            bad(_COLLECTIONS, "empty: a record needs at least one collection")
        scale = _rating_scale(task.get("rating_scale"), bad)
        role = _role(task.get("role"), bad)
        for key in ("likert", "choices"):
            if (listed := _choice_list(task.get(key), f"task.{key}", bad)) is not None:
                choice_sets[key] = listed

    items: list = []
    item_problems: list = []  # the problems of each bad item (a list each)
    position = 0
    for ci, coll in enumerate(colls or ()):
        if not isinstance(coll, dict):
            bad(f"{_COLLECTIONS}[{ci}]", f"a collection must be an object, got {got_text(coll)}")
            continue
        ctype = coll.get("type")
        if ctype is None:
            ctype = ""
        elif not isinstance(ctype, str):
            bad(f"{_COLLECTIONS}[{ci}].type", f"must be a string, got {got_text(ctype)}")
        data = coll.get("data", _MISSING)
        if data is _MISSING:
            bad(f"{_COLLECTIONS}[{ci}].data", "missing")
            continue
        if not isinstance(data, list):
            bad(f"{_COLLECTIONS}[{ci}].data", f"must be a list of items, got {got_text(data)}")
            continue
        if not data:
            bad(f"{_COLLECTIONS}[{ci}].data", "empty collection: a collection needs at least one item")
            continue
        for di, it in enumerate(data):
            found: list = []
            bad_item = _item_reporter(found, path, index, declared, position, (ci, di))
            item = _build_item(it, ctype, position, ci, di, bad_item, targets)
            if item is not None and scale and is_rating(ctype) and item.continuation and _off_scale(item.continuation, scale):
                bad_item(f"{_COLLECTIONS}[{ci}].data[{di}].continuation",
                         f"{shown_value(item.continuation)} is not on the rating scale "
                         f"(task.rating_scale: {min(scale):g} .. {max(scale):g})")
            if found:
                item_problems.append(found)
            elif item is not None:
                items.append(item)
            position += 1
    if dropped is None or problems or not items:
        # the record is rejected: every problem of its items is one of its problems
        problems += [dataclasses.replace(p, item=None, slot=None) for found in item_problems for p in found]
        if problems:
            return None, problems
        return Record(index, uid, profile, description, language, items, role, choice_sets, _sorted(scale)), []
    dropped.extend(merge_problems(found) for found in item_problems)
    return Record(index, uid, profile, description, language, items, role, choice_sets, _sorted(scale)), []


def _item_reporter(found: list, path, index: int, user, position: int, slot: tuple):
    """The `bad` of one item: its problems go to `found`, naming the item's position and slot."""
    def bad(fld, message):
        found.append(Problem(path, message, record=index, user=user, field=fld, item=position, slot=slot))
    return bad


def _role(value, bad) -> str:
    """task.role, "user" when absent; an unknown role is refused, since the prompt could not name it."""
    if value is None:
        return "user"
    choices = ", ".join(ROLES)
    if not isinstance(value, str):
        bad("task.role", f"must be a string, one of {choices}; got {got_text(value)}")
        return "user"
    if value not in ROLES:
        bad("task.role", f"unknown role {shown_value(value)}; choose one of {choices}")
        return "user"
    return value


def _choice_list(value, fld: str, bad):
    """task.likert / task.choices / an item's choices: two or more distinct non-empty strings, or None."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) < 2
            or any(not isinstance(x, str) or not x.strip() for x in value)):
        bad(fld, f"must be a list of two or more non-empty strings such as [\"不同意\", \"同意\"], got {got_text(value)}")
        return None
    if len({x.strip() for x in value}) < len(value):
        bad(fld, f"lists an answer twice: {shown_value(value)}")
        return None
    return [x.strip() for x in value]


def _rating_scale(value, bad):
    """The allowed ratings of task.rating_scale (a list of numbers) as a set, or None."""
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in value)):
        bad("task.rating_scale", f"must be a list of numbers such as [1, 2, 3, 4, 5], got {got_text(value)}")
        return None
    return {float(x) for x in value}


def _sorted(scale: set | None) -> tuple | None:
    return tuple(sorted(scale)) if scale else None


def _off_scale(text: str, scale: set) -> bool:
    try:
        return float(text) not in scale
    except ValueError:
        return True


def _build_item(it, ctype, position, ci, di, bad, targets: bool = False):
    """The Item of one raw item, or None after reporting its problems through `bad`. With `targets` a
    continuation may be missing or null (a target to predict): the Item's continuation is then ""."""
    if type(it) is not dict and not isinstance(it, dict):
        bad(f"{_COLLECTIONS}[{ci}].data[{di}]", f"an item must be an object, got {got_text(it)}")
        return None
    ok = True
    cont = it.get("continuation", _MISSING)
    if targets and (cont is _MISSING or cont is None):
        cont = ""
    elif type(cont) is not str:
        ok = False
        if cont is _MISSING:
            bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation", "missing")
        else:
            hint = ""
            if isinstance(cont, (int, float)) and not isinstance(cont, bool) and math.isfinite(cont):
                hint = f" (write it in quotes: {json.dumps(str(cont))})"
            bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation", f"must be a string, got {got_text(cont)}{hint}")
    elif not cont or cont.isspace():
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation", "empty continuation")

    prefix = it.get("continuation_prefix")
    if prefix is None:
        prefix = ""
    elif type(prefix) is not str:
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].continuation_prefix", f"must be a string, got {got_text(prefix)}")

    context = it.get("context")
    if context is None:
        context = []
    elif type(context) is not list:
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].context", f"must be a list of turns, got {got_text(context)}")
    elif context and not _context_ok(context):
        ok = False
        _context_problems(context, f"{_COLLECTIONS}[{ci}].data[{di}].context", bad)

    stamp = it.get("timestamp")
    seconds = text = None
    if stamp is not None:
        try:
            seconds = parse_timestamp(stamp)
            text = stamp if type(stamp) is str else str(stamp)
        except ValueError as err:
            ok = False
            bad(f"{_COLLECTIONS}[{ci}].data[{di}].timestamp", f"cannot read {shown_value(stamp)}: {err}")
        else:
            if in_future(seconds):
                ok = False
                bad(f"{_COLLECTIONS}[{ci}].data[{di}].timestamp",
                    f"{shown_value(stamp)} is in the future (after today, {today_iso()}); check the year, and that "
                    "unix times are seconds or milliseconds (not microseconds)")

    meta = it.get("metadata")
    if meta is None:
        meta = {}
    elif type(meta) is not dict:
        ok = False
        bad(f"{_COLLECTIONS}[{ci}].data[{di}].metadata", f"must be an object, got {got_text(meta)}")
    if not ITEM_KEYS.issuperset(it):
        extras = {k: v for k, v in it.items() if k not in ITEM_KEYS}
        if type(meta) is dict:
            meta = {**extras, **meta}
    if "choices" in it and _choice_list(it["choices"], f"{_COLLECTIONS}[{ci}].data[{di}].choices", bad) is None:
        ok = False
    if not ok:
        return None
    return Item(cont, prefix, context, seconds, text, ctype, meta, position)


def _context_ok(context: list) -> bool:
    for turn in context:
        if type(turn) is not dict or type(turn.get("content")) is not str:
            return False
        if type(turn.get("role")) is not str and type(turn.get("source")) is not str:
            return False
    return True


def _context_problems(context: list, base: str, bad) -> None:
    for ti, turn in enumerate(context):
        if not isinstance(turn, dict):
            bad(f"{base}[{ti}]", f"a turn must be an object with \"content\" and \"role\" or \"source\", got {got_text(turn)}")
            continue
        content = turn.get("content", _MISSING)
        if content is _MISSING:
            bad(f"{base}[{ti}].content", "missing")
        elif not isinstance(content, str):
            bad(f"{base}[{ti}].content", f"must be a string, got {got_text(content)}")
        role, source = turn.get("role"), turn.get("source")
        if not isinstance(role, str) and not isinstance(source, str):
            if role is None and source is None:
                bad(f"{base}[{ti}]", "needs a \"role\" or \"source\" string (who said it)")
            else:
                name = "role" if role is not None else "source"
                bad(f"{base}[{ti}].{name}", f"must be a string, got {got_text(turn.get(name))}")


def merge_problems(problems: list) -> Problem:
    """One Problem standing for all problems of a skipped record."""
    first = problems[0]
    message = first.message
    if len(problems) > 1:
        rest = "; ".join(f"field {p.field}: {p.message}" if p.field else p.message for p in problems[1:4])
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        message += f" (+{len(problems) - 1} more: {rest}{more})"
    return Problem(
        first.path, message, line=first.line, column=first.column, record=first.record, user=first.user,
        field=first.field, all_problems=list(problems), item=first.item, slot=first.slot,
    )
