"""usertwin train on tiny random models: the run directory, learning, refusal, resume after SIGKILL, DDP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT, write_rating_users

from usertwin.cli import main
from usertwin.train.trainer import rank_batches


def _records(path, sizes=(24, 16, 12)):
    return write_rating_users(path, sizes, lambda u, i: f"Movie {i % 7} (2000) (Drama): ",
                              lambda u, i: (i * (u + 1)) % 5 + 1)


def _args(data, model, out, *extra):
    return ["train", "--data", str(data), "--model", str(model), "--output_dir", str(out), "--max_length", "256",
            "--batch_tokens", "256", "--learning_rate", "0.01", "--no-progress", "--seed", "7", *extra]


def test_train_writes_the_run_directory_and_learns(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl")
    out = tmp_path / "run"
    assert main(_args(data, tiny_model_dir, out, "--max_epochs", "3")) == 0
    printed = capsys.readouterr().out
    assert "validation loss before training:" in printed and "validation loss after training:" in printed
    for name in ("config.yaml", "data_summary.json", "training_samples_preview.txt", "logs.jsonl",
                 "summary.json", "best/adapter_model.safetensors", "best/tokenizer_config.json"):
        assert (out / name).exists(), name
    assert "\u27ea" in (out / "training_samples_preview.txt").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets_per_epoch"] == 16 + 12 + 8  # the train split of 24, 16 and 12 items
    assert summary["targets_seen"] == 3 * summary["targets_per_epoch"]
    assert summary["val_loss_after"] < summary["val_loss_before"]
    assert summary["best_val_loss"] == pytest.approx(summary["val_loss_after"], rel=1e-6)
    logs = [json.loads(x) for x in (out / "logs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logs if r.get("event") == "eval"] == [1, 2, 3]  # at the ends of epochs 1, 2, 3
    assert len(list((out / "checkpoints").glob("step-*"))) == 2  # save_total_limit
    card = (out / "best" / "README.md").read_text()  # ours, not peft's blank template
    assert "More Information Needed" not in card and ".venv" not in card
    assert card.startswith(f"# usertwin twin: best weights\n\nA LoRA adapter (r=16, alpha=32) for the base model "
                           f"`{tiny_model_dir}`, trained by usertwin ")
    assert f"Chosen by lowest validation loss: step {summary['best_step']} of {summary['steps']}, validation loss " \
           f"{summary['best_val_loss']:.4f}." in card and 'Twin.load("RUN")' in card


def test_full_fine_tuning_and_padding_mode(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(10, 10))
    out = tmp_path / "full"
    assert main(_args(data, tiny_model_dir, out, "--no_lora", "--packing", "off", "--learning_rate", "0.001")) == 0
    assert (out / "best" / "model.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss_after"] < summary["val_loss_before"]


def test_existing_output_dir_is_refused(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl", sizes=(6,))
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(_args(data, tiny_model_dir, out)) == 2
    assert "is not empty: pass --resume to continue that run or --overwrite" in capsys.readouterr().err
    assert (out / "something").exists()


def test_rank_batches_are_disjoint_and_complete():
    group = list(range(7))
    parts = [rank_batches(group, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == group
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def _cli(*args, env=None):
    return [sys.executable, "-m", "usertwin.cli", *args]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir):
    data = _records(tmp_path / "r.jsonl", sizes=(30, 20, 16, 12))
    common = ["--max_epochs", "1", "--logging_steps", "1", "--no_lora", "--learning_rate", "0.001",
              "--max_length", "128", "--batch_tokens", "128"]
    one = tmp_path / "one"
    subprocess.run(_cli(*_args(data, tiny_model_dir, one, *common, "--gradient_accumulation_steps", "2")),
                   check=True, env=_env(), capture_output=True)
    two = tmp_path / "two"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port=29533", "-m", "usertwin.cli", *_args(data, tiny_model_dir, two, *common)],
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    a = json.loads((one / "summary.json").read_text())
    b = json.loads((two / "summary.json").read_text())
    assert b["processes"] == 2 and a["processes"] == 1
    assert a["steps"] == b["steps"] and a["targets_seen"] == b["targets_seen"]
    la = [r["loss"] for r in map(json.loads, (one / "logs.jsonl").read_text().splitlines()) if "loss" in r]
    lb = [r["loss"] for r in map(json.loads, (two / "logs.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(la) == len(lb) > 3
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5
    assert abs(a["val_loss_after"] - b["val_loss_after"]) < 1e-5


def test_resample_every_epoch_and_gradient_checkpointing(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl", sizes=(30, 30))
    out = tmp_path / "rs"
    assert main(_args(data, tiny_model_dir, out, "--unit", "sample", "--max_samples_per_user", "3",
                      "--resample_every_epoch", "--max_epochs", "2", "--gradient_checkpointing")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["targets"] for e in summary["per_epoch"]] == [6, 6]
    # each re-sampled epoch packs into its own number of steps: the announced total counts them all
    assert f"{summary['steps']} steps in all" in capsys.readouterr().out
    from usertwin.config import Config
    from usertwin.sequences.prepare import prepare
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import load_tokenizer
    from usertwin.train.trainer import EpochData

    cfg = Config(data=str(data), model=str(tiny_model_dir), unit="sample", max_samples_per_user=3,
                 resample_every_epoch=True, cache_dir=str(tmp_path / "c"))
    tok = load_tokenizer(cfg.model)
    prep = prepare(cfg, tokenizer=tok, progress=False)
    ed = EpochData(cfg, prep, Renderer(cfg, tok), tok)
    e0 = [(s.user_id, s.target) for s in ed.sequences("train", 0)]
    e1 = [(s.user_id, s.target) for s in ed.sequences("train", 1)]
    assert len(e0) == len(e1) == 6 and e0 != e1
    cfg.resample_every_epoch = False
    assert [(s.user_id, s.target) for s in ed.sequences("train", 1)] == e0


def test_block_layout_resampled_every_epoch_still_fits_max_length(tmp_path, tiny_model_dir):
    """--history_layout block measures a sample's tokens with the tokenizer; the re-sampling of later epochs
    must too (it was called without one and the second epoch crashed)."""
    data = _records(tmp_path / "r.jsonl", sizes=(30, 30))
    out = tmp_path / "block"
    sampling = ["--unit", "sample", "--history_layout", "block", "--resample_every_epoch",
                "--max_samples_per_user", "3"]
    assert main(_args(data, tiny_model_dir, out, *sampling, "--max_epochs", "2", "--max_length", "128")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and [e["targets"] for e in summary["per_epoch"]] == [6, 6]
    from usertwin.config import Config
    from usertwin.sequences.prepare import prepare
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import load_tokenizer
    from usertwin.train.trainer import EpochData

    cfg = Config(data=str(data), model=str(tiny_model_dir), unit="sample", history_layout="block",
                 resample_every_epoch=True, max_samples_per_user=3, max_length=128, cache_dir=str(tmp_path / "c"))
    tok = load_tokenizer(cfg.model)
    prep = prepare(cfg, tokenizer=tok, progress=False)
    ed = EpochData(cfg, prep, Renderer(cfg, tok), tok)
    epochs = [ed.sequences("train", epoch) for epoch in (0, 1)]
    assert [(s.user_id, s.target) for s in epochs[0]] != [(s.user_id, s.target) for s in epochs[1]]
    for seqs in epochs:
        lengths = [len(ed.encoder.encode(prep.timeline(s.user_id), *s.items_and_targets())) for s in seqs]
        assert len(lengths) == 6 and max(lengths) <= cfg.max_length
    assert any(len(s.history) < s.target for seqs in epochs for s in seqs)  # max_length did cut history


def test_deepspeed_without_the_package_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    data = _records(tmp_path / "r.jsonl", sizes=(6,))
    code = main(_args(data, tiny_model_dir, tmp_path / "ds", "--deepspeed", str(ROOT / "configs/deepspeed/zero3.json")))
    assert code == 2 and "--deepspeed needs the deepspeed package" in capsys.readouterr().err


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_max_steps_within_an_epoch_evaluates_the_last_step_and_shows_progress(tmp_path, tiny_model_dir, capsys):
    """No --eval_steps and --max_steps before the end of the epoch: the last step is evaluated at the end, so
    best/ exists; the announced step count is what ran; off a terminal, progress is a plain line per log."""
    data = _records(tmp_path / "r.jsonl", sizes=(60, 60, 60))
    out = tmp_path / "short"
    args = [a for a in _args(data, tiny_model_dir, out, "--max_steps", "3", "--logging_steps", "1",
                             "--max_length", "128", "--batch_tokens", "128") if a != "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = _summary(out)
    assert summary["steps"] == 3 and "3 steps in all" in printed
    assert isinstance(summary["best_val_loss"], float) and summary["best_step"] == 3
    assert summary["best"] == "lowest validation loss"
    assert (out / "best" / "adapter_model.safetensors").is_file()
    assert "step 3/3: validation loss" in printed and "(best so far" in printed
    lines = [x for x in printed.splitlines() if x.startswith("step ") and ": loss " in x]
    assert [x.split(":")[0] for x in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert all("target tokens/s" in x and "elapsed" in x and "ETA" in x for x in lines)
    # off a terminal every evaluation says when it starts and how long it took
    assert "step 0/3: evaluating the validation split (" in printed
    assert "step 3/3: evaluating the validation split (" in printed
    assert re.search(r"step 3/3: evaluated the validation split in \d+\.\d s", printed)


def test_no_progress_prints_no_progress_lines_and_no_loading_bars(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import yaml

    _records(tmp_path / "r.jsonl", sizes=(12,))
    monkeypatch.chdir(tmp_path)  # the data named relative to where train runs
    out = tmp_path / "quiet"
    assert main(_args("r.jsonl", tiny_model_dir, out, "--max_steps", "1", "--logging_steps", "1")) == 0
    captured = capsys.readouterr()
    assert not [x for x in captured.out.splitlines() if ": loss " in x]
    for bar in ("Loading weights", "Writing model shards", "%|"):  # transformers' and tqdm's bars
        assert bar not in captured.err, captured.err
    # config.yaml names the data wherever a later command runs from
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] == str(tmp_path / "r.jsonl")


def test_printed_step_count_is_what_runs(tmp_path, tiny_model_dir, capsys):
    """--max_steps beyond max_epochs' steps: the run stops with the epochs, and says so up front."""
    data = _records(tmp_path / "r.jsonl", sizes=(12,))
    out = tmp_path / "count"
    assert main(_args(data, tiny_model_dir, out, "--max_steps", "50", "--gradient_accumulation_steps", "2")) == 0
    printed = capsys.readouterr().out
    steps = _summary(out)["steps"]
    assert steps < 50 and f"{steps} steps in all" in printed


