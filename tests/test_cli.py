"""The CLI end to end on small records: prepare/inspect, the dump, caching, configs, flags, errors."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT, write_records

from usertwin.cli import main


def _records(path, sizes=(30, 12, 7), lang="en"):
    recs = []
    for u, n in enumerate(sizes):
        items = [{"continuation_prefix": f"Movie {i} (2000) (Drama): ", "continuation": f"{(i % 5) + 1}.0",
                  "timestamp": 1_000_000 + 60 * i} for i in range(n)]
        recs.append({"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}"}},
                     "task": {"description": "Predict ratings.", "language": lang,
                              "task_behavior_collections": [{"type": "movie_rating", "data": items}]}})
    return write_records(path, recs)


def _dump(tmp_path, tokenizer_dir, *flags, name="dump.jsonl", data=None):
    data = data or _records(tmp_path / "records.jsonl")
    out = tmp_path / name
    rc = main(["inspect", "--data", str(data), "--model", str(tokenizer_dir), "-n", "0", "--no-progress",
               "--dump", str(out), *flags])
    assert rc == 0
    return out, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_dump_lists_every_item_once_without_leakage(tmp_path, tokenizer_dir):
    _, rows = _dump(tmp_path, tokenizer_dir, "--max_length", "256")
    assert len(rows) == 30 + 12 + 7
    seen = {(r["user"], r["target_index"]) for r in rows}
    assert len(seen) == len(rows)
    for r in rows:
        assert all(h < r["target_index"] for h in r["history_indices"])
    shares = {}
    for r in rows:
        shares.setdefault(r["user"], []).append(r["split"])
    assert [shares["u0"].count(s) for s in ("train", "val", "test")] == [20, 5, 5]  # 4.5 rounds up, for val and test


def test_dump_is_byte_identical_for_the_same_seed_and_cache_does_not_change_it(tmp_path, tokenizer_dir, capsys):
    a, _ = _dump(tmp_path, tokenizer_dir, "--max_length", "256", name="a.jsonl")
    b, _ = _dump(tmp_path, tokenizer_dir, "--max_length", "256", name="b.jsonl")  # second run: from cache
    assert "(from cache)" in capsys.readouterr().out
    c, _ = _dump(tmp_path, tokenizer_dir, "--max_length", "256", "--cache_dir", str(tmp_path / "fresh"),
                 name="c.jsonl")
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()


def test_sample_unit_truncates_oldest_history_first(tmp_path, tokenizer_dir, capsys):
    _, rows = _dump(tmp_path, tokenizer_dir, "--unit", "sample", "--max_length", "200")
    assert "truncated" in capsys.readouterr().out
    late = [r for r in rows if r["user"] == "u0" and r["target_index"] == 29][0]
    hist = late["history_indices"]
    assert hist and hist == list(range(29 - len(hist), 29))  # the most recent ones survive
    assert len(hist) < 29


def test_seed_flag_names_and_config_file(tmp_path, tokenizer_dir, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("history_strategy: fixed_count\nfixed_history_count: 2\nunit: sample\nmax_length: 4096\n")
    _, rows = _dump(tmp_path, tokenizer_dir, "--config", str(cfg), "--ablation_config", "history_only")
    assert "ablation history_only" in capsys.readouterr().out
    assert max(len(r["history_indices"]) for r in rows) == 2
    # a flag given on the command line wins over the file
    _, rows = _dump(tmp_path, tokenizer_dir, "--config", str(cfg), "--fixed_history_count", "3", name="d2.jsonl")
    assert max(len(r["history_indices"]) for r in rows) == 3


def test_no_history_flag(tmp_path, tokenizer_dir):
    _, rows = _dump(tmp_path, tokenizer_dir, "--no_history", "--unit", "sample")
    assert all(r["history_indices"] == [] for r in rows)


def test_missing_data_and_block_layout_with_timeline(tmp_path, tokenizer_dir, capsys):
    assert main(["prepare", "--model", str(tokenizer_dir)]) == 2
    assert "no data: pass --data" in capsys.readouterr().err
    data = _records(tmp_path / "r.jsonl")
    assert main(["prepare", "--data", str(data), "--model", str(tokenizer_dir), "--history_layout", "block"]) == 2
    assert "needs --unit sample" in capsys.readouterr().err


def test_prepare_writes_summary_and_config(tmp_path, tokenizer_dir):
    data = _records(tmp_path / "r.jsonl")
    out = tmp_path / "run"
    assert main(["prepare", "--data", str(data), "--model", str(tokenizer_dir), "--output_dir", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["users"] == 3 and summary["items"] == 49
    assert summary["items_per_split"] == {"train": 33, "val": 8, "test": 8}
    assert sum(summary["splits"][s]["targets"] for s in ("train", "val", "test")) == 49
    assert json.loads((out / "config.json").read_text())["model"] == str(tokenizer_dir)


def test_block_layout_sample_unit(tmp_path, tokenizer_dir):
    _, rows = _dump(tmp_path, tokenizer_dir, "--unit", "sample", "--history_layout", "block",
                    "--max_length", "180")
    late = [r for r in rows if r["user"] == "u0" and r["target_index"] == 29][0]
    assert 0 < len(late["history_indices"]) < 29


def test_written_files_are_complete_with_normal_permissions(tmp_path):
    import os

    from usertwin.atomic import atomic_open

    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]
    with atomic_open(target) as f:
        f.write("new\n")
    assert target.read_text() == "new\n"
    mask = os.umask(0)
    os.umask(mask)
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~mask)


def test_items_longer_than_max_length_lose_oldest_context_turns_not_the_target(tmp_path, tokenizer_dir, capsys):
    items = []
    for i in range(6):
        turns = 40 if i == 3 else 2
        ctx = [{"source": "CAMERON" if k % 2 else "user", "content": f"turn {i}.{k} " + "words " * 6}
               for k in range(turns)]
        items.append({"context": ctx, "continuation": f"line {i}"})
    rec = {"user_hash": "c1", "user": {"profile": {"name": "BIANCA"}},
           "task": {"description": "Speak.", "task_behavior_collections": [{"type": "dialogue", "data": items}]}}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(rec) + "\n")
    out, rows = _dump(tmp_path, tokenizer_dir, "--max_length", "400", "--test_ratio", "0", "--val_ratio", "0",
                      data=data)
    printed = capsys.readouterr().out
    assert "1 item(s) longer than max_length 400" in printed and "oldest context turn(s)" in printed
    assert sorted(r["target_index"] for r in rows) == list(range(6))  # no target left out as too long
    from usertwin.config import Config
    from usertwin.sequences.prepare import prepare
    from usertwin.text.tokens import load_tokenizer

    prep = prepare(Config(data=str(data), model=str(tokenizer_dir), max_length=400, cache_dir=str(tmp_path / "c")),
                   tokenizer=load_tokenizer(str(tokenizer_dir)), progress=False)
    kept = prep.timelines[0].items[3].context
    assert 0 < len(kept) < 40 and kept[-1]["content"].startswith("turn 3.39")  # the newest turns stay
    assert prep.stats["train"].too_long == 0


def test_a_mistyped_flag_is_one_line_with_the_nearest_flag_not_the_usage_block(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--lerning_rate", "1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == ("usertwin train: error: unrecognized arguments: --lerning_rate 1 (--lerning_rate: did you mean "
                   "--learning_rate?)\n(`usertwin train --help` lists every flag)\n")
    with pytest.raises(SystemExit):
        main(["train", "--max_length", "abc"])
    err = capsys.readouterr().err
    assert "usage:" not in err and err.startswith("usertwin train: error: argument --max_length")


@pytest.mark.parametrize("argv", [["train", "--max_hist", "3", "--print_config"],
                                  ["predict", "--scen", "DIR", "-o", "out"]])
def test_a_prefix_of_a_flag_is_not_that_flag(argv, capsys):
    """argparse's prefix matching is off: --max_hist 3 once became --max_history_items 3 without a word."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"usertwin {argv[0]}: error: unrecognized arguments: {argv[1]} {argv[2]}" in err


