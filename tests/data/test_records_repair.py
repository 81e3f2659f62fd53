"""records.repair: repair_text fixes hand-editing damage and names each change by line and column."""

from __future__ import annotations

import json

import pytest
from helpers import RECORD_FILES

from usertwin.data import records as R
from usertwin.errors import UsertwinError


def test_repair_text_fixes_the_unescaped_quote():
    text = (RECORD_FILES / "unescaped_quote.json").read_text(encoding="utf-8")
    fixed, changes = R.repair_text(text)
    assert changes == [
        'line 12, column 66: escaped an inner double quote in "他说"好看"就走了"',
        'line 12, column 69: escaped an inner double quote in "他说"好看"就走了"',
    ]
    raw = json.loads(fixed)
    assert raw[0]["task"]["task_behavior_collections"][0]["data"][0] == {
        "continuation_prefix": "霸王别姬: ", "continuation": '他说"好看"就走了', "timestamp": "2005-06-01"
    }
    # nothing else changed
    assert fixed.replace('\\"', '"') == text


@pytest.mark.parametrize(
    "text, fixed, changes",
    [
        ('{"t": "He said "hi", then left"}', '{"t": "He said \\"hi\\", then left"}',
         ['line 1, column 16: escaped an inner double quote in "He said "hi", then left"',
          'line 1, column 19: escaped an inner double quote in "He said "hi", then left"']),
        ('{"t": "我觉得"很好""}', '{"t": "我觉得\\"很好\\""}',
         ['line 1, column 11: escaped an inner double quote in "我觉得"很好""',
          'line 1, column 14: escaped an inner double quote in "我觉得"很好""']),
        ('[1,\n 2,\n]', "[1,\n 2\n]", ["line 2, column 3: removed a trailing comma before ']'"]),
        ('{"a": [1,], "b": 2,}', '{"a": [1], "b": 2}',
         ["line 1, column 9: removed a trailing comma before ']'",
          "line 1, column 19: removed a trailing comma before '}'"]),
        ('{"a": 1},\n{"b": 2}\n', '{"a": 1}\n{"b": 2}\n',
         ["line 1, column 9: removed a trailing comma after the end of the value"]),
        ('{"t": "a\tb"}', '{"t": "a\\tb"}', ["line 1, column 9: escaped a raw tab inside a string"]),
        ('\ufeff[1]', "[1]", ["line 1, column 1: removed a UTF-8 byte order mark (BOM)"]),
    ],
)
def test_repair_text_cases(text, fixed, changes):
    assert R.repair_text(text) == (fixed, changes)
    if "}\n{" in fixed:  # JSON Lines
        assert all(json.loads(line) for line in fixed.splitlines())
    else:
        json.loads(fixed)


@pytest.mark.parametrize(
    "text",
    [
        (RECORD_FILES / "small.json").read_text(encoding="utf-8"),
        (RECORD_FILES / "small.jsonl").read_text(encoding="utf-8"),
        '{"a": "x\\", \\"y", "b": ["\\"", ",", "]"], "c": "他说\\"好看\\""}',
        "[]",
    ],
)
def test_repair_text_leaves_valid_json_alone(text):
    assert R.repair_text(text) == (text, [])


def test_repair_text_jsonl_line_by_line():
    text = '{"a": 1}\n{"t": "他说"好看"就走了"}\r\n\n{"x": [1,]}\n{"bad": }\n'
    fixed, changes = R.repair_text(text)
    assert fixed == '{"a": 1}\n{"t": "他说\\"好看\\"就走了"}\r\n\n{"x": [1]}\n{"bad": }\n'
    assert changes == [
        'line 2, column 10: escaped an inner double quote in "他说"好看"就走了"',
        'line 2, column 13: escaped an inner double quote in "他说"好看"就走了"',
        "line 4, column 9: removed a trailing comma before ']'",
        "line 5, column 9: could not repair (Expecting value); left as is",
    ]


def test_repair_text_gives_up_clearly():
    with pytest.raises(UsertwinError) as err:
        R.repair_text('[{"a": }]')
    assert str(err.value).split("\n")[0] == (
        "cannot repair automatically: invalid JSON at line 1, column 8: Expecting value"
    )
