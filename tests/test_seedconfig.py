"""The research scripts' configs and flags: nested JSON configs, --print_config, their flag names and values,
the Lovink prompt style and DeepSpeed configs with "auto" batch entries."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURES, ROOT, rating_timeline, write_rating_users

from usertwin.cli import build_parser, main
from usertwin.cli.train import seed_training
from usertwin.config import Config, RenderSettings, resolve
from usertwin.errors import UsertwinError
from usertwin.rundir import RunDir
from usertwin.text.render import Renderer
from usertwin.train.setup import fill_deepspeed_auto, read_deepspeed_config, select_devices

DATA = FIXTURES / "seed_sets"
CHAMELEONS = DATA / "seed_config_Chameleons.json"
DI3 = DATA / "seed_config_Chameleons_30B_lora_di3.json"
RPC = DATA / "seed_config_RealPersonaChat_Qwen30B.json"
MIRROR = Path("/work/.mirror/Ricky513125+CompactSubset_experiements/repo")


def _resolve(*argv, command="train"):
    return resolve(build_parser().parse_args([command, *argv]))


def _changed(cfg: Config) -> dict:
    """The settings that differ from the defaults."""
    default = Config().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if v != default[k]}


def test_a_seed_config_maps_each_key_and_says_so(capsys):
    cfg = _resolve("--config", str(CHAMELEONS))
    assert _changed(cfg) == {
        "data": "/mnt/parallel/GIDigitalTwinBench/RealSelf/Chameleons/train.json",
        "model": "/mnt/parallel/models/Qwen3-8B", "max_length": 1024, "weight_decay": 0.1, "warmup_steps": 100,
        "gradient_accumulation_steps": 2, "batch_tokens": 1024, "save_steps": 500, "save_total_limit": 3,
        "lora": False, "learning_rate": 1e-05}
    src = str(CHAMELEONS)
    assert capsys.readouterr().err.splitlines() == [f"{src}: {line}" for line in [
        "model.name ignored: a display name; model.path is what the seeds loaded",
        "model.path -> model = /mnt/parallel/models/Qwen3-8B",
        "model.hf_model_name ignored: the hub id of the model at model.path; pass --model ID to load it from the "
        "hub instead",
        "model.checkpoint_dir ignored: where the seeds put a run when --output_dir was not given; usertwin writes "
        "to --output_dir",
        "data.train_path -> data = /mnt/parallel/GIDigitalTwinBench/RealSelf/Chameleons/train.json",
        "training.eval_batch_size ignored: validation in train uses the training micro-batches (batch_tokens); "
        "predict's batch is predict --eval_batch_size (= --batch_size)",
        "training.gradient_accumulation_steps -> gradient_accumulation_steps = 2",
        "training.weight_decay -> weight_decay = 0.1",
        "training.warmup_steps -> warmup_steps = 100",
        "training.max_length -> max_length = 1024",
        "training.max_context_turns -> max_context_turns = 15",
        "training.logging_steps -> logging_steps = 10",
        "training.save_steps -> save_steps = 500",
        "training.save_total_limit -> save_total_limit = 3",
        "model.use_lora absent -> lora = False (the seeds' scripts' default)",
        "training.learning_rate absent -> learning_rate = 1e-05 (the seeds' scripts' default)",
        "ablation_configs ignored: no --ablation_config NAME chose one of its entries (profile_and_history_and_"
        "context, profile_and_history, profile_and_context, history_and_context, profile_only, history_only, "
        "context_only); the ablation setting applies",
        "training.batch_size 1 -> batch_tokens = 1 x max_length 1024 = 1024 (the seeds' micro-batch: 1 "
        "sequence(s) of at most max_length tokens; here up to that many tokens per micro-batch)"]]


def test_lora_keys_the_chosen_ablation_and_flags_over_the_file(capsys):
    cfg = _resolve("--config", str(DI3), "--ablation_config", "history_only")
    assert _changed(cfg) == {
        "data": "/mnt/parallel/GIDigitalTwinBench/RealSelf/Chameleons/train_di3.json",
        "model": "/mnt/parallel/models/Qwen3-30B-A3B-Instruct-2507", "max_length": 1024, "ablation": "history_only",
        "lora_r": 32, "lora_alpha": 64, "weight_decay": 0.01, "warmup_steps": 100, "gradient_accumulation_steps": 8,
        "batch_tokens": 4096, "save_steps": 200, "save_total_limit": 5, "learning_rate": 0.0002}
    err = capsys.readouterr().err
    assert (f"{DI3}: ablation_configs.history_only (chosen by --ablation_config) -> ablation = history_only "
            "(profile off, history on, context off)\n") in err
    assert f"{DI3}: model.lora_config.target_modules -> lora_target_modules = all-linear\n" in err
    # flags win; batch_tokens follows the final max_length; an explicit batch_tokens wins over batch_size
    cfg = _resolve("--config", str(DI3), "--max_length", "512", "--lr", "1e-4", "--model", "smollm2")
    assert (cfg.max_length, cfg.batch_tokens, cfg.learning_rate, cfg.model) == (512, 2048, 1e-4, "smollm2")
    cfg = _resolve("--config", str(DI3), "--batch_tokens", "3000")
    assert cfg.batch_tokens == 3000
    assert f"{DI3}: training.batch_size 4 ignored: --batch_tokens 3000 given\n" in capsys.readouterr().err
    cfg = _resolve("--config", str(DI3), "--batch_size", "2")  # the flag over the file's batch_size
    assert cfg.batch_tokens == 2048
    assert ("command line: --batch_size 2 -> batch_tokens = 2 x max_length 1024 = 2048"
            in capsys.readouterr().err)


def test_keys_a_seed_config_leaves_out_take_the_seeds_defaults(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"path": "m"}, "training": {"max_length": 100}}))
    cfg = _resolve("--config", str(path), "--lora")  # a flag still wins
    assert _changed(cfg) == {"model": "m", "max_length": 100, "learning_rate": 1e-05, "weight_decay": 0.01,
                             "warmup_steps": 100, "gradient_accumulation_steps": 8, "batch_tokens": 200}
    assert f"{path}: training.batch_size absent: the seeds' scripts' default 2 applies\n" in capsys.readouterr().err


def test_a_test_path_and_a_list_of_target_modules(tmp_path, capsys):
    cfg = _resolve("--config", str(RPC), "--ablation_config", "profile_and_context")
    assert (cfg.ablation, cfg.learning_rate, cfg.max_length, cfg.batch_tokens, cfg.gradient_accumulation_steps) == (
        "profile_and_context", 5e-06, 8192, 8192, 64)
    assert (f"{RPC}: data.test_path ignored: the seeds' separate test file for their inference scripts; usertwin's "
            "test targets are the latest test_ratio of each user's timeline in data\n") in capsys.readouterr().err
    seed = json.loads(DI3.read_text())
    seed["model"]["lora_config"]["target_modules"] = ["q_proj", "v_proj"]
    # an entry's parts decide, whatever its name; a part it leaves out is shown, as the seeds read it
    seed["ablation_configs"] = {"history_only": {"use_profile": False, "use_history": True}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(seed))
    cfg = _resolve("--config", str(path), "--ablation_config", "history_only")
    assert (cfg.lora_target_modules, cfg.ablation) == ("q_proj,v_proj", "history_and_context")
    # a name the file has no entry for is usertwin's ablation of that name
    assert _resolve("--config", str(path), "--ablation_config", "profile_only").ablation == "profile_only"
    assert (f"{path}: ablation_configs has no entry 'profile_only' (history_only): --ablation_config profile_only "
            "applies as usertwin defines it\n") in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (lambda s: s["training"].update(fp16=True), "unknown key 'training.fp16' of a seed config"),
    (lambda s: s["model"]["lora_config"].update(bias="all"), "model.lora_config.bias 'all' cannot be honoured"),
    (lambda s: s.update(extra={}), "unknown top-level key 'extra' of a seed config"),
    (lambda s: s["training"].update(batch_size=0), "training.batch_size must be a whole number at least 1, got 0"),
    (lambda s: s["training"].update(max_length="long"), "key 'max_length' must be int, got str 'long'"),
])
def test_a_bad_seed_config_names_the_file_and_key(tmp_path, capsys, change, message):
    seed = json.loads(DI3.read_text())
    change(seed)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(seed))
    assert main(["train", "--config", str(path), "--print_config"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"usertwin train: error: {path}") and message in err


@pytest.mark.skipif(not MIRROR.is_dir(), reason="the seed repository mirror is not on this machine")
def test_every_seed_config_of_the_seed_repository_resolves(capsys):
    names = subprocess.run(["git", "-C", str(MIRROR), "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True,
                           text=True, check=True).stdout.split()
    configs = [n for n in names if n.startswith("config_") and n.endswith(".json")]
    assert len(configs) == 38
    for name in configs:
        seed = json.loads(subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{name}"], capture_output=True,
                                         text=True, check=True).stdout)
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"seedcfg-{os.getpid()}.json"
        path.write_text(json.dumps(seed))
        try:
            cfg = _resolve("--config", str(path), "--ablation_config", "history_only")
        finally:
            path.unlink()
        training = seed["training"]
        assert cfg.model == seed["model"]["path"] and cfg.data == seed["data"]["train_path"], name
        assert cfg.batch_tokens == training["batch_size"] * training["max_length"], name
        assert (cfg.gradient_accumulation_steps, cfg.warmup_steps, cfg.max_length) == (
            training["gradient_accumulation_steps"], training["warmup_steps"], training["max_length"]), name
        assert cfg.learning_rate == training.get("learning_rate", 1e-5), name
        assert cfg.lora == seed["model"].get("use_lora", False) and cfg.ablation == "history_only", name
    capsys.readouterr()


def test_print_config_is_yaml_that_resolves_to_the_same_settings(tmp_path, capsys):
    # prepare takes no training flag (--lr): only the data's
    for command, flags in (("train", ["--lr", "1e-4"]), ("prepare", [])):
        assert main([command, "--config", str(DI3), "--ablation_config", "history_only", *flags,
                     "--print_config"]) == 0
        out = capsys.readouterr().out
        values = yaml.safe_load(out)
        # the settings the run uses: resolved, then the seed script's own split and targets (val_ratio 0.1)
        args = build_parser().parse_args([command, "--config", str(DI3), "--ablation_config", "history_only", *flags])
        cfg = seed_training(resolve(args), args)
        assert cfg.val_ratio == 0.1 and values == cfg.to_dict() and list(values) == list(Config().to_dict())
        ours = tmp_path / f"{command}.yaml"
        ours.write_text(out)
        assert _resolve("--config", str(ours), command=command) == cfg  # ours too, read back
    assert main(["train", "--config", str(ours), "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == cfg.to_dict()


def test_the_seeds_flag_names_and_values(capsys):
    cfg = _resolve("--data_file", "r.json", "--warmup_steps", "7", "--history_strategy", "random_targets",
                   "--max_samples_per_user", "2", "--ablation_config", "baseline", "--prompt_style", "lovink")
    assert (cfg.data, cfg.warmup_steps, cfg.history_strategy, cfg.max_samples_per_user, cfg.ablation,
            cfg.prompt_style) == ("r.json", 7, "all_previous", 2, "context_only", "lovink")
    assert capsys.readouterr().err.splitlines() == [
        "command line: history_strategy random_targets -> all_previous (the seeds' random_targets drew "
        "max_samples_per_user random targets per user, each with every earlier item as history: all_previous with "
        "max_samples_per_user)",
        "command line: ablation baseline -> context_only (the seeds' baseline (MovieReview) showed neither profile "
        "nor history, only the item (and its context))"]
    from usertwin.config import from_mapping

    assert from_mapping({"history_strategy": "random_targets"}, "c.yaml").history_strategy == "all_previous"
    assert _resolve("--batch_size", "3", "--max_length", "100").batch_tokens == 300
    assert main(["train", "--batch_size", "0", "--print_config"]) == 2
    assert "--batch_size must be at least 1, got 0" in capsys.readouterr().err
    predict = build_parser().parse_args(["predict", "--run", "r", "--eval_batch_size", "5"])
    assert predict.gen__batch_size == 5


def test_warmup_steps_overrides_warmup_ratio():
    import torch

    from usertwin.train.trainer import _optimizer

    params = [torch.nn.Parameter(torch.zeros(1))]
    for cfg, first in ((Config(learning_rate=1.0, warmup_steps=4, lr_scheduler="constant_with_warmup"), 0.25),
                       (Config(learning_rate=1.0, warmup_ratio=0.5, lr_scheduler="constant_with_warmup"), 0.5)):
        optimizer, scheduler = _optimizer(cfg, params, total_steps=4, lr=cfg.learning_rate)
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr() == [first]  # after one step: 1/4 of the way, or 1/2 (warm-up of 2 steps)


def test_gpu_and_local_rank_set_what_cuda_and_accelerate_read(monkeypatch, capsys):
    for name in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK"):  # set, then removed: monkeypatch restores either way
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    select_devices("1, 3", 2)
    assert (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["LOCAL_RANK"]) == ("1,3", "2")
    with pytest.raises(UsertwinError, match="--local_rank 1 disagrees with LOCAL_RANK=2 set by the launcher"):
        select_devices(None, 1)
    select_devices(None, -1)  # the launchers' "not launched"
    assert os.environ["LOCAL_RANK"] == "2"
    assert main(["train", "--gpu", "cuda:1", "--local-rank=0"]) == 2
    assert capsys.readouterr().err == ("usertwin train: error: command line: --gpu takes GPU numbers separated by "
                                       "commas (e.g. 1 or 0,1), got 'cuda:1'\n")


def test_the_seeds_deepspeed_zero3_config_is_filled_from_the_settings(tmp_path):
    ds = read_deepspeed_config(DATA / "seed_ds_config_zero3.json")
    filled = fill_deepspeed_auto(ds, Config(gradient_accumulation_steps=4, max_grad_norm=0.5), world_size=2)
    assert filled == {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 4,
        "gradient_clipping": 0.5, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": 1e5, "stage3_max_live_parameters": 1e9,
                              "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
        "steps_per_print": 10}
    assert ds["train_batch_size"] == "auto"  # a copy: the file's dict is unchanged
    ours = read_deepspeed_config(ROOT / "configs/deepspeed/zero3.json")
    filled = fill_deepspeed_auto(ours, Config(gradient_accumulation_steps=3), world_size=4)
    assert [filled.get(k) for k in ("train_micro_batch_size_per_gpu", "train_batch_size",
                                    "gradient_accumulation_steps", "gradient_clipping")] == [1, None, 3, 1.0]
    # a number must be what the settings give: micro-batch x accumulation x processes
    assert fill_deepspeed_auto({**ours, "train_batch_size": 12}, Config(gradient_accumulation_steps=3), 4) == filled | {
        "train_batch_size": 12}
    with pytest.raises(UsertwinError, match="train_batch_size is 8, but usertwin's train_micro_batch_size_per_gpu x "
                                            "gradient_accumulation_steps x processes gives 12"):
        fill_deepspeed_auto({**ours, "train_batch_size": 8}, Config(gradient_accumulation_steps=3), 4)
    with pytest.raises(UsertwinError, match="ds.json: gradient_accumulation_steps is 8, but usertwin's "
                                            "gradient_accumulation_steps gives 2"):
        fill_deepspeed_auto({**ds, "gradient_accumulation_steps": 8}, Config(gradient_accumulation_steps=2), 1,
                            "ds.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  \"train_batch_size\": auto\n}")
    with pytest.raises(UsertwinError, match=f"{bad}:2:23: not valid JSON"):
        read_deepspeed_config(bad)


def test_lovink_style_writes_the_seeds_lovink_prompt():
    tl = rating_timeline(4)
    text = Renderer(RenderSettings(prompt_style="lovink", history_layout="block"), None).render(tl, [0, 1, 2], [2]).text
    assert text == ("### User profile\n<user_profile>\n{\n  \"name\": \"u1\",\n  \"age\": 30\n}\n</user_profile>\n\n"
                    "### Task\nPredict ratings.\n\n### History\n<speaking_style_examples>\n"
                    "  <sample>Movie 0 (1990) (Drama): 1.0</sample>\n  <sample>Movie 1 (1991) (Drama): 1.5</sample>\n"
                    "</speaking_style_examples>\n\nMovie 2 (1992) (Drama):\n"
                    "Predict the rating this user gives to this movie:\n2.0")


def test_a_seed_config_trains_end_to_end(tmp_path, tiny_model_dir, capsys):
    """A seed config with its model and data given as the seeds' flags, --batch_size and the lovink style: the
    run's config.yaml holds what they became, and training runs."""
    data = write_rating_users(tmp_path / "r.jsonl", (12, 9), lambda u, i: f"Movie {i} (2000) (Drama): ",
                              lambda u, i: (u + i) % 5 + 1)
    out = tmp_path / "run"
    code = main(["train", "--config", str(DI3), "--ablation_config", "history_only", "--data_file", str(data),
                 "--model_path", str(tiny_model_dir), "--output_dir", str(out), "--max_length", "128",
                 "--batch_size", "2", "--prompt_style", "lovink", "--max_steps", "2", "--warmup_steps", "1",
                 "--gradient_accumulation_steps", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load(RunDir(out).config.read_text())
    assert {k: saved[k] for k in ("ablation", "batch_tokens", "prompt_style", "warmup_steps", "lora_r", "save_steps")} == {
        "ablation": "history_only", "batch_tokens": 256, "prompt_style": "lovink", "warmup_steps": 1, "lora_r": 32,
        "save_steps": 200}


def test_the_seeds_deepspeed_config_with_auto_batch_entries_trains_on_two_processes(tmp_path, tiny_model_dir):
    """The seeds' ds_config_zero3.json ("auto" micro-batch, train batch, accumulation and clipping) through
    accelerate, which cannot fill the micro-batch without a dataloader: usertwin fills them. ZeRO-3 on gloo
    (DeepSpeed's CPU accelerator); DeepSpeed is not a dependency (see benchmarks/multi_gpu.md)."""
    import importlib.util
    import sys

    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed: pip install deepspeed (offline: build its wheels as "
                    "benchmarks/multi_gpu.md's Runbook shows)")
    data = write_rating_users(tmp_path / "r.jsonl", (20, 16), lambda u, i: f"Movie {i} (2000) (Drama): ",
                              lambda u, i: (u + i) % 5 + 1)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561",
                          "-m", "usertwin.cli", "train", "--data", str(data), "--model", str(tiny_model_dir),
                          "--output_dir", str(out), "--max_length", "128", "--batch_size", "1", "--no_lora",
                          "--max_steps", "3", "--gradient_accumulation_steps", "2", "--dtype", "float32",
                          "--deepspeed", str(DATA / "seed_ds_config_zero3.json"), "--no-progress"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(RunDir(out).summary.read_text())
    assert summary["steps"] == 3


def test_the_seed_training_scripts_data_file_flags_are_taken_and_said(capsys):
    """--template_filename (14 of the 16 training scripts), --load_from_saved, --skip_save_processed_data: each
    accepted with one line saying why it changes nothing; a template file with the detailed style is refused."""
    from usertwin.cli import main

    assert main(["train", "--template_filename", "prompt_template.md", "--load_from_saved",
                 "--skip_save_processed_data", "--print_config"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "note: --template_filename prompt_template.md has no effect: the seeds read it only with --prompt_style "
        "detailed (here simple)",
        "note: --load_from_saved has no effect: the prepare cache (cache_dir) is reused whenever the data and the "
        "settings that shape it are unchanged",
        "note: --skip_save_processed_data has no effect: usertwin writes no sample files, only its prepare cache"]
    assert main(["train", "--template_filename", "t.md", "--prompt_style", "detailed", "--print_config"]) == 2
    assert ("--template_filename t.md: usertwin does not read the seeds' template files; --prompt_style detailed "
            "writes its own detailed template") in capsys.readouterr().err


def _douban_scenario(folder, users: int = 10, reviews: int = 24):
    """A scenario folder of Douban-style reviewers (train.json, a test file), and the DMSC guide's seed config."""
    from helpers import raw_record, write_records

    folder.mkdir()
    recs = [raw_record(f"u{u}", [{"continuation_prefix": f"电影{i}: ", "continuation": f"第{i}条影评，还不错",
                                  "timestamp": 1_600_000_000 + i * 86400} for i in range(reviews)])
            for u in range(users)]
    for rec in recs:
        rec["task"]["task_behavior_collections"][0]["type"] = "movie_review"
    write_records(folder / "train.json", recs, jsonl=False)
    (folder / "test_leaderboard.json").write_text("[]")
    config = folder.parent / "config_DMSC_30B.json"
    config.write_text(json.dumps({"model": {"path": "unused"}, "data": {"train_path": str(folder / "train.json")},
                                  "training": {"max_length": 512}}))
    return folder / "train.json", config


def test_the_dmsc_guide_trains_each_users_last_reviews(tmp_path, tokenizer_dir, capsys):
    """The DMSC guide's flags (--one_sample_per_user --val_ratio 0.1) on a scenario's train.json: no test split
    (the scenario's test file holds the targets), each training user's targets are their last 2 reviews (the
    seeds' --one_sample_per_user was --max_samples_per_user 2, the last N), validation holds out whole users."""
    from usertwin.cli import main

    data, config = _douban_scenario(tmp_path / "DMSC")
    dump = tmp_path / "targets.jsonl"
    assert main(["inspect", "--config", str(config), "--data", str(data), "--model", str(tokenizer_dir),
                 "--ablation_config", "profile_and_history", "--one_sample_per_user", "--val_ratio", "0.1",
                 "--split", "train", "-n", "0", "--dump", str(dump), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (f"note: {data} is a scenario's train.json (its targets are {data.parent / 'test_leaderboard.json'}): no "
            "test split of it, as the research scripts made none (test_ratio 0; --test_ratio R holds one out)") in err
    assert ("note: config_DMSC_30B.json is the seeds' DMSC config; as its script (train_distributed_MovieReview.py) "
            "did, --one_sample_per_user: each user's last 2 reviews (--max_samples_per_user 2 --target_draw latest); "
            "validation holds out whole users (--split_mode user)") in err
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert rows and {r["target_index"] for r in rows} == {22, 23}
    assert len({r["user"] for r in rows}) == 9  # 1 of 10 users is validation


def test_several_rows_per_micro_batch_on_a_cpu_are_said(monkeypatch, capsys):
    """The seeds' batch_size 8 on a CPU: 8 x max_length tokens a micro-batch; said, with the same step in less
    memory."""
    import torch

    from usertwin.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--batch_size", "8", "--max_length", "512", "--print_config"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "note: on a CPU, batch_tokens 4096 (8 x max_length 512) packs that many tokens into one micro-batch: its peak "
        "memory grows with them and its speed does not (one step on 5 users: 12.5 GB at the seeds' batch_size 8, "
        "2.95 GB at 1, the same tokens/s); pass --batch_size 1 --gradient_accumulation_steps 8 for the same step in "
        "less memory")
    assert main(["train", "--batch_size", "1", "--max_length", "512", "--print_config"]) == 0
    assert "on a CPU" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def movielens_seed_config(tmp_path_factory):
    """The first 5 users of MovieLens ml-latest-small (232, 29, 39, 216, 44 ratings) and the seeds' MovieLens
    config pointing at them."""
    from conftest import shared

    d = tmp_path_factory.mktemp("ml5seed")
    assert main(["convert", "movielens", str(shared("movielens", "ml-latest-small")), "-o", str(d / "all.jsonl"),
                 "--no-progress"]) == 0
    lines = (d / "all.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:5]
    (d / "ml5.jsonl").write_text("".join(lines), encoding="utf-8")
    config = d / "config_MovieLens.json"
    config.write_text(json.dumps({"model": {"path": "unused"}, "data": {"train_path": str(d / "ml5.jsonl")},
                                  "training": {"max_length": 1024}}))
    return config


def _targets_per_user(config, tokenizer_dir, tmp_path, split, *flags) -> dict:
    dump = tmp_path / f"{split}.jsonl"
    assert main(["inspect", "--config", str(config), "--model", str(tokenizer_dir), "--crowd_context", "none",
                 "--cache_dir", str(tmp_path / "cache"), "--split", split, "-n", "0", "--dump", str(dump),
                 "--no-progress", *flags]) == 0
    out = {}
    for row in map(json.loads, dump.read_text().splitlines()):
        out[row["user"]] = out.get(row["user"], 0) + 1
    return out


@pytest.mark.parametrize("flags, train", [
    # every item but the validation tenth, counted as the script did: int(n * 0.9) (round(n * 0.1) would leave
    # 209 and 40 for users 1 and 5)
    ((), {"1": 208, "2": 26, "3": 35, "4": 194, "5": 39}),
    # the script drew 2 per user and split them 1 / 1 (int(2 * 0.9) = 1); 20 drawn: 18 trained on
    (("--max_samples_per_user", "2"), dict.fromkeys("12345", 1)),
    (("--max_samples_per_user", "20"), {"1": 18, "2": 18, "3": 18, "4": 18, "5": 18}),
    # a flag the user gives wins
    (("--max_samples_per_user", "2", "--target_draw", "random", "--val_ratio", "0.15"), dict.fromkeys("12345", 2)),
])
def test_a_seed_movielens_config_trains_the_targets_its_script_did(movielens_seed_config, tokenizer_dir, tmp_path,
                                                                   capsys, flags, train):
    """train_distributed_MovieLens.py (and every seed script but DMSC's): no test split, --val_ratio 0.1,
    --max_samples_per_user N drawn at random (sample_seed 42) before its validation split took a tenth of them."""
    assert _targets_per_user(movielens_seed_config, tokenizer_dir, tmp_path, "train", *flags) == train
    err = capsys.readouterr().err
    if "--val_ratio" not in flags:
        assert ("note: config_MovieLens.json is the seeds' MovieLens config; as its script "
                "(train_distributed_MovieLens.py) did, validation n - int(n x 0.9) of a user's n items (--val_ratio "
                "0.1 --val_rounding seeds); no test split (--test_ratio 0)") in err
    if flags[:2] == ("--max_samples_per_user", "2") and len(flags) == 2:
        assert ("--max_samples_per_user 2: 1 training target per user drawn at random with sample_seed (it drew 2 "
                "and held 0.1 of them out for validation; --max_samples_per_user 1; give --target_draw random to "
                "train on 2)") in err
    assert err.count("is the seeds' MovieLens config") == 1  # said once


def test_a_seed_config_validates_on_each_users_latest_tenth(movielens_seed_config, tokenizer_dir, tmp_path):
    """The script's count of validation items (n - int(n * 0.9)), but each user's latest, not random ones."""
    assert _targets_per_user(movielens_seed_config, tokenizer_dir, tmp_path, "val") == {
        "1": 24, "2": 3, "3": 4, "4": 22, "5": 5}
    assert _targets_per_user(movielens_seed_config, tokenizer_dir, tmp_path, "test") == {}


@pytest.mark.parametrize("flags, train", [((), [27, 28, 28, 28, 28]), (("--max_samples_per_user", "2"), [1] * 5),
                                          (("--max_samples_per_user", "10"), [9] * 5)])
def test_a_seed_dialogue_config_trains_the_targets_its_script_did(tokenizer_dir, tmp_path, capsys, flags, train):
    """The seeds' own extracted RealPersonaChat samples (5 users, 31 or 32 lines each) under their config: one
    target per sample, as data_loader.extract_training_samples made them; int(n * 0.9) trained on; N drawn -> int(N
    * 0.9)."""
    from conftest import shared

    data = tmp_path / "rpc.jsonl"
    assert main(["convert", "seed-samples", str(shared("seed_examples", "all_samples.json")), "-o", str(data),
                 "--no-progress"]) == 0
    counts = _targets_per_user(RPC, tokenizer_dir, tmp_path, "train", "--data", str(data), *flags)
    assert sorted(counts.values()) == train
    assert capsys.readouterr().err.count("is the seeds' RealPersonaChat config; as its script "
                                         "(train_distributed_RealPersonaChat.py) did") == 1


@pytest.mark.parametrize("n, nearest, seeds", [(0, 0, 0), (1, 0, 0), (2, 0, 1), (10, 1, 1), (24, 2, 3), (25, 3, 3)])
def test_val_rounding_seeds_counts_validation_as_split_train_val(n, nearest, seeds):
    from usertwin.config import SplitSettings
    from usertwin.data.timeline import split_labels

    for rounding, expected in (("nearest", nearest), ("seeds", seeds)):
        labels = split_labels(n, SplitSettings(val_ratio=0.1, test_ratio=0.0, val_rounding=rounding))
        assert labels.count("val") == expected and labels.count("train") == n - expected


def test_a_seed_dialogue_config_makes_no_target_of_a_line_after_the_users_own_turn(tokenizer_dir, tmp_path, capsys):
    """data_loader.extract_training_samples (every dialogue script's) made no sample of an item whose context
    ends with the user's own turn: Bo's second line of Chat_1 (after his own) is no target under config_REALTALK;
    usertwin keeps it otherwise (the twin continues its own turn)."""
    data = tmp_path / "rt.jsonl"
    assert main(["convert", "realtalk", str(DATA / "realtalk"), "-o", str(data), "--no-progress"]) == 0
    config = tmp_path / "config_REALTALK.json"
    config.write_text(json.dumps({"model": {"path": "unused"}, "data": {"train_path": str(data)},
                                  "training": {"max_length": 1024}}))
    seeds = [_targets_per_user(config, tokenizer_dir, tmp_path, split) for split in ("train", "val")]
    assert ("no training or validation target whose context ends with the user's own turn "
            "(--skip_own_turn_targets)") in capsys.readouterr().err
    kept = [_targets_per_user(config, tokenizer_dir, tmp_path, split, "--skip_own_turn_targets", "false")
            for split in ("train", "val")]
    # 3, 4 and 2 lines: one of each user validates (n - int(n * 0.9)), the rest train
    assert kept == [{"Ann": 2, "Bo": 3, "Cy": 1}, {"Ann": 1, "Bo": 1, "Cy": 1}]
    assert seeds == [{"Ann": 2, "Bo": 2, "Cy": 1}, {"Ann": 1, "Bo": 1, "Cy": 1}]  # Bo: 3 training lines less that one


@pytest.mark.parametrize("name, script, dialogue", [
    ("config_MovieLens_30B.json", "train_distributed_MovieLens.py", False),
    ("config_Chameleons.json", "train_distributed_Chameleons.py", True),
    ("config_LovinkDialogue.json", "train_distributed_LovinkDialogue.py", True),
    ("config_LovinkQuestionnaire.json", "train_distributed_LovinkQuestionnaire.py", False),
    ("config_PERSONA_Bench.json", "train_distributed_PERSONA_Bench.py", True),
    ("config_REALTALK_8B.json", "train_distributed_REALTALK.py", True),
    ("config_RealPersonaChat.json", "train_distributed_RealPersonaChat.py", True),
])
def test_each_seed_systems_config_brings_its_training_scripts_targets(tmp_path, capsys, name, script, dialogue):
    config = tmp_path / name
    config.write_text(json.dumps({"model": {"path": "m"}, "data": {"train_path": "records.jsonl"}}))
    assert main(["train", "--config", str(config), "--max_samples_per_user", "5", "--print_config"]) == 0
    out, err = capsys.readouterr()
    values = yaml.safe_load(out)
    assert (values["val_ratio"], values["val_rounding"], values["test_ratio"], values["max_samples_per_user"],
            values["target_draw"], values["skip_own_turn_targets"]) == (0.1, "seeds", 0.0, 4, "random", dialogue)
    assert values["sample_seed"] == 42  # the scripts' --sample_seed default, usertwin's already
    assert err.count(f"as its script ({script}) did") == 1
    assert "--max_samples_per_user 5: 4 training targets per user drawn at random" in err
