"""Reliability (issue 6, items 2-5): atomic outputs, caches that are never stale or half-written, predict and
prepare surviving kills, one writer per output directory (lock file), and security hygiene of the source."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from usertwin.cli import main
from usertwin.config import Config
from usertwin.errors import UsertwinError
from usertwin.lock import acquire
from usertwin.rundir import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "usertwin"


def _records(path, sizes=(14, 10, 8), seed: int = 0):
    with open(path, "w", encoding="utf-8") as f:
        for u, n in enumerate(sizes):
            items = [{"continuation_prefix": f"Movie {(i + u) % 6} (2000) (Drama): ",
                      "continuation": f"{(i * (u + 2) + seed) % 5 + 1}.0", "timestamp": 1_000_000 + 60 * i}
                     for i in range(n)]
            f.write(json.dumps({"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
                                "task": {"description": "Predict ratings.", "language": "en",
                                         "task_behavior_collections": [{"type": "movie_rating", "data": items}]}})
                    + "\n")
    return path


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _py(code: str, *args, **kw):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(), capture_output=True,
                          text=True, **kw)


def _sources():
    return sorted(SRC.rglob("*.py"))


# ---------------------------------------------------------------- item 2: atomic outputs and the prepare cache


def _code_lines(path: Path):
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0] if not line.lstrip().startswith(("'", '"')) else ""
        yield no, line, code


# every write that is not temp + rename, and why it may stay so
NOT_RENAMED = {
    ("predict.py", 'open(output, "a"'): "predictions: appended per batch; resume drops a torn last line",
    ("trainer.py", 'open(self.run_dir.logs, "a"'): "the training log (logs.jsonl): append-only JSON lines",
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


def test_atomic_open_leaves_the_old_file_on_error(tmp_path):
    from usertwin.atomic import atomic_open, write_json

    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write('{"half": ')
            raise RuntimeError("disk died")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left


def test_every_config_key_is_declared_shaping_or_not():
    from usertwin.data.prepare import _NOT_SHAPING, _SHAPING

    keys = {f.name for f in dataclasses.fields(Config)}
    assert not set(_SHAPING) & set(_NOT_SHAPING)
    assert keys - set(_SHAPING) - set(_NOT_SHAPING) == set(), "new config keys: add them to prepare._SHAPING or _NOT_SHAPING"
    assert set(_SHAPING) | set(_NOT_SHAPING) <= keys


def _prep(data, tok, cache, **kw):
    from usertwin.data.prepare import prepare

    cfg = Config(**{"data": str(data), "model": "test-tokenizer", "max_length": 256, "cache_dir": str(cache), **kw})
    return prepare(cfg, tokenizer=tok, progress=False)


def _shape(prep):
    return ({sp: [dataclasses.asdict(x) for x in seqs] for sp, seqs in prep.sequences.items()},
            {sp: dataclasses.asdict(st) for sp, st in prep.stats.items()}, prep.splits)


def test_cache_key_covers_content_shaping_keys_and_tokenizer(tmp_path, tokenizer, plain_tokenizer):
    from usertwin.data.prepare import cache_key

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
    import usertwin.data.prepare as prepare_mod

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
import usertwin.data.prepare as p
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
    from usertwin.data.prepare import cache_key, file_hash
    from usertwin.text.tokens import tokenizer_id

    cfg = Config(data=str(data), model="test-tokenizer", max_length=256)
    return cache_key(cfg, file_hash(data), tokenizer_id(tok))


# ---------------------------------------------------------------- item 3: predict resumes after a kill


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


def test_predict_killed_mid_run_resumes_to_the_uninterrupted_rows(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl", sizes=(14, 14, 14, 14, 14))  # 2 test targets per user
    common = ["predict", "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "256",
              "--no-progress", "--cache_dir", str(tmp_path / "c"), "--max_new_tokens", "4", "--batch_size", "2"]
    full = tmp_path / "full.jsonl"
    assert main([*common, "-o", str(full)]) == 0
    want = [json.loads(x) for x in full.read_text().splitlines()]
    assert len(want) == 10
    out = tmp_path / "killed.jsonl"
    run = subprocess.run([sys.executable, "-c", KILL_DURING_PREDICT, *common, "-o", str(out)],
                         env=dict(_env(), KILL_AFTER_ROWS="5"), capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 4  # two whole batches of 2; the third died
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
    from usertwin.eval.predict import _done

    out = tmp_path / "p.jsonl"
    rows = [{"user": "a", "target_index": 1}, {"user": "a", "target_index": 2}, {"user": "a", "target_index": 1}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"user": "b", "targ')
    assert _done(out) == {("a", 1), ("a", 2)}
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows[:2]
    before = out.stat().st_mtime_ns
    assert _done(out) == {("a", 1), ("a", 2)} and out.stat().st_mtime_ns == before  # whole: left alone


# ---------------------------------------------------------------- item 4: one writer per output directory


HOLD = """
import sys, time
from usertwin.lock import acquire
lock = acquire(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(lock_path, seconds=60):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path), str(seconds)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_claim_is_refused_with_the_owner_and_what_to_do(tmp_path):
    lock_path = tmp_path / "run" / LOCK_NAME
    proc = _holder(lock_path)
    try:
        owner = json.loads(lock_path.read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname() and owner["started"]
        with pytest.raises(UsertwinError) as e:
            acquire(lock_path, "output_dir run")
        msg = str(e.value)
        assert "output_dir run is in use by another usertwin run" in msg
        assert f"pid {proc.pid}" in msg and f"kill {proc.pid}" in msg and "another output directory" in msg
    finally:
        proc.kill()
        proc.wait()
    with acquire(lock_path) as lock:  # its owner is gone: stale, cleared
        assert json.loads(lock_path.read_text())["pid"] == os.getpid() and lock.held
    assert not lock_path.exists()


RACE = """
import os, sys, time
from usertwin.errors import UsertwinError
from usertwin.lock import acquire
go = float(sys.argv[2])
while time.time() < go:
    pass
try:
    lock = acquire(sys.argv[1])
except UsertwinError:
    print("refused", flush=True)
else:
    print("won", flush=True)
    time.sleep(1.5)
"""


def test_concurrent_claims_exactly_one_wins(tmp_path):
    lock_path = tmp_path / LOCK_NAME
    go = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(lock_path), str(go)], env=_env(),
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["refused", "refused", "refused", "won"]
    assert not lock_path.exists()  # released when the winner exited


