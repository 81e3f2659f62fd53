"""The unified records format: load, validate, repair and write records (JSON list, single record, or JSON
Lines). Callers import from here; the modules are the seams: `format` (Item, Record, writing), `timestamps`,
`jsontext` (decoding and syntax hints), `repair`, `schema` (record and item checks), `load`, `validate`.

`records.load` is the function, not the module of that name: importing the function below rebinds the package
attribute after the module is loaded. Reach the module's other names with `from usertwin.data.records.load
import ...`."""

from usertwin.data.records.format import (
    ITEM_KEYS,
    MAX_LISTED,
    ROLES,
    SKIP_HINT,
    Item,
    Record,
    is_rating,
    record_to_raw,
    write,
)
from usertwin.data.records.load import LoadResult, from_raw, iter_raw, load
from usertwin.data.records.repair import repair_text
from usertwin.data.records.schema import Problem, user_id_of
from usertwin.data.records.timestamps import FUTURE_SLACK, parse_timestamp
from usertwin.data.records.validate import ValidationReport, validate_file

__all__ = [
    "FUTURE_SLACK",
    "ITEM_KEYS",
    "MAX_LISTED",
    "SKIP_HINT",
    "Item",
    "LoadResult",
    "Problem",
    "ROLES",
    "Record",
    "ValidationReport",
    "is_rating",
    "iter_raw",
    "from_raw",
    "load",
    "parse_timestamp",
    "record_to_raw",
    "repair_text",
    "user_id_of",
    "validate_file",
    "write",
]
