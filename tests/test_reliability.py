"""Reliability: every write atomic (a source audit), caches that are never stale or half-written, predict and
prepare surviving kills, and security hygiene of the source. The lock file (one writer per output directory) is
tested in test_lock.py, atomic writes themselves in test_atomic.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, write_rating_users

from usertwin.cli import main
from usertwin.config import Config

SRC = ROOT / "src" / "usertwin"


def _records(path, sizes=(14, 10, 8), seed: int = 0):
    return write_rating_users(path, sizes, lambda u, i: f"Movie {(i + u) % 6} (2000) (Drama): ",
                              lambda u, i: (i * (u + 2) + seed) % 5 + 1)


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _py(code: str, *args, **kw):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(), capture_output=True,
                          text=True, **kw)


def _sources():
    return sorted(SRC.rglob("*.py"))


# ---------------------------------------------------------------- atomic outputs and the prepare cache


def _code_lines(path: Path):
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith(("'", '"')) else ""
        yield no, line, code


# every write that is not temp + rename, and why it may stay so
NOT_RENAMED = {
    ("appended.py", 'open(output, "a"'): "predictions and simulations (append_batches): appended per batch; resume drops a torn last line",
    ("trainer.py", 'open(self.run.logs, "a"'): "the training log (logs.jsonl): append-only JSON lines",
    ("lock.py", 'os.fdopen(fd, "w"'): "the lock file: created with O_EXCL; a torn one is read as stale",
    ("lock.py", "json.dump(me, f)"): "(the same lock file)",
}


def test_every_file_write_goes_through_temp_and_rename():
    """An audit of the source: files are written with usertwin.atomic (temp name + rename) or, for folders
    (checkpoints, best/, tokenizer caches), into a temporary folder that is renamed; the two append-only
    files are listed above with their reason."""
    raw_open = re.compile(r"""(?<![\w.])(os\.fd)?open\([^)]*,\s*["'][wax]b?\+?["']""")
    found = []
    for path in _sources():
        if path.name == "atomic.py":
            continue
        lines = list(_code_lines(path))
        for i, (no, line, code) in enumerate(lines):
            where = f"{path.relative_to(SRC)}:{no}: {line.strip()}"
            if any(path.name == f and s in code for f, s in NOT_RENAMED):
                continue
            if raw_open.search(code):
                found.append(where)
            if re.search(r"\.(write_text|write_bytes)\(|torch\.save\(|\.to_csv\(|shelve|sqlite3\.connect", code):
                if "sqlite3.connect" in code and "tmp" in code:  # a scratch database in a temporary folder
                    continue
                found.append(where)
            if re.search(r"\bjson\.dump\(", code) and not any("atomic_open(" in c for _, _, c in lines[max(0, i - 3):i]):
                found.append(where)
            if re.search(r"\.(save_pretrained|save_state)\(", code) and not re.search(r"\((str\()?tmp\b", code):
                found.append(where)
            if re.search(r"\.savefig\(", code) and "BytesIO" not in "".join(c for _, _, c in lines[max(0, i - 5):i]) \
                    and "buf" not in code:
                found.append(where)
    assert not found, "writes that are not temp + rename:\n" + "\n".join(found)




def _prep(data, tok, cache, **kw):
    from usertwin.sequences.prepare import prepare

    cfg = Config(**{"data": str(data), "model": "test-tokenizer", "max_length": 256, "cache_dir": str(cache), **kw})
    return prepare(cfg, tokenizer=tok, progress=False)


def _shape(prep):
    return ({sp: [dataclasses.asdict(x) for x in seqs] for sp, seqs in prep.sequences.items()},
            {sp: dataclasses.asdict(st) for sp, st in prep.stats.items()}, prep.splits)


def test_cache_key_covers_content_shaping_keys_and_tokenizer(tmp_path, tokenizer, plain_tokenizer):
    from usertwin.sequences.prepare import cache_key

    data = _records(tmp_path / "r.jsonl")
    cache = tmp_path / "cache"
    first = _prep(data, tokenizer, cache)
    assert not first.from_cache and len(list(cache.glob("prepared-*.json"))) == 1
    again = _prep(data, tokenizer, cache)
    assert again.from_cache and _shape(again) == _shape(first)
    assert _prep(data, tokenizer, cache, learning_rate=0.5, output_dir=str(tmp_path / "x")).from_cache  # not shaping
    for key, value in (("max_length", 200), ("val_ratio", 0.3), ("seed", 1), ("unit", "sample"),
                       ("history_strategy", "random"), ("prompt_style", "detailed"), ("ablation", "history_only"),
                       ("window_history_fraction", 0.25)):
        assert not _prep(data, tokenizer, cache, **{key: value}).from_cache, key
    assert not _prep(data, plain_tokenizer, cache).from_cache  # another tokenizer (no chat template)
    # the same size, the same mtime, other content: still a miss (the key hashes the bytes)
    st = data.stat()
    text = data.read_text()
    changed = text.replace('"continuation": "1.0"', '"continuation": "2.0"', 1)
    assert changed != text and len(changed) == len(text)
    data.write_text(changed)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = _prep(data, tokenizer, cache)
    assert not fresh.from_cache
    # one key per (content, shaping keys, tokenizer); every input of the key changes it
    cfg = Config(data=str(data), model="m")
    base = cache_key(cfg, "h", "t")
    assert len({base, cache_key(cfg, "h2", "t"), cache_key(cfg, "h", "t2"),
                cache_key(dataclasses.replace(cfg, max_context_turns=3), "h", "t")}) == 4
    assert cache_key(dataclasses.replace(cfg, data="elsewhere.jsonl", cache_dir="c"), "h", "t") == base


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong_shape", "other_key", "other_users"])
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, tokenizer, damage):
    data = _records(tmp_path / "r.jsonl")
    cache = tmp_path / "cache"
    good = _prep(data, tokenizer, cache)
    (path,) = cache.glob("prepared-*.json")
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\xff\xfe\x00garbage" * 10)
    elif damage == "empty":
        path.write_text("")
    elif damage == "wrong_shape":
        path.write_text(json.dumps({"key": json.loads(text)["key"], "version": 2, "unit": "timeline"}))
    elif damage == "other_key":  # a valid cache of other data copied under this name
        payload = json.loads(text)
        payload["key"] = "0" * 20
        path.write_text(json.dumps(payload))
    else:  # the right key but timelines that do not fit (e.g. edited by hand)
        payload = json.loads(text)
        payload["splits"]["u0"] = payload["splits"]["u0"][:-1]
        path.write_text(json.dumps(payload))
    rebuilt = _prep(data, tokenizer, cache)
    assert not rebuilt.from_cache and _shape(rebuilt) == _shape(good)
    assert any("prepare cache" in w and "rebuilt" in w for w in rebuilt.warnings)
    assert _prep(data, tokenizer, cache).from_cache  # the rebuilt file is whole again


