"""--batch_tokens auto and --batch_size auto: the arithmetic of the plan, the CPU fallbacks, and that an explicit
step_tokens sets the accumulation (the probe itself needs a GPU: benchmarks/default_speed.py runs it there)."""

from __future__ import annotations

import json

import pytest
from helpers import write_rating_users

from usertwin.cli import main
from usertwin.config import Config, GenerateSettings
from usertwin.text.tokens import IGNORE
from usertwin.train.autobatch import (
    GPU_STEP_TOKENS,
    MIN_STEPS_PER_EPOCH,
    choose,
    fixed_plan,
    learning_rate,
    synthetic_batch,
)
from usertwin.twin.engine import CPU_BATCH, bytes_per_token


def test_a_roomy_gpu_gets_whole_rows_up_to_the_step():
    plan = choose(Config(max_length=2048), fits=1_000_000, per_token=2**20)
    assert (plan.batch_tokens, plan.accumulation) == (GPU_STEP_TOKENS, 1)
    assert "65,536 tokens per micro-batch (32 x max_length 2048" in plan.note


def test_a_small_gpu_accumulates_to_keep_the_step():
    plan = choose(Config(max_length=2048), fits=10_000, per_token=2**20)  # 4 rows fit
    assert (plan.batch_tokens, plan.accumulation) == (8192, 8)
    plan = choose(Config(max_length=2048, step_tokens=20_000), fits=10_000, per_token=2**20)
    # 9 whole rows make the step; 4 fit at once, so 3 micro-batches of 3 rows (18,432 tokens, not 24,576)
    assert (plan.batch_tokens, plan.accumulation) == (6144, 3)
    plan = choose(Config(max_length=2048), fits=100, per_token=2**20)
    assert plan.batch_tokens == 2048 and "not even one max_length row seems to fit" in plan.note


