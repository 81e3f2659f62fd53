"""No flag is silently ignored (data/applies.py): every sampling and history flag changes the prepared counts
under the unit it is given with, switches the run to the unit that supports it with a notice, or stops with a
message naming it. Real data: the first 5 users of MovieLens ml-latest-small (232, 29, 39, 216, 44 ratings)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import shared

from usertwin.cli import main
from usertwin.config import Config
from usertwin.data.applies import Facts, settle
from usertwin.errors import UsertwinError
from usertwin.rundir import RunDir
from usertwin.sequences.fit import target_sample
from usertwin.sequences.prepare import build_split, prepare
from usertwin.text.render import Renderer

USERS = 5


@pytest.fixture(scope="module")
def ml5(tmp_path_factory):
    raw = shared("movielens", "ml-latest-small")
    d = tmp_path_factory.mktemp("ml5")
    assert main(["convert", "movielens", str(raw), "-o", str(d / "all.jsonl"), "--no-progress"]) == 0
    lines = (d / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:USERS]
    (d / "ml5.jsonl").write_text("".join(lines), encoding="utf-8")
    return d / "ml5.jsonl"


def _prep(ml5, tokenizer, tmp_path, **kw):
    # the counts below are of sampling and fitting; crowd lines (tests/data/test_crowd.py) would only lengthen items
    kw.setdefault("crowd_context", "none")
    cfg = Config(data=str(ml5), max_length=1024, cache_dir=str(tmp_path / "cache"), **kw)
    return prepare(cfg, tokenizer=tokenizer, progress=False)


def _train(prep) -> tuple:
    st = prep.stats["train"]
    return st.targets, st.sequences, st.tokens, st.history_items, st.truncated_sequences, st.history_dropped


def _loss_targets(prep) -> dict:
    out = {}
    for seq in prep.sequences["train"]:
        out.setdefault(seq.user_id, []).extend(seq.items_and_targets()[1])
    return out


# the default: every training item carries loss (train items: 162 + 21 + 27 + 152 + 30); (targets, windows or
# samples, tokens, history items, truncated sequences, history items cut)
DEFAULT = (392, 55, 53870, 359, 50, 3459)


def test_default_counts(ml5, tokenizer, tmp_path):
    prep = _prep(ml5, tokenizer, tmp_path)
    assert prep.config.unit == "timeline" and prep.notices == []
    assert _train(prep) == DEFAULT


def test_one_sample_per_user_is_the_seeds_one_sample_in_both_units(ml5, tokenizer, tmp_path):
    """The user's latest training target with all the history that fits: the same sequence, the same cost."""
    timeline = _prep(ml5, tokenizer, tmp_path, one_sample_per_user=True)
    sample = _prep(ml5, tokenizer, tmp_path, one_sample_per_user=True, unit="sample")
    assert _train(timeline) == _train(sample) == (5, 5, 4990, 63, 5, 324)
    assert _loss_targets(timeline) == {"1": [161], "2": [20], "3": [26], "4": [151], "5": [29]}
    for w, s in zip(timeline.sequences["train"], sample.sequences["train"]):
        assert w.items_and_targets() == s.items_and_targets()
    assert _train(timeline) != DEFAULT  # (before: the flag changed nothing under the timeline unit)
    assert timeline.stats["val"] == _prep(ml5, tokenizer, tmp_path).stats["val"]  # val and test keep every target


def test_max_samples_per_user_chooses_the_loss_targets_inside_windows(ml5, tokenizer, tmp_path):
    prep = _prep(ml5, tokenizer, tmp_path, max_samples_per_user=2)
    assert _train(prep) == (10, 6, 3924, 43, 5, 113)
    assert {u: len(t) for u, t in _loss_targets(prep).items()} == {u: 2 for u in "12345"}
    other_seed = _prep(ml5, tokenizer, tmp_path, max_samples_per_user=2, sample_seed=7)
    assert _loss_targets(other_seed) != _loss_targets(prep) and other_seed.notices == []
    # the items between two chosen targets of one window stay in it, as history
    for w in prep.sequences["train"]:
        assert w.items == list(range(w.items[0], w.items[-1] + 1))


def test_temporal_augmentation_drops_targets_with_short_history(ml5, tokenizer, tmp_path):
    prep = _prep(ml5, tokenizer, tmp_path, temporal_augmentation=True, min_history_length=50)
    # users 2, 3 and 5 have at most 30 training items; users 1 and 4 keep their targets from position 50 on
    assert _train(prep) == (214, 33, 32653, 230, 33, 3107)
    assert sorted(_loss_targets(prep)) == ["1", "4"]
    assert min(min(t) for t in _loss_targets(prep).values()) == 50