def test_empty_validation_split_keeps_the_last_weights(tmp_path, tiny_model_dir, capsys):
    data = _records(tmp_path / "r.jsonl", sizes=(12, 10))
    out = tmp_path / "noval"
    assert main(_args(data, tiny_model_dir, out, "--val_ratio", "0", "--test_ratio", "0.2",
                      "--max_epochs", "2")) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed and "(best" not in printed
    assert "validation split has no targets" in printed and "no early stopping" in printed
    summary = _summary(out)
    assert summary["best"] == "last" and summary["best_step"] == summary["steps"]
    assert summary["best_val_loss"] is None and summary["val_loss_before"] is None
    assert not [r for r in map(json.loads, (out / "logs.jsonl").read_text().splitlines()) if "val_loss" in r]
    from usertwin.rundir import RunDir
    from usertwin.twin.engine import load_twin_model

    assert (out / "best" / "adapter_config.json").is_file()  # the last weights: the LoRA adapter
    model = load_twin_model(RunDir(out).load_config(), out, merge=False)  # what predict loads, unmerged
    assert hasattr(model, "peft_config")


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory, tokenizer):
    """A tiny model whose output head shares the input embeddings (as SmolLM2's does)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    d = tmp_path_factory.mktemp("tiny-tied")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


NOISE = ("`is_gradient_checkpointing` is deprecated", "Removed shared tensor")


def _noise(recwarn, caplog, captured) -> set:
    said = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records] + [captured.err]
    return {n for n in NOISE if any(n in s for s in said)}


def _peft_says_deprecated(model_dir) -> bool:
    """Whether the installed peft reads transformers' deprecated `is_gradient_checkpointing` (peft 0.21 did, 0.22
    does not): the message --debug must then let through."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.gradient_checkpointing_enable()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    return any(NOISE[0] in str(w.message) for w in caught)