def test_scripts_parse_no_prefixes():
    """Every argparse parser of the repository (scripts, benchmarks) turns prefix matching off."""
    import re

    for path in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "src").rglob("*.py")]:
        for call in re.findall(r"ArgumentParser\([^)]*\)?", path.read_text()):
            assert "allow_abbrev=False" in call, f"{path}: {call}"


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_print_config_shows_the_unit_the_run_will_use(command, capsys):
    """--max_history_items needs one sequence per target: the run switches to the sample unit, and the printed
    config (a valid --config of that run) says so."""
    import yaml

    assert main([command, "--max_history_items", "3", "--print_config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["unit"] == "sample"
    assert err.splitlines() == ["--max_history_items 3: needs --unit sample (a timeline window shows each target "
                                "every earlier item in it); switched to --unit sample (one sequence per target: "
                                "more tokens than timeline windows)"]


# every flag of the research scripts' inference_vllm_*.py and inference_vllm.py (their argparse)
SEED_INFERENCE_FLAGS = (
    "--checkpoint_dir", "--dataset", "--scenario_path", "--ablation_config", "--num_samples", "--output_dir",
    "--tensor_parallel_size", "--gpu_memory_utilization", "--max_model_len", "--temperature", "--top_p", "--top_k",
    "--repetition_penalty", "--max_tokens", "--seed", "--max_context_turns", "--max_chars_per_turn", "--max_retries",
    "--retry_temperature_increment", "--max_history_ratings", "--max_history_reviews")


def test_every_seed_inference_flag_is_a_predict_flag_and_in_the_readme():
    from usertwin.cli import build_parser

    predict = next(a for a in build_parser()._actions if a.choices and "predict" in a.choices).choices["predict"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Coming from the seed scripts"):readme.index("**Leaderboard scenarios.**")]
    for flag in SEED_INFERENCE_FLAGS:
        assert flag in predict._option_string_actions, flag
        assert f"`{flag}" in section or f"{flag}`" in section or f" {flag} " in section, flag