def test_stale_locks_are_cleared_with_a_warning(tmp_path):
    lock_path = tmp_path / LOCK_NAME
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    said = []
    lock_path.write_text(json.dumps({"pid": dead.pid, "host": host, "started": "yesterday"}))
    acquire(lock_path, warn=said.append).release()
    assert len(said) == 1 and f"pid {dead.pid}" in said[0] and "no longer running" in said[0]
    # a live pid that now belongs to a younger process (pid reuse) is stale too
    lock_path.write_text(json.dumps({"pid": os.getppid(), "host": host, "proc_start": "1", "started": "x"}))
    acquire(lock_path, warn=said.append).release()
    assert len(said) == 2
    # a lock file torn by a crash between create and write, old enough
    lock_path.write_text('{"pid": 12')
    os.utime(lock_path, (time.time() - 60, time.time() - 60))
    acquire(lock_path, warn=said.append).release()
    assert len(said) == 3 and "unreadable lock" in said[2]
    # another host's lock cannot be checked: refused, with the file to delete if that run is gone
    lock_path.write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "started": "x"}))
    with pytest.raises(UsertwinError, match=f"on host elsewhere.*if that run is gone, delete {re.escape(str(lock_path))}"):
        acquire(lock_path, warn=said.append)
    assert len(said) == 3 and lock_path.exists()


def test_lock_is_released_by_release_garbage_collection_and_exit(tmp_path):
    lock_path = tmp_path / LOCK_NAME
    lock = acquire(lock_path)
    with pytest.raises(UsertwinError, match="this process"):
        acquire(lock_path)
    lock.release()
    lock.release()
    assert not lock_path.exists()
    acquire(lock_path)  # dropped at once: garbage-collected, released
    assert not lock_path.exists()
    run = _py("import sys; from usertwin.lock import acquire; l = acquire(sys.argv[1]); raise SystemExit(3)",
              lock_path)
    assert run.returncode == 3 and not lock_path.exists()


def _train_args(data, model, out, *extra):
    return ["train", "--data", str(data), "--model", str(model), "--output_dir", str(out), "--max_length", "256",
            "--batch_tokens", "256", "--no-progress", "--seed", "7", *extra]


