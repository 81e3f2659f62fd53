"""Load at scale: a 200,000-item records file through convert + prepare with bounded memory, and the
two degenerate shapes -- 1,000 users with one item each, one user with 20,000 items -- with exact counts.

What is streamed and what is not (asserted below as it is): the records file is read line by line and the
converted file is written record by record, but `convert records` validates the whole file first and
`prepare` holds every timeline, its token lengths and the windows in memory by design. So peak memory grows
linearly with the data -- about 850 bytes per item, measured -- and stays far from the input's size
times Python's object overhead. What must never happen is growth with the square of a user's length:
a sample's history is cut to max_length as it is built (one user with 20,000 items, unit sample).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, write_records

from usertwin.config import Config
from usertwin.data.convert import convert_to_file
from usertwin.sequences.prepare import prepare

GIB = 1 << 30


def rating_raws(users: int, per_user: int, varied: bool = True):
    """Raw records of short rating items, one at a time (write_records streams them to disk)."""
    for u in range(users):
        items = [{"continuation_prefix": f"Movie {(i + u) % 50}: " if varied else "Movie: ",
                  "continuation": f"{(i * 7 + u) % 5 + 1}.0" if varied else "3.0",
                  "timestamp": 1_000_000 + 60 * i} for i in range(per_user)]
        yield {"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
               "task": {"description": "Predict ratings.", "language": "en",
                        "task_behavior_collections": [{"type": "movie_rating", "data": items}]}}


MEASURE = """
import json, resource, sys, time
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests", sys.argv[1] + "/tests/sequences"]
from tests.conftest import make_tokenizer
from helpers import write_records
from test_scale import rating_raws
from usertwin.config import Config
from usertwin.data.convert import convert_to_file
from usertwin.sequences.prepare import prepare

def peak():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so it would report pytest's own size
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def now():  # resident set now (the peak so far may be a transient of the imports)
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

users, per, tmp = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tok = make_tokenizer()
out = {"base": now()}
t = time.perf_counter()
raw = write_records(f"{tmp}/raw.jsonl", rating_raws(users, per))
out["after_write"], out["raw_bytes"] = peak(), __import__("os").path.getsize(raw)
s = convert_to_file("records", raw, f"{tmp}/records.jsonl", progress=False)
out["after_convert"], out["converted"] = peak(), [s.users, s.items]
prep = prepare(Config(data=f"{tmp}/records.jsonl", model="tiny", max_length=512, cache_dir=f"{tmp}/cache"),
               tokenizer=tok, progress=False)
