"""Start a launcher (torchrun, accelerate launch) so that its whole process tree can be SIGKILLed and reaped.

Shared by the tests and benchmarks/multi_gpu.py; standard library only (Linux /proc), so a benchmark can import it
without the test dependencies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process rather than to PID 1: torchrun starts each rank in a
    session of its own, and a sandbox's PID 1 may never reap a killed rank, which would then stay a zombie that
    still seems to hold the run directory's lock."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def start_killable(cmd, **popen_kw) -> subprocess.Popen:
    become_subreaper()
    return subprocess.Popen(cmd, **popen_kw)


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # field 4; fields 1-2 end at the last ')'
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def kill_tree(proc: subprocess.Popen, reap_seconds: float = 30) -> None:
    """SIGKILL the process and all its descendants, then reap them (ours once their parent is gone)."""
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children_of(pid))
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + reap_seconds
    for pid in tree[1:]:
        while Path(f"/proc/{pid}").exists() and time.time() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
