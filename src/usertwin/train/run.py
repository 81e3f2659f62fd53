"""The run directory of `usertwin train`: one writer at a time, never silently reused, and the files written
before the first step (the resolved config, the data summary, a preview of the training examples)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from usertwin.atomic import atomic_open, write_json, write_text
from usertwin.config import Config
from usertwin.data.facts import write_twin_facts
from usertwin.errors import UsertwinError
from usertwin.lock import Lock, acquire
from usertwin.rundir import RunDir
from usertwin.sequences.prepare import Prepared, summary


def open_run(cfg: Config, overwrite: bool, resume: bool) -> tuple[RunDir, Lock]:
    """The run directory, locked for this process (its lock file) before anything in it is touched."""
    if not cfg.output_dir:
        raise UsertwinError("no output directory: pass --output_dir RUN_DIR (or set output_dir in the config)")
    run = RunDir(cfg.output_dir)
    out = run.path
    if out.exists() and not out.is_dir():
        raise UsertwinError(f"output_dir {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire(run.lock, f"output_dir {out}")
    try:
        _claim(run, overwrite, resume)
    except BaseException:
        lock.release()
        raise
    return run, lock


def _claim(run: RunDir, overwrite: bool, resume: bool) -> None:
    """Refuse a run directory that holds another run, unless it is to be continued or replaced."""
    # the prepare cache survives --overwrite: it is keyed by its inputs, never stale
    kept = {run.cache.name, run.lock.name}
    others = [p for p in run.path.iterdir() if p.name not in kept]
    if others and not (overwrite or resume):
        raise UsertwinError(f"output_dir {run.path} is not empty: pass --resume to continue that run or --overwrite "
                            "to replace it")
    if others and overwrite and not resume:
        for p in others:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def write_run_start(cfg: Config, run: RunDir, prep: Prepared, renderer) -> None:
    """What a run writes before training: config.yaml (what every later command reads), counts, a preview, and
    what a twin keeps from its data (twin.json), so the trained twin loads without the training data."""
    import yaml

    write_text(run.config, yaml.safe_dump(_located(cfg).to_dict(), sort_keys=False, allow_unicode=True))
    write_json(run.data_summary, summary(prep))
    write_twin_facts(run.path, prep)
    write_preview(run, prep, renderer)


def _located(cfg: Config) -> Config:
    """The config with its data (and a local model folder) as absolute paths: predict, serve or simulate read
    config.yaml from wherever they run, not from where train ran."""
    model = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model
    data = str(Path(cfg.data).resolve()) if cfg.data else cfg.data
    return dataclasses.replace(cfg, data=data, model=model)


def write_preview(run: RunDir, prep: Prepared, renderer, n: int = 3) -> None:
    from usertwin.sequences.preview import marked_text

    parts = []
    for seq in prep.sequences["train"][:n]:
        items, targets = seq.items_and_targets()
        rendered = renderer.render(prep.timeline(seq.user_id), items, targets)
        parts.append(f"=== user {seq.user_id!r}: {len(targets)} target(s), {len(items) - len(targets)} history "
                     f"item(s); loss on the \u27ea...\u27eb spans ===\n{marked_text(rendered, color=False)}\n")
    with atomic_open(run.preview) as f:
        f.write("\n".join(parts))