@pytest.mark.parametrize("debug", [False, True])
def test_third_party_noise_is_hidden_unless_debug(tmp_path, tied_model_dir, recwarn, caplog, capsys, debug):
    data = _records(tmp_path / "r.jsonl", sizes=(12,))
    out = tmp_path / "noise"
    extra = ["--debug"] if debug else []
    assert main(_args(data, tied_model_dir, out, "--max_steps", "1", "--gradient_checkpointing", *extra)) == 0
    # a LoRA checkpoint holds the adapters only: accelerate's "Removed shared tensor" (tied embeddings) is a full
    # fine-tuning message now
    said = _noise(recwarn, caplog, capsys.readouterr())
    expected = {NOISE[0]} if debug and _peft_says_deprecated(tied_model_dir) else set()
    assert said == expected
    if debug:
        full = tmp_path / "noise-full"
        assert main(_args(data, tied_model_dir, full, "--max_steps", "1", "--no_lora", "--debug")) == 0
        assert "Removed shared tensor" in _noise(recwarn, caplog, capsys.readouterr())


def test_adapter_of_a_base_without_config_json_saves_without_a_warning(tmp_path, tiny_model_dir, recwarn):
    """A GGUF base has no config.json: peft's save_embedding_layers="auto" warns that it cannot find one."""
    from types import SimpleNamespace

    from usertwin.config import Config
    from usertwin.model.load import load_model
    from usertwin.rundir import RunDir
    from usertwin.text.tokens import load_tokenizer
    from usertwin.train.checkpoint import Checkpoints
    from usertwin.train.trainable import TargetLoss, add_lora

    model = add_lora(load_model(str(tiny_model_dir), attention="sdpa"), r=2, alpha=4)
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "gguf-folder")
    loss_model = TargetLoss(model)
    acc = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, unwrap_model=lambda m: m,
                          get_state_dict=lambda m: m.state_dict())
    ck = Checkpoints(acc, RunDir(tmp_path / "run"), Config(lora=True, model=str(tiny_model_dir)), print)
    ck.save_best(loss_model, load_tokenizer(str(tiny_model_dir)))
    assert (tmp_path / "run" / "best" / "adapter_model.safetensors").is_file()
    assert not [w for w in recwarn if "Could not find a config file" in str(w.message)]
    model.save_pretrained(tmp_path / "plain")  # peft's default, for contrast: the warning the test is about
    assert [w for w in recwarn if "Could not find a config file" in str(w.message)]


