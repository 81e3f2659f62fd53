"""usertwin.lock: one writer per output directory. A second claim is refused with the owner and what to do,
racing claims have one winner, stale locks (a dead, reused or zombie pid; a torn file) are cleared, and the
lock is released on every way out; `train` and `predict` take it before they touch their output."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_reliability import _env, _py, _records

from usertwin.cli import main
from usertwin.errors import UsertwinError
from usertwin.lock import acquire
from usertwin.rundir import LOCK_NAME

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
        from usertwin.appended import output_lock as _output_lock

        with pytest.raises(UsertwinError, match=f"run directory {re.escape(str(run))} is in use.*write elsewhere with -o"):
            _output_lock(run / "predictions-test.jsonl")
        out = tmp_path / "p.jsonl"  # elsewhere: its own lock, free
        assert main(["predict", "--model", str(tiny_model_dir), "--data", str(data), "--max_length", "256",
                     "--no-progress", "--no-generate", "--cache_dir", str(tmp_path / "c"), "-o", str(out)]) == 0
        assert out.read_text() and not (tmp_path / f".{out.name}.lock").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_but_unreaped_owner_does_not_hold_the_lock(tmp_path):
    """A run killed with SIGKILL whose parent has not reaped it yet (a zombie) holds nothing: --resume goes on."""
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