out["after_prepare"] = peak()
out["targets"] = {sp: st.targets for sp, st in prep.stats.items()}
out["seconds"] = round(time.perf_counter() - t, 1)
print(json.dumps(out))
"""


def _measure(tmp_path, users, per_user):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    d = tmp_path / f"{users}x{per_user}"
    d.mkdir()
    run = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(users), str(per_user), str(d)],
                         env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_200k_items_convert_and_prepare_with_bounded_memory(tmp_path):
    big = _measure(tmp_path, 2000, 100)  # 200,000 items
    small = _measure(tmp_path, 200, 100)  # 20,000 items: the same code at a tenth of the size
    assert big["converted"] == [2000, 200_000] and small["converted"] == [200, 20_000]
    assert big["targets"] == {"train": 140_000, "val": 30_000, "test": 30_000}
    grow_big = big["after_prepare"] - big["base"]
    grow_small = small["after_prepare"] - small["base"]
    per_item = (grow_big - grow_small) / 180_000
    print(f"\n200k items ({big['raw_bytes'] / 1e6:.1f} MB of JSONL): peak RSS +{grow_big / 2**20:.0f} MiB over "
          f"{big['base'] / 2**20:.0f} MiB after imports (convert: +{(big['after_convert'] - big['base']) / 2**20:.0f}"
          f" MiB); 20k items: +{grow_small / 2**20:.0f} MiB; {per_item:.0f} bytes per extra item; "
          f"{big['seconds']} s")
    assert grow_big < 1.5 * GIB  # generous: measured +162 MiB on a 2-core, 24 GiB machine
    # linear, with a small constant: the items are held (see the module docstring), nothing more per item
    assert per_item < 3000
    # the writer streams: generating the 17 MB file adds next to nothing
    assert big["after_write"] - big["base"] < 64 * 2**20


def _prep(path, tok, **kw):
    cfg = Config(**{"data": str(path), "model": "tiny", "max_length": 512, "cache_dir": str(path.parent / "c"),
                    **kw})
    return prepare(cfg, tokenizer=tok, progress=False, use_cache=False)


def _counts(prep):
    return {sp: (st.users, st.targets, st.sequences) for sp, st in prep.stats.items()}


def test_1000_users_with_one_item_each(tmp_path, tokenizer):
    raw = write_records(tmp_path / "raw.jsonl", (
        {"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
         "task": {"description": "Predict ratings.", "language": "en",
                  "task_behavior_collections": [{"type": "movie_rating", "data": [
                      {"continuation_prefix": f"Movie {u}: ", "continuation": "3.0", "timestamp": 1_000_000}]}]}}
        for u in range(1000)))
    out = tmp_path / "records.jsonl"
    s = convert_to_file("records", raw, out, progress=False)
    assert (s.users, s.items) == (1000, 1000)
    for unit in ("timeline", "sample"):
        # time split: a lone item is its user's oldest, so a train target; no history anywhere
        prep = _prep(out, tokenizer, unit=unit)
        assert _counts(prep) == {"train": (1000, 1000, 1000), "val": (0, 0, 0), "test": (0, 0, 0)}, unit
        assert all(st.history_items == 0 for st in prep.stats.values())
        assert any("1000 user(s) have a single item" in w for w in prep.warnings)
        # held-out users: 70 / 15 / 15 % of the users
        prep = _prep(out, tokenizer, unit=unit, split_mode="user")
        assert _counts(prep) == {"train": (700, 700, 700), "val": (150, 150, 150), "test": (150, 150, 150)}, unit


def test_one_user_with_20000_items(tmp_path, tokenizer):
    raw = write_records(tmp_path / "raw.jsonl", rating_raws(1, 20_000, varied=False))
    out = tmp_path / "records.jsonl"
    s = convert_to_file("records", raw, out, progress=False)
    assert (s.users, s.items) == (1, 20_000)
    prep = _prep(out, tokenizer)
    ln = prep.lengths["u0"]
    blocks = set(ln.blocks())
    assert len(blocks) == 1  # identical items: every block has the same length, so the counts follow
    b, h, j, m = blocks.pop(), ln.header, ln.join, 512
    first = 1 + (m - h - b) // (b + j)  # targets of the first window (no earlier item)
    hist = (m // 2) // (b + j)  # later windows: history up to window_history_fraction (0.5) of max_length
    per = 1 + (m - h - b - hist * (b + j)) // (b + j)  # targets of every later window
    windows = {"train": 1 + -(-(14_000 - first) // per), "val": -(-3000 // per), "test": -(-3000 // per)}
    assert _counts(prep) == {sp: (1, n, windows[sp]) for sp, n in (("train", 14_000), ("val", 3000), ("test", 3000))}
    seen = sorted(t for seqs in prep.sequences.values() for w in seqs for t in w.targets)
    assert seen == list(range(20_000))  # every item a target exactly once
    assert all(h + sum(ln.block(i) for i in w.items) + j * (len(w.items) - 1) <= m
               for seqs in prep.sequences.values() for w in seqs)
    # unit sample: one sample per target, its history cut to the most recent items that fit
    prep = _prep(out, tokenizer, unit="sample")
    assert _counts(prep) == {"train": (1, 14_000, 14_000), "val": (1, 3000, 3000), "test": (1, 3000, 3000)}
    fit = (m - h - b) // (b + j)
    assert prep.stats["train"].history_items == sum(min(t, fit) for t in range(14_000))
    assert prep.stats["val"].history_items == prep.stats["test"].history_items == 3000 * fit
    assert prep.stats["test"].history_dropped == sum(t - fit for t in range(17_000, 20_000))


@pytest.mark.parametrize("unit", ["sample"])
def test_a_long_timeline_does_not_take_quadratic_memory(tmp_path, unit):
    """20,000 items of one user, unit sample: uncut histories would hold ~10^8 positions (+3.6 GiB measured
    before histories were cut as they are built); now the peak stays small."""
    raw = write_records(tmp_path / "raw.jsonl", rating_raws(1, 20_000, varied=False))
    code = ("import json, resource, sys; sys.path.insert(0, sys.argv[1]);"
            "from tests.conftest import make_tokenizer; from usertwin.config import Config;"
            "from usertwin.sequences.prepare import prepare; tok = make_tokenizer();"
            "base = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() // 1024;"
            f"prepare(Config(data=sys.argv[2], model='tiny', max_length=512, unit={unit!r}), tokenizer=tok,"
            " progress=False, use_cache=False);"
            "hwm = [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')][0];"
            "print((hwm - base) * 1024)")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", code, str(ROOT), str(raw)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    grew = int(run.stdout.strip().splitlines()[-1])
    print(f"\none user, 20,000 items, unit {unit}: peak RSS +{grew / 2**20:.0f} MiB")
    assert grew < 512 * 2**20