def test_history_strategy_none_gives_windows_without_history(ml5, tokenizer, tmp_path):
    prep = _prep(ml5, tokenizer, tmp_path, history_strategy="none")
    assert prep.config.unit == "timeline" and prep.notices == []
    assert _train(prep) == (392, 392, 55077, 0, 0, 0)


SWITCH = ("{flags}: needs --unit sample (a timeline window shows each target every earlier item in it); switched to "
          "--unit sample (one sequence per target: more tokens than timeline windows)")


@pytest.mark.parametrize("kw,flags,counts", [
    ({"history_strategy": "random"}, "--history_strategy random", (392, 392, 329200, 4139, 260, 8525)),
    ({"history_strategy": "fixed_ratio"}, "--history_strategy fixed_ratio", (392, 392, 360456, 4674, 321, 18781)),
    ({"history_strategy": "fixed_count", "fixed_history_count": 3}, "--history_strategy fixed_count",
     (392, 392, 131148, 1146, 0, 0)),
    ({"max_history_items": 5}, "--max_history_items 5", (392, 392, 180188, 1885, 0, 0)),
    ({"history_strategy": "random", "max_history_items": 5}, "--history_strategy random and --max_history_items 5",
     (392, 392, 175926, 1815, 0, 0)),
])
def test_history_shaping_switches_to_the_sample_unit_with_a_notice(ml5, tokenizer, tmp_path, kw, flags, counts):
    prep = _prep(ml5, tokenizer, tmp_path, **kw)
    assert prep.config.unit == "sample"
    assert prep.notices == [SWITCH.format(flags=flags)] and prep.warnings[0] == prep.notices[0]
    assert _train(prep) == counts


def test_predict_builds_prompts_with_the_strategy_the_run_trained_with(ml5, tokenizer, tmp_path):
    """The settled config (what train saves as config.yaml) gives predict the training history."""
    prep = _prep(ml5, tokenizer, tmp_path, history_strategy="random")
    renderer = Renderer(prep.config, tokenizer)
    for s in prep.sequences["val"][:20]:
        tl = prep.timeline(s.user_id)
        assert target_sample(prep.config, renderer, tokenizer, tl, s.target).history == s.history


def test_train_says_the_switch_and_saves_the_unit_it_trained_with(ml5, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(ml5), "--model", str(tiny_model_dir), "--output_dir", str(out),
                 "--max_length", "256", "--max_steps", "1", "--no_eval_at_start", "--no-progress",
                 "--history_strategy", "fixed_count", "--fixed_history_count", "2"]) == 0
    assert SWITCH.format(flags="--history_strategy fixed_count") in capsys.readouterr().out.splitlines()
    saved = RunDir(out).load_config()
    assert (saved.unit, saved.history_strategy, saved.fixed_history_count) == ("sample", "fixed_count", 2)


def test_one_sample_per_user_keeps_the_history_strategy(ml5, tokenizer, tmp_path):
    """It used to give every earlier item whatever the strategy, while predict applied the strategy."""
    prep = _prep(ml5, tokenizer, tmp_path, one_sample_per_user=True, unit="sample", history_strategy="fixed_count",
                 fixed_history_count=3)
    assert [(s.target, s.history) for s in prep.sequences["train"]] == [
        (161, [158, 159, 160]), (20, [17, 18, 19]), (26, [23, 24, 25]), (151, [148, 149, 150]), (29, [26, 27, 28])]


def test_resample_every_epoch_redraws_the_timeline_targets(ml5, tokenizer, tmp_path):
    prep = _prep(ml5, tokenizer, tmp_path, max_samples_per_user=2, resample_every_epoch=True)
    renderer = Renderer(prep.config, tokenizer)
    epochs = [build_split(prep.config, renderer, prep.timelines, prep.splits, prep.lengths, "train", tokenizer,
                          epoch=e) for e in (0, 1)]
    targets = [sorted((w.user_id, t) for w in seqs for t in w.targets) for seqs, _ in epochs]
    assert len(targets[0]) == len(targets[1]) == 10 and targets[0] != targets[1]
    assert [(w.items, w.targets) for w in epochs[0][0]] == [(w.items, w.targets) for w in prep.sequences["train"]]


def test_sample_seed_without_a_draw_says_so(ml5, tokenizer, tmp_path):
    prep = _prep(ml5, tokenizer, tmp_path, sample_seed=7)
    assert prep.notices == ["--sample_seed 7 changes nothing here: it needs a random draw (--max_samples_per_user, "
                            "or --history_strategy random)"]
    assert _train(prep) == DEFAULT