def test_prepare_interrupted_while_writing_the_cache_leaves_no_cache(tmp_path, tokenizer, monkeypatch):
    import usertwin.sequences.prepare as prepare_mod

    data = _records(tmp_path / "r.jsonl")
    cache = tmp_path / "cache"
    real_dump = json.dump

    def torn_dump(obj, f, **kw):
        f.write(json.dumps(obj)[:100])  # half a file, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_mod.json, "dump", torn_dump)
    with pytest.raises(KeyboardInterrupt):
        _prep(data, tokenizer, cache)
    monkeypatch.setattr(prepare_mod.json, "dump", real_dump)
    assert list(cache.iterdir()) == []  # neither the cache nor its temporary file
    prep = _prep(data, tokenizer, cache)
    assert not prep.from_cache and _prep(data, tokenizer, cache).from_cache


KILL_IN_CACHE_WRITE = """
import json, os, signal, sys
from tests.conftest import make_tokenizer
import usertwin.sequences.prepare as p
from usertwin.config import Config

def dump(obj, f, **kw):
    f.write(json.dumps(obj)[:100]); f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

p.json.dump = dump
p.prepare(Config(data=sys.argv[1], model="test-tokenizer", max_length=256, cache_dir=sys.argv[2]),
          tokenizer=make_tokenizer(), progress=False)
"""


