"""Reading run directories for the report: every file may be missing or unreadable, and the report says which
instead of stopping. `usertwin.rundir.RunDir` names the files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from usertwin.errors import UsertwinError
from usertwin.eval.metrics import json_lines
from usertwin.rundir import RunDir

# what to do about a missing file, by the RunDir attribute that names it
HINTS = {
    "config": "not a usertwin run directory, or training never started",
    "summary": "training has not finished",
    "logs": "no training logs",
    "metrics": "run `usertwin evaluate`",
    "predictions": "run `usertwin predict`",
}


@dataclass
class Run:
    path: Path
    name: str = ""
    label: str = ""  # the name drawn in plots (ASCII only)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    logs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    predictions: list = field(default_factory=list)
    predictions_file: str = ""
    split: str = "test"  # the split whose predictions were read
    missing: list = field(default_factory=list)  # file names that are not there
    hints: dict = field(default_factory=dict)  # {missing file name: what to do about it}
    problems: list = field(default_factory=list)  # files (or lines) that could not be read

    def note_missing(self, path: Path, what: str) -> None:
        self.missing.append(path.name)
        self.hints[path.name] = HINTS[what]


def _read_json(run: Run, path: Path, what: str) -> dict:
    data = _read_mapping(run, path, what, json.loads, (json.JSONDecodeError,), lambda e: e)
    if data is not None and not isinstance(data, dict):
        run.problems.append(f"{path.name}: not a JSON object")
    return data if isinstance(data, dict) else {}


def _read_mapping(run: Run, path: Path, what: str, parse, errors: tuple, shown):
    """The parsed file, or None with the reason noted on the run (missing, unreadable)."""
    if not path.is_file():
        run.note_missing(path, what)
        return None
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *errors) as e:
        run.problems.append(f"{path.name}: cannot read ({shown(e)})")
        return None


def _read_jsonl(run: Run, path: Path) -> list:
    """Rows of a JSON Lines file; unreadable lines (a killed run's torn last line) are skipped and reported."""
    rows, bad = [], []
    try:
        for lineno, row, error in json_lines(path, errors="replace"):
            if error is None and isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(lineno)
    except OSError as e:
        run.problems.append(f"{path.name}: cannot read ({e.strerror})")
        return []
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        run.problems.append(f"{path.name}: {len(bad)} unreadable line(s) skipped (line {shown})")
    return rows


def _read_config(run: Run, path: Path) -> dict:
    import yaml

    data = _read_mapping(run, path, "config", yaml.safe_load, (yaml.YAMLError,), lambda e: type(e).__name__)
    return data if isinstance(data, dict) else {}


def _read_rows(run: Run, path: Path, what: str) -> list:
    if path.is_file():
        return _read_jsonl(run, path)
    run.note_missing(path, what)
    return []


def load_run(path, split: str = "test") -> Run:
    """Everything the report uses from one run directory; missing or unreadable files are noted, not fatal."""
    path = Path(path)
    if not path.is_dir():
        raise UsertwinError(f"{path}: not a run directory ({'a file' if path.exists() else 'does not exist'})")
    files = RunDir(path)
    run = Run(path=path, split=split)
    run.config = _read_config(run, files.config)
    run.summary = _read_json(run, files.summary, "summary")
    run.logs = _read_rows(run, files.logs, "logs")
    run.metrics = _read_json(run, files.metrics, "metrics")
    predictions = files.predictions(split)
    if predictions.is_file():
        run.predictions_file = predictions.name
    run.predictions = _read_rows(run, predictions, "predictions")
    return run


def read_baseline_rows(run: Run, baseline: str) -> list:
    """A baseline's per-target rows for this run's split (`usertwin baselines --run RUN` writes them), or [] when
    they are not there -- the verdict then gives no interval for that comparison, and says nothing more."""
    path = RunDir(run.path).baseline_rows(run.split) / f"{baseline}.jsonl"
    if not path.is_file():
        return []
    return _read_jsonl(run, path)


def name_runs(runs: list[Run]) -> None:
    """Directory names, made unique with parent folders where two runs share one; plot labels in ASCII."""
    depth = {id(r): 1 for r in runs}
    for _ in range(8):
        names = {id(r): "/".join(r.path.resolve().parts[-depth[id(r)]:]) for r in runs}
        dup = {n for n in names.values() if list(names.values()).count(n) > 1}
        if not dup:
            break
        for r in runs:
            if names[id(r)] in dup:
                depth[id(r)] += 1
    for i, r in enumerate(runs, 1):
        r.name = names[id(r)] or str(r.path)
        short = r.name if len(r.name) <= 40 else "..." + r.name[-37:]
        r.label = short if short.isascii() and short.isprintable() else f"run {i}"


def parts_seen(config: dict) -> tuple | None:
    """(profile, history, context): what the run's prompts showed, through the settings' own reading of the
    ablation and the use_* switches, so the report cannot disagree with training; history_strategy `none`
    shows no history whatever the ablation says. None when the config does not say (missing, unknown
    ablation)."""
    from usertwin.config import RenderSettings

    if not config:
        return None
    try:
        parts = RenderSettings(ablation=config.get("ablation") or "profile_and_history_and_context",
                               use_profile=config.get("use_profile"), use_history=config.get("use_history"),
                               use_context=config.get("use_context")).parts()
    except (UsertwinError, TypeError):
        return None
    profile, history, context = parts
    return profile, history and config.get("history_strategy") != "none", context


def history_label(run: Run) -> str | None:
    """What history the run saw: "no history" when none reached its prompts (its history_strategy is then
    beside the point), else its history_strategy."""
    parts = parts_seen(run.config)
    if parts is not None and not parts[1]:
        return "no history"
    return run.config.get("history_strategy")