def test_progress_is_a_bar_on_a_terminal_and_a_line_elsewhere(capsys):
    from usertwin.train.progress import Progress

    plain = Progress(total=4, done=1, terminal=False)
    plain.step()
    plain.logged(1.23456, 1234.5)
    assert capsys.readouterr().out.startswith("step 2/4: loss 1.2346, 1,234 target tokens/s, elapsed 00:00, ETA ")
    bar = Progress(total=4, terminal=True)
    bar.step()
    bar.logged(1.23456, 1234.5)
    bar.write("step 1/4: validation loss 1.0000")
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "step 1/4: validation loss 1.0000\n"  # messages go to stdout, around the bar
    assert "1/4" in captured.err and "loss 1.2346, 1,234 target tok/s" in captured.err
    assert Progress(total=4, enabled=False, terminal=True).bar is None
    assert ", 0.43 target tokens/s," in Progress(total=4, terminal=False).line(1.0, 0.4321)  # a slow CPU run


def test_wandb_missing_stops_before_any_work(tmp_path, monkeypatch, capsys):
    """--wandb_project without the wandb package stops at once (it stopped after 57 s of preparation), before
    the run directory, the model or the data are touched."""
    import importlib.util

    from usertwin.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "absent.jsonl"), "--model", str(tmp_path / "no-model"),
                 "--output_dir", str(run), "--wandb_project", "p"]) == 2
    assert capsys.readouterr().err == ("usertwin train: error: --wandb_project needs the wandb package: pip install "
                                       "wandb\n")
    assert not run.exists()


def test_a_long_silence_off_a_terminal_gets_a_line(capsys):
    import time

    from usertwin.train.progress import Progress

    plain = Progress(total=4, done=2, terminal=False, quiet_seconds=0.2)
    plain.phase("evaluating the validation split")
    time.sleep(0.7)
    plain.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(x.startswith("step 2/4: still evaluating the validation split (elapsed 00:0") for x in lines)
    assert len(lines) <= 4  # one per quiet stretch, not a flood
    quiet = Progress(total=4, enabled=False, terminal=False, quiet_seconds=0.1)
    time.sleep(0.3)
    quiet.close()
    assert capsys.readouterr().out == ""  # --no_progress: silent
