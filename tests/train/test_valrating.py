"""--select_by rating_rmse: best/ and early stopping follow the validation split's expected-rating RMSE, scored
as predict scores it, logged next to the loss."""

from __future__ import annotations

import json
import math

import pytest
from test_train import _args, _records

from usertwin.cli import main
from usertwin.config import Config
from usertwin.data.applies import Facts, settle
from usertwin.errors import UsertwinError


def test_best_is_the_lowest_validation_rmse_and_equals_predicts(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl")
    out = tmp_path / "run"
    assert main(_args(data, tiny_model_dir, out, "--max_epochs", "3", "--select_by", "rating_rmse",
                      "--early_stopping_threshold", "0", "--early_stopping_patience", "5")) == 0
    printed = capsys.readouterr().out
    assert "validation loss before training:" in printed and ", expected-rating RMSE " in printed
    rows = [json.loads(x) for x in (out / "logs.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("event") == "eval"]
    assert len(evals) == 3 and all(math.isfinite(r["val_rating_rmse"]) for r in evals)
    summary = json.loads((out / "summary.json").read_text())
    best = min(evals, key=lambda r: r["val_rating_rmse"])
    assert summary["best"] == "lowest validation expected-rating RMSE"
    assert summary["best_val_rating_rmse"] == best["val_rating_rmse"]
    assert summary["best_val_loss"] == best["val_loss"]
    # best/ scored by predict on the validation split gives the RMSE training selected it by
    pred = tmp_path / "val.jsonl"
    assert main(["predict", "--run", str(out), "--split", "val", "-o", str(pred), "--no_generate", "--pick", "0",
                 "--scoring", "window", "--no-progress"]) == 0
    errors = [(r["rating"]["expected"] - float(r["reference"])) ** 2 for r in map(json.loads, pred.open())]
    assert math.sqrt(sum(errors) / len(errors)) == pytest.approx(best["val_rating_rmse"], abs=2e-3)


def test_rating_rmse_needs_ratings_and_val_rating_targets_needs_it():
    with pytest.raises(UsertwinError, match="--select_by rating_rmse would be ignored: it needs rating targets"):
        settle(Config(select_by="rating_rmse"), Facts(dialogue=True))
    with pytest.raises(UsertwinError, match="--val_rating_targets 100 would be ignored: it needs --select_by "
                                            "rating_rmse"):
        settle(Config(val_rating_targets=100), Facts(ratings=True))
    assert settle(Config(select_by="rating_rmse", val_rating_targets=100), Facts(ratings=True))[1] == []
