"""usertwin.atomic: a file or folder is complete or absent, whatever stops the writer."""

from __future__ import annotations

import json
import os

import pytest


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


def test_best_folder_is_never_missing_when_a_swap_is_cut(tmp_path, monkeypatch):
    """replace_dir moves the old best/ aside before the new one goes in; a crash between the two renames leaves
    the old copy, which recover_dir (used by restore_best and predict) puts back."""
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