def test_train_locks_its_run_dir_and_releases_it(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = _records(tmp_path / "r.jsonl", sizes=(8, 8))
    out = tmp_path / "run"
    # another run holds the directory: refused before anything in it is touched, even with --overwrite
    proc = _holder(out / LOCK_NAME)
    try:
        (out / "keep.txt").write_text("x")
        assert main(_train_args(data, tiny_model_dir, out, "--overwrite")) == 2
        err = capsys.readouterr().err
        assert f"output_dir {out} is in use by another usertwin run: pid {proc.pid}" in err
        assert (out / "keep.txt").exists()
    finally:
        proc.kill()
        proc.wait()
    # a normal run: holds the lock while it runs, removes it at the end; the weights are safetensors
    from usertwin.train import trainer as train_mod

    seen = {}
    real_loop = train_mod.Trainer._loop

    def loop(self, *a, **kw):
        seen["owner"] = json.loads((out / LOCK_NAME).read_text())
        return real_loop(self, *a, **kw)

    monkeypatch.setattr(train_mod.Trainer, "_loop", loop)
    assert main(_train_args(data, tiny_model_dir, out, "--overwrite")) == 0
    assert seen["owner"]["pid"] == os.getpid() and not (out / LOCK_NAME).exists()
    assert not (out / "keep.txt").exists() and (out / "summary.json").exists()
    best = {p.name for p in (out / "best").iterdir()}
    assert "adapter_model.safetensors" in best and not {n for n in best if n.endswith((".bin", ".pt", ".pkl"))}
    # Ctrl-C (KeyboardInterrupt) and errors release it too
    monkeypatch.setattr(train_mod.Trainer, "_loop", lambda self, *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(_train_args(data, tiny_model_dir, out, "--overwrite")) == 130
    assert not (out / LOCK_NAME).exists()
    # the refusal of a non-empty directory releases the lock as well
    assert main(_train_args(data, tiny_model_dir, out)) == 2
    assert "is not empty" in capsys.readouterr().err and not (out / LOCK_NAME).exists()
    assert main(_train_args(tmp_path / "missing.jsonl", tiny_model_dir, out, "--overwrite")) == 2
    assert not (out / LOCK_NAME).exists()


def test_predict_into_a_locked_run_dir_is_refused(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl", sizes=(8, 8))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x: 1\n")
    proc = _holder(run / LOCK_NAME)
    try:
        from usertwin.eval.predict import _output_lock

        with pytest.raises(UsertwinError, match=f"run directory {re.escape(str(run))} is in use.*write elsewhere with -o"):
            _output_lock(run / "predictions-test.jsonl")
        out = tmp_path / "p.jsonl"  # elsewhere: its own lock, free
        assert main(["predict", "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "256",
                     "--no-progress", "--no-generate", "--cache_dir", str(tmp_path / "c"), "-o", str(out)]) == 0
        assert out.read_text() and not (tmp_path / f".{out.name}.lock").exists()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- item 5: security hygiene


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


def test_best_folder_is_never_missing_when_a_swap_is_cut(tmp_path, monkeypatch):
    """replace_dir moves the old best/ aside before the new one goes in; a crash between the two renames leaves
    the old copy, which recover_dir (used by restore_best and predict) puts back."""
    import os

    from usertwin import atomic

    best, tmp = tmp_path / "best", tmp_path / ".tmp-best"
    best.mkdir()
    (best / "w").write_text("old")
    tmp.mkdir()
    (tmp / "w").write_text("new")
    real, calls = os.replace, []

    def cut(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the second rename (tmp -> best) never happens
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_dir(tmp, best)
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not best.exists()
    assert (atomic.recover_dir(best) / "w").read_text() == "old"
    atomic.replace_dir(tmp, best)
    assert (best / "w").read_text() == "new" and not (tmp_path / ".best.old").exists() and not tmp.exists()


def test_a_killed_but_unreaped_owner_does_not_hold_the_lock(tmp_path):
    """A run killed with SIGKILL whose parent has not reaped it yet (a zombie) holds nothing: --resume goes on."""
    import subprocess
    import sys

    from usertwin.lock import _alive, _proc_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = _proc_start(child.pid)
    assert _alive(child.pid, start)
    child.kill()
    for _ in range(100):  # wait until it is a zombie, without reaping it
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    assert not _alive(child.pid, start)
    child.wait()
