"""Item timestamps: unix seconds or ISO 8601 text in the file, unix seconds (UTC) in memory."""

from __future__ import annotations

import datetime as _dt
import math
import re
import time

from usertwin.data.records.format import json_kind

FUTURE_SLACK = 2 * 86400  # timestamps up to this many seconds after now pass (clock and time zone skew)
_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_TS_RE = re.compile(
    r"(\d{4})([-/])(\d{1,2})\2(\d{1,2})"  # date: YYYY-MM-DD or YYYY/MM/DD
    r"(?:(?:[Tt]|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"  # time: HH:MM[:SS[.fff]]
    r"\s*(?:(Z|z|UTC|GMT)|([+-])(\d{2})(?::?(\d{2}))?)?)?"  # zone: Z or +08:00 / +0800 / +08
)
_TS_HELP = "use unix seconds or ISO 8601 such as 2000-07-30T18:45:03Z or 2000-07-30"


def parse_timestamp(value) -> float:
    """A timestamp as unix seconds (UTC).

    Accepts unix seconds as int / float / numeric string (values above 1e11 are milliseconds), ISO 8601
    (`2000-07-30T18:45:03Z`, `2000-07-30 18:45:03+08:00`, fractional seconds), `YYYY-MM-DD`, `YYYY/MM/DD`
    and `YYYY-MM-DD HH:MM[:SS]`; times without a zone are UTC. Raises ValueError with a short reason.
    """
    kind = type(value)
    if kind is int or kind is float:
        return _from_number(float(value), value)
    if kind is str:
        return _from_text(value)
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a timestamp")
    if isinstance(value, (int, float)):
        return _from_number(float(value), value)
    if isinstance(value, _dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=_UTC)).timestamp()
    if isinstance(value, _dt.date):
        return _dt.datetime(value.year, value.month, value.day, tzinfo=_UTC).timestamp()
    if isinstance(value, str):
        return _from_text(str(value))
    raise ValueError(f"{json_kind(value)} is not a timestamp ({_TS_HELP})")


def _from_number(x: float, original) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{original!r} is not a finite number")
    if x > 1e11 or x < -1e11:  # milliseconds
        x /= 1000.0
    return x


def _from_text(text: str) -> float:
    s = text.strip()
    if not s:
        raise ValueError("empty timestamp")
    if s[0] in "0123456789+-." and "_" not in s:
        try:
            x = float(s)
        except ValueError:
            pass
        else:
            return _from_number(x, text)
    m = _TS_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"not a date or time: {text!r} ({_TS_HELP})")
    year, _, month, day, hh, mm, ss, frac, utc, sign, oh, om = m.groups()
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    tz = _UTC
    if sign:
        offset = _dt.timedelta(hours=int(oh), minutes=int(om or 0))
        tz = _dt.timezone(offset if sign == "+" else -offset)
    try:
        moment = _dt.datetime(
            int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0), micro, tzinfo=tz
        )
    except ValueError as err:
        raise ValueError(f"not a valid date or time: {text!r} ({err})") from None
    return (moment - _EPOCH).total_seconds()


def in_future(seconds: float) -> bool:
    """Whether unix `seconds` lies after now (plus a little slack for clocks and time zones)."""
    return seconds > 1.6e9 and seconds > time.time() + FUTURE_SLACK


def today_iso() -> str:
    return _dt.datetime.now(_UTC).date().isoformat()
