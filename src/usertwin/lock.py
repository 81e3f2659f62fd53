"""One writer per output: a lock file holding the owner's pid, host and start time.

`acquire(path)` creates the lock file with O_CREAT|O_EXCL (atomic: of two processes racing, exactly one
creates it). A second claim is refused with a UsertwinError naming the directory, the owner's pid and what to
do. A stale lock -- its pid is not alive on this host, or the pid now belongs to a younger process -- is
cleared with a warning. The lock is removed by `release()`, when its object is garbage-collected, and at
interpreter exit; a SIGKILLed owner leaves a lock that the next claim finds stale.

Not a distributed lock: a lock held from another host cannot be checked, so it is refused with a hint to
delete the file when that run is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
import weakref
from datetime import datetime, timezone
from pathlib import Path

from usertwin.errors import UsertwinError

_FRESH_SECONDS = 5.0  # an unreadable lock younger than this is still being written by its owner


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat; fields 1-2 end at the last ')'
    except (OSError, IndexError):
        return None


def _alive(pid: int, proc_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    if _zombie(pid):  # killed but not yet reaped by its parent: it holds nothing any more
        return False
    now = _proc_start(pid)
    return not (proc_start and now and now != proc_start)  # same pid, younger process: the owner is gone


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _read(path: Path) -> tuple[dict | None, str | None]:
    """(owner, raw text); owner is None when the file is empty or torn."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except OSError:
        return None, ""
    try:
        owner = json.loads(raw)
    except json.JSONDecodeError:
        return None, raw
    return (owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None), raw


def _remove_if_ours(path: str, token: str) -> None:
    owner, _ = _read(Path(path))
    # only the owning process removes it (not a forked child that exits normally)
    if owner is not None and owner.get("token") == token and owner.get("pid") == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


class Lock:
    """A held lock; `release()` (or the end of the process) removes it."""

    def __init__(self, path: Path, token: str):
        self.path, self.token = path, token
        self._finalizer = weakref.finalize(self, _remove_if_ours, str(path), token)

    def release(self) -> None:
        self._finalizer()  # idempotent

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(path, what: str | None = None, warn=None, hint: str = "use another output directory to run both at once") -> Lock:
    """Take the lock file `path` (e.g. RUN_DIR/.lock) for this process; `what` names the thing it guards
    in messages (default: the lock's directory)."""
    path = Path(path)
    what = what or str(path.parent)
    warn = warn or (lambda msg: print(f"usertwin: warning: {msg}", file=sys.stderr, flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
          "proc_start": _proc_start(os.getpid()), "command": " ".join(sys.argv)[:300], "token": token}
    deadline = time.monotonic() + 2 * _FRESH_SECONDS
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            return Lock(path, token)
        owner, raw = _read(path)
        if raw is None:
            continue  # removed in between: try again
        if owner is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < _FRESH_SECONDS and time.monotonic() < deadline:
                time.sleep(0.05)  # its owner is writing it
                continue
            _clear(path, raw, warn, f"an unreadable lock file {path} (left by a crash); removed it")
            continue
        if owner.get("host") == me["host"] and not _alive(owner["pid"], owner.get("proc_start")):
            _clear(path, raw, warn, f"{what} was locked by pid {owner['pid']} (started {owner.get('started')}), "
                                    f"which is no longer running; removed the stale lock {path}")
            continue
        here = owner.get("host") == me["host"]
        who = "this process" if here and owner["pid"] == me["pid"] else f"pid {owner['pid']}"
        how = (f"wait for it to finish or stop it (kill {owner['pid']})" if here else
               f"wait for it to finish; if that run is gone, delete {path}")
        raise UsertwinError(f"{what} is in use by another usertwin run: {who} on host {owner.get('host')}, "
                            f"started {owner.get('started')} ({owner.get('command') or 'usertwin'}); {how}"
                            + (f", or {hint}" if hint else ""))


def _clear(path: Path, raw: str, warn, message: str) -> None:
    """Remove the stale lock we read -- and only that one: it is first renamed aside, then compared, so a
    fresh lock that another process created meanwhile is put back rather than deleted."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else cleared it
    try:
        now = aside.read_text(encoding="utf-8")
    except OSError:
        now = raw
    if now == raw:
        warn(message)
    else:  # a fresh lock took its place: put it back unless yet another one exists
        try:
            os.link(aside, path)
        except OSError:
            pass
    try:
        os.unlink(aside)
    except OSError:
        pass