def test_the_step_is_split_evenly_and_never_exceeds_step_tokens():
    # an H100 probe: 27 rows of 2,048 fit; the 65,536-token step is 2 micro-batches of 16 rows, not 2 x 27 rows
    plan = choose(Config(max_length=2048), fits=55_296 + 100, per_token=2**20)
    assert (plan.batch_tokens, plan.accumulation) == (32_768, 2) and "of about 65,536 tokens" in plan.note
    for fits in range(2048, 80_000, 1000):
        for step_tokens in (None, 10_000, 30_000, 65_536):
            for gas in (1, 3):
                cfg = Config(max_length=2048, step_tokens=step_tokens, gradient_accumulation_steps=gas)
                plan = choose(cfg, fits=fits, per_token=2**20)
                step = max(step_tokens or GPU_STEP_TOKENS, 2048)
                assert plan.batch_tokens * plan.accumulation <= max(step, 2048 * plan.accumulation)
                assert plan.batch_tokens <= max(fits // 2048, 1) * 2048 and plan.accumulation >= gas


def test_without_a_probe_auto_is_max_length_and_step_tokens_still_counts():
    assert (fixed_plan(Config(max_length=256)).batch_tokens, fixed_plan(Config(max_length=256)).accumulation) \
        == (256, 1)
    plan = fixed_plan(Config(max_length=256, step_tokens=1000))
    assert (plan.batch_tokens, plan.accumulation) == (256, 4)
    assert fixed_plan(Config(max_length=256, batch_tokens=512, gradient_accumulation_steps=3)).accumulation == 3


def test_the_probe_batch_is_shaped_like_the_run():
    b = synthetic_batch(Config(max_length=100), 2, target_share=0.25, vocab=50)
    assert len(b.input_ids) == 1 and len(b.input_ids[0]) == 200 and b.seq_lens == [100, 100]
    assert b.position_ids[0][:3] == [0, 1, 2] and b.position_ids[0][100] == 0
    assert sum(x != IGNORE for x in b.labels[0]) == b.n_target_tokens == 50
    padded = synthetic_batch(Config(max_length=100, packing=False), 3, target_share=1.0, vocab=50)
    assert len(padded.input_ids) == 3 and padded.attention_mask == [[1] * 100] * 3


def test_step_tokens_sets_the_accumulation_on_a_cpu(tmp_path, tiny_model_dir, capsys):
    data = write_rating_users(tmp_path / "r.jsonl", (24, 16, 12), lambda u, i: f"Movie {i % 7} (2000): ",
                              lambda u, i: (i * (u + 1)) % 5 + 1)
    steps = {}
    for label, extra in (("one", []), ("four", ["--step_tokens", "1024"])):
        out = tmp_path / label
        assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(out),
                     "--max_length", "256", "--max_epochs", "1", "--no-progress", *extra]) == 0
        steps[label] = json.loads((out / "summary.json").read_text())["steps"]
    printed = capsys.readouterr().out
    assert "4 micro-batch(es) per optimizer step (step_tokens 1,024)" in printed
    assert "learning rate 0.0004: 0.0002 x sqrt(4 max_length rows per optimizer step)" in printed
    assert steps["four"] == -(-steps["one"] // 4)


def test_step_tokens_needs_batch_tokens_auto(tmp_path, capsys):
    data = write_rating_users(tmp_path / "r.jsonl", (8,), lambda u, i: f"Movie {i}: ", lambda u, i: 3)
    assert main(["train", "--data", str(data), "--batch_tokens", "512", "--step_tokens", "1024",
                 "--output_dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "--step_tokens 1024 would be ignored: it needs --batch_tokens auto" in capsys.readouterr().err


def test_batch_size_auto_is_8_on_a_cpu_and_the_gpu_estimate_counts_cache_and_activations():
    assert CPU_BATCH == 8 and GenerateSettings().batch_size == "auto"

    class Cfg:
        hidden_size, num_attention_heads, num_key_value_heads, num_hidden_layers = 64, 4, 2, 3
        intermediate_size, dtype = 128, "bfloat16"

    # cache: 3 layers x 2 (k, v) x 2 heads x 16 dims x 2 bytes; activations (8 x 64 + 3 x 128) x 2; mask row
    assert bytes_per_token(Cfg, 100) == 3 * 2 * 2 * 16 * 2 + (8 * 64 + 3 * 128) * 2 + 100


@pytest.mark.parametrize("value", ["auto", "512"])
def test_batch_tokens_takes_a_number_or_auto(value, tmp_path):
    from usertwin.cli import build_parser

    args = build_parser().parse_args(["train", "--batch_tokens", value])
    assert args.cfg__batch_tokens == (value if value == "auto" else int(value))


def test_an_unset_learning_rate_follows_the_square_root_rule():
    from usertwin.train.autobatch import learning_rate

    assert learning_rate(Config(max_length=2048), 2048) == (2e-4, "")
    lr, why = learning_rate(Config(max_length=2048), 65536)
    assert lr == pytest.approx(2e-4 * 32 ** 0.5) and "sqrt(32 max_length rows" in why
    assert learning_rate(Config(max_length=2048, learning_rate=1e-3), 65536) == (1e-3, "")


CAP = "(set --step_tokens to choose)"


def test_a_small_epoch_caps_an_unset_step_at_32_steps():
    assert MIN_STEPS_PER_EPOCH == 32
    cfg = Config(max_length=2048)
    plan = choose(cfg, fits=200_000, per_token=2**20, epoch_tokens=216_211)  # douban-dmr: 216,211 // 32 = 6,756
    assert (plan.batch_tokens, plan.accumulation) == (6144, 1)
    assert plan.note.endswith("1 micro-batch(es) per optimizer step of about 6,144 tokens; capped at 3 rows per "
                              "step so an epoch of 216,211 tokens has at least 32 optimizer steps " + CAP)
    assert learning_rate(cfg, 6144) == (pytest.approx(2e-4 * 3 ** 0.5), "learning rate 0.000346: 0.0002 x "
                                        "sqrt(3 max_length rows per optimizer step) (set --learning_rate to choose)")
    plan = choose(cfg, fits=200_000, per_token=2**20, epoch_tokens=531_871)  # 60 MovieLens users
    assert (plan.batch_tokens, plan.accumulation) == (16384, 1) and "capped at 8 rows per step" in plan.note


def test_an_epoch_under_32_rows_gets_one_row_per_step():
    plan = choose(Config(max_length=2048), fits=200_000, per_token=2**20, epoch_tokens=46_757)  # 1,461 < 2,048
    assert (plan.batch_tokens, plan.accumulation) == (2048, 1)
    assert plan.note.endswith("capped at 1 row per step, the fewest, so an epoch of 46,757 tokens has as many "
                              "optimizer steps as whole rows allow (32 wanted; lower --max_length for more, or "
                              "set --step_tokens to choose)")


def test_a_large_epoch_or_an_explicit_step_is_not_capped():
    for epoch in (5_742_796, 2_870_000, 32 * GPU_STEP_TOKENS, None):  # 610 and 300 MovieLens users; the edge
        plan = choose(Config(max_length=2048), fits=200_000, per_token=2**20, epoch_tokens=epoch)
        assert (plan.batch_tokens, plan.accumulation) == (GPU_STEP_TOKENS, 1) and "capped" not in plan.note
    plan = choose(Config(max_length=2048), fits=200_000, per_token=2**20, epoch_tokens=32 * GPU_STEP_TOKENS - 1)
    assert plan.batch_tokens == 63488 and "capped at 31 rows" in plan.note
    plan = choose(Config(max_length=2048, step_tokens=65536), fits=200_000, per_token=2**20, epoch_tokens=46_757)
    assert (plan.batch_tokens, plan.accumulation) == (65536, 1) and "capped" not in plan.note


def test_the_cap_counts_processes_memory_and_an_explicit_accumulation():
    cfg = Config(max_length=2048)
    # DDP: every process takes a step at once, so each one's step is 531,871 // (32 x 2) = 8,310 -> 4 rows
    plan = choose(cfg, fits=200_000, per_token=2**20, epoch_tokens=531_871, processes=2)
    assert (plan.batch_tokens, plan.accumulation) == (8192, 1)
    assert "capped at 4 rows per step so an epoch of 531,871 tokens over 2 processes has at least 32" in plan.note
    # 2 rows fit, the cap is 3: whole micro-batches below the cap (rounding up would make 26 steps)
    plan = choose(cfg, fits=5000, per_token=2**20, epoch_tokens=216_211)
    assert (plan.batch_tokens, plan.accumulation) == (4096, 1) and "capped at 3 rows" in plan.note
    # 8 rows allowed, 2 micro-batches asked for: 4 rows each
    plan = choose(Config(max_length=2048, gradient_accumulation_steps=2), fits=200_000, per_token=2**20,
                  epoch_tokens=531_871)
    assert (plan.batch_tokens, plan.accumulation) == (8192, 2) and "at least 32 optimizer steps" in plan.note
    # 3 rows allowed, 4 micro-batches asked for: the accumulation wins and the note does not promise 32 steps
    plan = choose(Config(max_length=2048, gradient_accumulation_steps=4), fits=200_000, per_token=2**20,
                  epoch_tokens=216_211)
    assert (plan.batch_tokens, plan.accumulation) == (2048, 4) and "as many optimizer steps as whole" in plan.note


def test_the_step_tokens_help_names_the_cap():
    import dataclasses

    help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(Config)}
    assert f"an epoch has at least {MIN_STEPS_PER_EPOCH} optimizer steps" in help_of["step_tokens"]


def test_the_trainer_plans_with_the_epochs_tokens(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The probe needs a GPU: here plan_batches is choose() with a roomy GPU's figures, fed what the trainer
    passes; the run then trains with the capped plan."""
    import usertwin.train.trainer as trainer

    seen = []

    def roomy_gpu(cfg, acc, loss_model, target_share, boundaries, epoch_tokens=None):
        seen.append(epoch_tokens)
        return choose(cfg, fits=10**6, per_token=1.0, epoch_tokens=epoch_tokens)

    monkeypatch.setattr(trainer, "plan_batches", roomy_gpu)
    data = write_rating_users(tmp_path / "r.jsonl", (40, 40, 40, 40), lambda u, i: f"Movie {i % 7} (2000): ",
                              lambda u, i: (i * (u + 1)) % 5 + 1)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(out),
                 "--max_length", "128", "--max_epochs", "1", "--crowd_context", "none",  # the seeds' item lines
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    printed = capsys.readouterr().out
    epoch = summary["tokens_per_epoch"]
    assert seen == [epoch] == [11524]  # 11,524 // 32 = 360 tokens: 2 rows of 128
    assert f"capped at 2 rows per step so an epoch of {epoch:,} tokens has at least 32 optimizer steps" in printed
    assert "learning rate 0.000283: 0.0002 x sqrt(2 max_length rows per optimizer step)" in printed
    assert (summary["batch_tokens"], summary["accumulation"]) == (256, 1)
    assert summary["steps"] == summary["per_epoch"][0]["micro_batches"] == 54  # uncapped: 1 step of 11,520
