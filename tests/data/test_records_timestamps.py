"""records.timestamps: parse_timestamp reads unix seconds (or milliseconds) and ISO 8601 text."""

from __future__ import annotations

import pytest

from usertwin.data import records as R


@pytest.mark.parametrize(
    "value, expected",
    [
        (964982703, 964982703.0),
        (964982703.5, 964982703.5),
        (964982703000, 964982703.0),
        ("964982703", 964982703.0),
        ("964982703123", 964982703.123),
        ("2000-07-30T18:45:03Z", 964982703.0),
        ("2000-07-30T18:45:03.250Z", 964982703.25),
        ("2000-07-31T02:45:03+08:00", 964982703.0),
        ("2000-07-30T13:45:03-0500", 964982703.0),
        ("2000-07-30 18:45:03", 964982703.0),
        ("2000-07-30 18:45", 964982700.0),
        ("2000-07-30", 964915200.0),
        ("2000/07/30", 964915200.0),
        ("2000/7/30", 964915200.0),
        (" 2000-07-30 ", 964915200.0),
    ],
)
def test_parse_timestamp(value, expected):
    assert R.parse_timestamp(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value, reason",
    [
        ("garbage", "not a date or time: 'garbage'"),
        ("", "empty timestamp"),
        ("2000-13-01", "not a valid date or time: '2000-13-01' (month must be in 1..12)"),
        (True, "True is a boolean, not a timestamp"),
        (None, "null is not a timestamp"),
        ([2000], "a list is not a timestamp"),
        (float("nan"), "nan is not a finite number"),
        ("nan", "not a date or time: 'nan'"),
        ("1e400", "'1e400' is not a finite number"),
        ("1_000", "not a date or time: '1_000'"),
    ],
)
def test_parse_timestamp_rejects(value, reason):
    with pytest.raises(ValueError) as err:
        R.parse_timestamp(value)
    assert str(err.value).startswith(reason)