def test_prepare_sigkilled_while_writing_the_cache_leaves_no_usable_cache(tmp_path, tokenizer):
    data = _records(tmp_path / "r.jsonl")
    cache = tmp_path / "cache"
    run = _py(KILL_IN_CACHE_WRITE, data, cache, cwd=ROOT, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert not list(cache.glob("prepared-*.json"))  # only the temporary file, under another name
    (tmp,) = [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    os.utime(tmp, (time.time() - 7200, time.time() - 7200))  # an old one is swept by the next write
    prep = _prep(data, tokenizer, cache)
    assert not prep.from_cache and not prep.warnings
    assert _prep(data, tokenizer, cache).from_cache
    assert [p.name for p in cache.iterdir()] == [f"prepared-{prep_key(data, tokenizer)}.json"]


def prep_key(data, tok):
    from usertwin.sequences.prepare import cache_key, file_hash
    from usertwin.text.tokens import tokenizer_id

    cfg = Config(data=str(data), model="test-tokenizer", max_length=256)
    return cache_key(cfg, file_hash(data), tokenizer_id(tok))


# ---------------------------------------------------------------- predict resumes after a kill


KILL_DURING_PREDICT = """
import os, signal, sys
import usertwin.eval.predict as p
from usertwin.cli import main

real, seen = p._row, [0]
def row(*a, **kw):
    seen[0] += 1
    if seen[0] > int(os.environ["KILL_AFTER_ROWS"]):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-batch: the rows of earlier batches are on disk
    return real(*a, **kw)
p._row = row
sys.exit(main(sys.argv[1:]))
"""


# static: writes of one batch of 2, killed in the third; continuous: writes of QUEUED (8) batches of 1, killed in
# the second
@pytest.mark.parametrize("batching, batch, kill_after, written", [("static", 2, 5, 4), ("continuous", 1, 9, 8)])
def test_predict_killed_mid_run_resumes_to_the_uninterrupted_rows(tmp_path, tiny_model_dir, capsys, batching, batch,
                                                                  kill_after, written):
    data = _records(tmp_path / "r.jsonl", sizes=(14, 14, 14, 14, 14))  # 2 test targets per user
    common = ["predict", "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "256",
              "--no-progress", "--cache_dir", str(tmp_path / "c"), "--max_new_tokens", "4", "--batch_size", str(batch),
              "--batching", batching]
    full = tmp_path / "full.jsonl"
    assert main([*common, "-o", str(full)]) == 0
    want = [json.loads(x) for x in full.read_text().splitlines()]
    assert len(want) == 10
    out = tmp_path / "killed.jsonl"
    run = subprocess.run([sys.executable, "-c", KILL_DURING_PREDICT, *common, "-o", str(out)],
                         env=dict(_env(), KILL_AFTER_ROWS=str(kill_after)), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert len(out.read_text().splitlines()) == written  # the whole writes before the one that died
    assert (tmp_path / f".{out.name}.lock").exists()  # the dead owner's lock
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"user": "u2", "target_index": 1')  # and a line torn by the kill
    capsys.readouterr()
    assert main([*common, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no longer running; removed the stale lock" in err
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert got == want  # same targets, same order, no duplicates, same numbers
    assert not (tmp_path / f".{out.name}.lock").exists()
    assert main([*common, "-o", str(out)]) == 0 and out.read_text() == full.read_text()  # nothing left to do


def test_predict_resume_drops_duplicate_and_torn_rows_atomically(tmp_path):
    from usertwin.appended import completed_rows

    out = tmp_path / "p.jsonl"
    rows = [{"user": "a", "target_index": 1}, {"user": "a", "target_index": 2}, {"user": "a", "target_index": 1}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"user": "b", "targ')
    assert set(completed_rows(out)) == {("a", 1), ("a", 2)}
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows[:2]
    before = out.stat().st_mtime_ns
    assert set(completed_rows(out)) == {("a", 1), ("a", 2)} and out.stat().st_mtime_ns == before  # whole: left alone


# ---------------------------------------------------------------- security hygiene


def test_source_has_no_unsafe_loading_or_evaluation():
    """No pickle, no torch.load without weights_only=True, no yaml.load (only safe_load), no eval/exec,
    no trust_remote_code=True, no safe_serialization=False anywhere in usertwin."""
    bad = []
    for path in _sources():
        for no, line, code in _code_lines(path):
            where = f"{path.relative_to(SRC)}:{no}: {line.strip()}"
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(where)
            if re.search(r"\byaml\.(load|load_all|unsafe_load|full_load)\(", code) or "yaml.Loader" in code:
                bad.append(where)
            if re.search(r"(?<![\w.])(eval|exec)\(", code) or re.search(r"\b(pickle|dill|marshal|shelve)\b", code):
                bad.append(where)
            if re.search(r"trust_remote_code\s*=\s*True|safe_serialization\s*=\s*False", code):
                bad.append(where)
            if re.search(r"__import__\(|importlib\.import_module\(\s*(cfg|config|raw|item|rec)", code):
                bad.append(where)
    assert not bad, "\n".join(bad)


def test_trust_remote_code_is_off_unless_asked():
    assert Config().trust_remote_code is False
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"trust_remote_code=([\w.]+)", text):
            value = m.group(1)  # passed through from the user's config, or off
            assert value in ("trust_remote_code", "False") or value.endswith("cfg.trust_remote_code"), (path.name, value)