@pytest.mark.parametrize("flags,message", [
    (["--history_ratio", "0.3"], "--history_ratio 0.3 would be ignored: it needs --history_strategy random or "
                                 "fixed_ratio"),
    (["--fixed_history_count", "3"], "--fixed_history_count 3 would be ignored: it needs --history_strategy "
                                     "fixed_count"),
    (["--min_history_length", "5"], "--min_history_length 5 would be ignored: it needs --temporal_augmentation"),
    (["--one_sample_per_user", "--max_samples_per_user", "2"],
     "--max_samples_per_user 2 would be ignored: it needs --one_sample_per_user off (that keeps one target per "
     "user already)"),
    (["--resample_every_epoch"], "--resample_every_epoch would be ignored: it needs a random draw to repeat "
                                 "(--max_samples_per_user, or --history_strategy random with --unit sample)"),
    (["--history_layout", "block"], "--history_layout block would be ignored: it needs --unit sample (a timeline "
                                    "window renders earlier items as turns)"),
    (["--unit", "sample", "--window_history_fraction", "0.2"],
     "--window_history_fraction 0.2 would be ignored: it needs --unit timeline (or dialogue data with context "
     "shown, whose long contexts it cuts)"),
    (["--max_context_turns", "3"], "--max_context_turns 3 would be ignored: it needs items with context turns "
                                   "(dialogue) and the context shown"),
    (["--history_strategy", "random", "--no_history"],
     "--history_strategy random would be ignored: it needs history shown (the ablation or --no_history hides it)"),
    (["--ablation", "profile_only", "--unit", "sample", "--max_history_items", "4"],
     "--max_history_items 4 would be ignored: it needs history shown (the ablation or --no_history hides it)"),
    (["--pad_packed_rows", "--no_packing"], "--pad_packed_rows would be ignored: it needs --packing"),
    (["--no_lora", "--lora_r", "8"], "--lora_r 8 would be ignored: it needs --lora"),
    (["--lr_scheduler", "constant", "--warmup_ratio", "0.1"],
     "--warmup_ratio 0.1 would be ignored: it needs a --lr_scheduler with warm-up"),
    (["--early_stopping_patience", "0", "--early_stopping_threshold", "0.1"],
     "--early_stopping_threshold 0.1 would be ignored: it needs --early_stopping_patience"),
    (["--wandb_run_name", "x"], "--wandb_run_name x would be ignored: it needs --wandb_project"),
    (["--attention", "sdpa", "--disable_flash_attn"],
     "--disable_flash_attn would be ignored: it needs --attention auto"),
])
def test_a_setting_that_would_be_ignored_stops_prepare_naming_it(ml5, tokenizer_dir, tmp_path, capsys, flags,
                                                                 message):
    """Before any training: train prepares first (prepare itself takes no training flags)."""
    args = ["train", "--data", str(ml5), "--model", str(tokenizer_dir), "--cache_dir", str(tmp_path),
            "--output_dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args + flags) == 2
    assert capsys.readouterr().err.strip() == f"usertwin train: error: {message}"


def test_settle_is_idempotent_and_knows_dialogue():
    cfg, notices = settle(Config(history_strategy="fixed_ratio", history_ratio=0.3))
    assert cfg.unit == "sample" and len(notices) == 1
    assert settle(cfg) == (cfg, [])
    # dialogue data: window_history_fraction also cuts long contexts, so it takes effect under the sample unit
    sample = dataclasses.replace(Config(), unit="sample", window_history_fraction=0.2)
    assert settle(sample, Facts(has_context=True, dialogue=True)) == (sample, [])
    with pytest.raises(UsertwinError, match="--window_history_fraction 0.2 would be ignored"):
        settle(sample, Facts())


def test_target_draw_latest_takes_each_users_last_n_and_needs_max_samples_per_user():
    from helpers import rating_timeline

    from usertwin.config import Config
    from usertwin.data.applies import settle
    from usertwin.data.timeline import choose_targets
    from usertwin.errors import UsertwinError

    cfg = Config(max_samples_per_user=3, target_draw="latest")
    assert choose_targets(rating_timeline(10), list(range(8)), cfg, seed=0) == [5, 6, 7]
    assert settle(cfg)[1] == []  # nothing drawn: no sample_seed notice
    with pytest.raises(UsertwinError, match=r"--target_draw latest would be ignored: it needs --max_samples_per_user "
                                            r"N \(the targets it draws\)"):
        settle(Config(target_draw="latest"))


def test_skip_own_turn_targets_without_context_turns_says_it_changes_nothing():
    """Set under a seed dialogue config (cli/train.py): data without context turns gets a notice, not a stop."""
    cfg = Config(skip_own_turn_targets=True)
    assert settle(cfg)[1] == ["--skip_own_turn_targets changes nothing here: it needs items with context turns "
                              "(dialogue)"]
    assert settle(cfg, Facts(has_context=True))[1] == []
