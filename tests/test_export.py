"""usertwin export: a plain transformers folder whose logits equal the run's base model + adapter."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers import write_records

from usertwin.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("export")
    recs = [{"user_hash": f"u{u}", "user": {"profile": {"name": f"u{u}"}},
             "task": {"description": "Predict ratings.", "language": "en",
                      "task_behavior_collections": [{"type": "movie_rating", "data": [
                          {"continuation_prefix": f"Movie {i} (2000) (Drama): ", "continuation": f"{i % 5 + 1}.0",
                           "timestamp": 1_000_000 + 60 * i} for i in range(8)]}]}} for u in range(3)]
    data = write_records(tmp / "r.jsonl", recs)
    run = tmp / "run"
    # a high learning rate, so that the adapter really moves the logits
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(run),
                 "--max_length", "192", "--learning_rate", "0.05", "--no-progress"]) == 0
    return run


def test_exported_model_equals_base_plus_adapter_without_peft(run_dir, tmp_path, tiny_model_dir, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from usertwin.twin import Twin

    out = tmp_path / "model"
    assert main(["export", str(run_dir), "-o", str(out)]) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary folder was renamed, nothing left beside it
    twin = Twin.load(run_dir, records=run_dir.parent / "r.jsonl")
    ids = torch.tensor([twin.prompt(user="u1", item="Movie 3 (2000) (Drama): ") + twin.engine.continuation_ids("4.0")])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(run_dir / "best")).eval()
    monkeypatch.setitem(sys.modules, "peft", None)  # the export must load with no peft at all
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert next(exported.parameters()).dtype == torch.float32
    with torch.no_grad():
        want, got = adapted(input_ids=ids).logits, exported(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    with torch.no_grad(), adapted.disable_adapter():
        assert (adapted(input_ids=ids).logits - want).abs().max() > 1e-3  # the adapter matters: a real comparison
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    has_template = "chat_template" in tok_cfg or (out / "chat_template.jinja").is_file()
    assert has_template
    gen = json.loads((out / "generation_config.json").read_text())
    eot = twin.engine.eot_id
    assert gen["eos_token_id"] == eot or eot in gen["eos_token_id"]


def test_model_card_names_the_base_model_data_and_settings(run_dir, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "model"
    assert main(["export", str(run_dir), "-o", str(out), "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err  # not a terminal: no loading or writing bars in a log
    assert "Writing model shards" not in err and "Loading weights" not in err and "%|" not in err, err
    card = (out / "README.md").read_text()
    assert str(tiny_model_dir) in card and "LoRA (r=16" in card and "merged" in card
    assert "r.jsonl" in card and "| train | 3 |" in card  # the data file and its counts
    assert "learning_rate: 0.05" in card and "prompt style `simple`" in card and "summary.json" in card
    assert "from_pretrained" in card and "bfloat16" in card
    assert (out / "usertwin_config.yaml").is_file() and (out / "twin.json").is_file()


def test_model_card_says_how_sure_the_metrics_are(run_dir, tmp_path):
    from usertwin.eval.intervals import intervals
    from usertwin.eval.metrics import evaluate_rows

    rows = [{"user": f"u{u}", "split": "test", "target_index": i, "item": f"Movie {i}", "reference": "4.0",
             "collection": "movie_rating", "rating": {"expected": 3.5 + 0.2 * u}} for u in range(3) for i in range(6, 8)]
    metrics = dict(evaluate_rows(rows), intervals=intervals(rows))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    try:
        assert main(["export", str(run_dir), "-o", str(tmp_path / "model")]) == 0
    finally:
        (run_dir / "metrics.json").unlink()
    card = (tmp_path / "model" / "README.md").read_text()
    assert "95% intervals (1,000 resamples of the 3 users" in card
    lo, hi = metrics["intervals"]["rating_expected_rmse"]["ci95"]
    assert f"expected-rating RMSE: {metrics['intervals']['rating_expected_rmse']['value']:.3f} [{lo:.3f}, {hi:.3f}]" in card


def test_refusals(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["export", str(run_dir), "-o", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (out / "keep.txt").is_file()
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["export", str(run_dir), "-o", str(tmp_path / "g"), "--gguf"]) == 2
    err = capsys.readouterr().err
    assert "llama.cpp's converter" in err and "convert_hf_to_gguf.py DIR" in err
    assert not (tmp_path / "g").exists()  # refused before anything was written
