"""usertwin.train.checkpoint: checkpoints are complete or absent and pruned to save_total_limit; a run killed
(SIGKILL) or interrupted (Ctrl-C) resumes to the same result; best/ is kept and restored at the end."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_train import _args, _cli, _env, _records

from usertwin.cli import main
from usertwin.rundir import CHECKPOINT_STATE, RunDir
from usertwin.train.checkpoint import Checkpoints, TrainState


class _OneProcess:
    """The part of accelerate's Accelerator that Checkpoints uses, for one process."""

    is_main_process = True

    def __init__(self):
        self.loaded = []

    def wait_for_everyone(self):
        pass

    def save_state(self, path, safe_serialization=True):
        (Path(path) / "model.safetensors").write_text("weights")

    def load_state(self, path):
        self.loaded.append(path)


def test_checkpoints_are_renamed_into_place_pruned_and_loaded(tmp_path):
    run = RunDir(tmp_path / "run")
    said = []
    acc = _OneProcess()
    ck = Checkpoints(acc, run, SimpleNamespace(save_total_limit=2), said.append)
    for step in (3, 6, 9):
        ck.save(TrainState(global_step=step, epoch=1, log=[{"step": step}]))
    assert [p.name for p in run.checkpoint_dirs()] == ["step-6", "step-9"]  # save_total_limit
    assert not list(run.checkpoints.glob(".tmp-*"))
    (run.checkpoint(12)).mkdir()  # a checkpoint whose state was never written is not resumed from
    assert run.latest_checkpoint() == run.checkpoint(9)
    state = ck.load(run.latest_checkpoint())
    assert state == TrainState(global_step=9, epoch=1, log=[{"step": 9}])
    assert acc.loaded == [str(run.checkpoint(9))] and said == [f"resumed from {run.checkpoint(9)} (epoch 2, step 9)"]
    assert json.loads((run.checkpoint(9) / CHECKPOINT_STATE).read_text())["global_step"] == 9


def test_resume_after_sigkill_gives_the_same_final_loss(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(60, 60, 60))
    common = ["--max_epochs", "2", "--save_steps", "3", "--save_total_limit", "50", "--max_length", "128",
              "--batch_tokens", "128"]
    full = tmp_path / "full"
    subprocess.run(_cli(*_args(data, tiny_model_dir, full, *common)), check=True, env=_env(),
                   capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*_args(data, tiny_model_dir, killed, *common)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-6" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # it really died mid-run
    subprocess.run(_cli(*_args(data, tiny_model_dir, killed, *common), "--resume"), check=True, env=_env(),
                   capture_output=True)
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert b["steps"] == a["steps"]
    assert abs(a["val_loss_after"] - b["val_loss_after"]) <= 1e-6


def test_early_stopping_keeps_and_restores_the_best(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(20, 20))
    out = tmp_path / "es"
    # a threshold no later evaluation can beat: the first evaluation stays the best, patience 2 stops the
    # run after two more, and the first evaluation's weights are restored at the end
    assert main(_args(data, tiny_model_dir, out, "--max_epochs", "6", "--early_stopping_patience", "2",
                      "--early_stopping_threshold", "1000")) == 0
    summary = json.loads((out / "summary.json").read_text())
    evals = [r for r in map(json.loads, (out / "logs.jsonl").read_text().splitlines()) if r.get("event") == "eval"]
    assert summary["stopped_early"] and len(evals) == 3
    assert summary["best_val_loss"] == evals[0]["val_loss"] and summary["best_step"] == 14  # one epoch
    assert evals[2]["val_loss"] != pytest.approx(evals[0]["val_loss"], rel=1e-6)
    assert summary["val_loss_after"] == pytest.approx(evals[0]["val_loss"], rel=1e-6)  # best restored


def test_sigint_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(60, 60, 60))
    common = ["--max_epochs", "3", "--max_length", "128", "--batch_tokens", "128", "--logging_steps", "1"]
    out = tmp_path / "int"
    proc = subprocess.Popen(_cli(*_args(data, tiny_model_dir, out, *common)), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "logs.jsonl").exists() or '"loss"' not in (out / "logs.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "checkpoint saved at step" in stdout and "Traceback" not in stderr
    ckpts = list((out / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "trainer_state.json").exists()
    assert not (out / "summary.json").exists()
    subprocess.run(_cli(*_args(data, tiny_model_dir, out, *common), "--resume"), check=True, env=_env(),
                   capture_output=True)
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("interrupted_at", [2, 4])
def test_run_interrupted_and_resumed_with_max_steps_ends_with_an_evaluated_best(tmp_path, tiny_model_dir,
                                                                                monkeypatch, interrupted_at):
    """No step of a --max_steps run inside one epoch is scheduled for validation; the run that finishes it (here
    a resumed one, even one with no step left to run) evaluates the last step, so best/ holds weights."""
    from usertwin.train import trainer

    data = _records(tmp_path / "r.jsonl", sizes=(60, 60, 60))
    common = ["--max_steps", "4", "--max_length", "128", "--batch_tokens", "128"]
    out = tmp_path / "run"
    steps = []

    def ctrl_c(self):  # what a Ctrl-C during the step does
        steps.append(1)
        return len(steps) == interrupted_at

    monkeypatch.setattr(trainer._CtrlC, "asked_anywhere", ctrl_c)
    assert main(_args(data, tiny_model_dir, out, *common)) == 130
    assert not (out / "best").exists() and RunDir(out).latest_checkpoint() == RunDir(out).checkpoint(interrupted_at)
    monkeypatch.undo()
    assert main(_args(data, tiny_model_dir, out, *common, "--resume")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["best_step"] == 4 and isinstance(summary["best_val_loss"], float)
    assert summary["val_loss_after"] == summary["best_val_loss"]
    assert (out / "best" / "adapter_model.safetensors").is_file()
