"""`usertwin train --config CFG.yaml [--resume | --overwrite]`."""

from __future__ import annotations

NAME = "train"
HELP = "fine-tune a model into user twins (LoRA or full); resumable"

READS = "*"  # every setting of usertwin.config


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags, add_print_config_flag

    add_config_flags(p, reads=READS)
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    p.add_argument("--batch_size", dest="batch_size_rows", type=int, metavar="N",
                   help="the research scripts' per-device batch size (N sequences of at most max_length tokens per "
                        "micro-batch): sets batch_tokens = N x max_length, so a micro-batch holds up to that many "
                        "tokens, packed; an explicit --batch_tokens wins")
    add_print_config_flag(p)
    add_device_flags(p)
    add_seed_data_flags(p)


def add_seed_data_flags(p) -> None:
    """The research training scripts' flags about their own files (train_distributed_*.py), so their commands
    run unchanged: each is said, in one line, to be what usertwin does anyway or what it cannot read."""
    g = p.add_argument_group("the research scripts' data-file flags")
    g.add_argument("--template_filename", metavar="FILE",
                   help="the seeds' detailed-prompt template file: no effect unless --prompt_style detailed (as in "
                        "the seeds); with it, refused: usertwin's detailed style is its own template")
    g.add_argument("--load_from_saved", action="store_true",
                   help="the seeds' reload of all_samples.json: usertwin reuses its prepare cache (cache_dir) "
                        "whenever the data and the settings that shape it are unchanged (no effect)")
    g.add_argument("--skip_save_processed_data", action="store_true",
                   help="the seeds' skip of writing train_samples.json / all_samples.json: usertwin writes no "
                        "sample files, only its prepare cache (no effect)")


def seed_data_notes(args, prompt_style: str) -> list[str]:
    """What each research-script data-file flag given amounts to here (see add_seed_data_flags)."""
    from usertwin.errors import UsertwinError

    notes = []
    if args.template_filename is not None:
        if prompt_style == "detailed":
            raise UsertwinError(f"--template_filename {args.template_filename}: usertwin does not read the seeds' "
                                "template files; --prompt_style detailed writes its own detailed template "
                                "(text/styles.py: a style of your own is one registered class)")
        notes.append(f"note: --template_filename {args.template_filename} has no effect: the seeds read it only "
                     f"with --prompt_style detailed (here {prompt_style})")
    if args.load_from_saved:
        notes.append("note: --load_from_saved has no effect: the prepare cache (cache_dir) is reused whenever the "
                     "data and the settings that shape it are unchanged")
    if args.skip_save_processed_data:
        notes.append("note: --skip_save_processed_data has no effect: usertwin writes no sample files, only its "
                     "prepare cache")
    return notes


def add_device_flags(p, launched: bool = True) -> None:
    """--gpu (the research scripts' device choice) and, for a command that launchers start, --local_rank."""
    p.add_argument("--gpu", metavar="IDS", help="GPUs this command may use, as CUDA_VISIBLE_DEVICES (e.g. 1 or 0,1); "
                                                "set before CUDA starts, so cuda:0 is the first of them")
    if not launched:
        return
    p.add_argument("--local_rank", type=int, metavar="N",
                   help="passed by torch.distributed.launch / deepspeed launchers: this process's GPU on its node; "
                        "becomes LOCAL_RANK (which accelerate reads) when the launcher did not set it")


def seed_training(cfg, args):
    """What the research scripts did with the same flags and data, where the data or a seed config says which
    system it is (each said once on stderr): a scenario's train.json holds no test split (its targets are the
    scenario's test file); the DMSC / MovieReview script took each user's last N reviews as targets, every other
    drew N at random, validated on a tenth of them and (dialogue) skipped lines after the user's own turn."""
    import sys

    notes = []
    cfg = _scenario_train_split(cfg, args, notes)
    cfg = _seed_targets(cfg, args, notes)
    for note in notes:
        print(note, file=sys.stderr)
    return cfg


def _given_anywhere(args, key: str) -> bool:
    """`key` given as a flag or written in the --config file."""
    from pathlib import Path

    from usertwin.config import given_settings

    return key in given_settings(args) or bool(getattr(args, "config", None)) and key in Path(args.config).read_text(
        encoding="utf-8-sig")


def _scenario_train_split(cfg, args, notes: list):
    import dataclasses
    from pathlib import Path

    from usertwin.rundir import ScenarioDir

    data = Path(cfg.data) if cfg.data else None
    scenario = ScenarioDir(data.parent) if data else None
    if scenario is None or data.name != scenario.train.name or not scenario.test.is_file() \
            or cfg.train_ratio is not None or _given_anywhere(args, "test_ratio"):
        return cfg
    notes.append(f"note: {data} is a scenario's train.json (its targets are {scenario.test}): no test split of it, "
                 "as the research scripts made none (test_ratio 0; --test_ratio R holds one out)")
    return dataclasses.replace(cfg, test_ratio=0.0)


def _seed_system(args) -> str | None:
    """The research system whose seed config is --config (config_DMSC_30B.json: DMSC); None for any other."""
    from pathlib import Path

    from usertwin import seedconfig
    from usertwin.config import load_yaml

    path = getattr(args, "config", None)
    system = seedconfig.system_named(Path(path).name) if path else None
    return system if system and seedconfig.is_seed_config(load_yaml(path)) else None


def _seed_targets(cfg, args, notes: list):
    """The training targets and split of the seed system's own training script, where --config is its config."""
    from usertwin import seedconfig

    system = _seed_system(args)
    if system is None:
        return cfg
    if system in seedconfig.LATEST_DRAW:
        return _latest_targets(cfg, args, notes)
    return _drawn_then_split(cfg, args, system, notes)


def _drawn_then_split(cfg, args, system: str, notes: list):
    """Every script but DMSC's kept all of a user's samples (or drew --max_samples_per_user N of them at random
    with --sample_seed), made no test split and kept int(n * (1 - --val_ratio 0.1)) of a user's n kept samples
    for training, the rest for validation. usertwin's validation stays each user's latest items (README)."""
    import dataclasses
    from pathlib import Path

    from usertwin import seedconfig

    said = []
    change = _seed_split(cfg, args, said)
    change.update(_seed_draw(cfg, args, change.get("val_ratio", cfg.val_ratio), said))
    if system in seedconfig.DIALOGUE_SYSTEMS and not _given_anywhere(args, "skip_own_turn_targets"):
        change["skip_own_turn_targets"] = True
        said.append("no training or validation target whose context ends with the user's own turn "
                    "(--skip_own_turn_targets)")
    if said:
        notes.append(f"note: {Path(args.config).name} is the seeds' {system} config; as its script "
                     f"({seedconfig.TRAINING_SCRIPTS[system]}) did, " + "; ".join(said))
    return dataclasses.replace(cfg, **change)


def _seed_split(cfg, args, said: list) -> dict:
    """The seed scripts' split: --val_ratio 0.1 counted as their split_train_val counted it, no test split."""
    from usertwin.seedconfig import SEED_VAL_RATIO

    change = {}
    if cfg.train_ratio is None and not _given_anywhere(args, "val_ratio"):
        change["val_ratio"] = SEED_VAL_RATIO
    if not _given_anywhere(args, "val_rounding"):
        change["val_rounding"] = "seeds"
    if change:
        v = change.get("val_ratio", cfg.val_ratio)
        said.append(f"validation n - int(n x {1 - v:g}) of a user's n items (--val_ratio {v:g} --val_rounding "
                    f"{change.get('val_rounding', cfg.val_rounding)})")
    if cfg.train_ratio is None and cfg.test_ratio and not _given_anywhere(args, "test_ratio"):
        change["test_ratio"] = 0.0
        said.append("no test split (--test_ratio 0)")
    return change


def _seed_draw(cfg, args, val_ratio: float, said: list) -> dict:
    """--max_samples_per_user N: the script drew N and split those, so int(N * (1 - v)) (at least 1) trained."""
    from usertwin.seedconfig import seed_training_targets

    n = cfg.max_samples_per_user
    if n is None or cfg.one_sample_per_user or _given_anywhere(args, "target_draw"):
        return {}
    kept = seed_training_targets(n, val_ratio)
    said.append(f"--max_samples_per_user {n}: {kept} training target{'s' * (kept != 1)} per user drawn at random "
                f"with sample_seed (it drew {n} and held {val_ratio:g} of them out for validation; "
                f"--max_samples_per_user {kept}; give --target_draw random to train on {n})")
    return {"max_samples_per_user": kept}


def _latest_targets(cfg, args, notes: list):
    import dataclasses
    from pathlib import Path

    if _given_anywhere(args, "target_draw"):
        return cfg
    path = args.config
    if cfg.one_sample_per_user:
        cfg = dataclasses.replace(cfg, one_sample_per_user=False, max_samples_per_user=2)
        what = "--one_sample_per_user: each user's last 2 reviews (--max_samples_per_user 2 --target_draw latest)"
    elif cfg.max_samples_per_user is not None:
        what = (f"--max_samples_per_user {cfg.max_samples_per_user}: each user's last {cfg.max_samples_per_user} "
                "reviews (--target_draw latest)")
    else:
        return cfg
    split = {}
    if not _given_anywhere(args, "split_mode"):  # its script split the list of samples, whole users at its end
        split, what = {"split_mode": "user"}, what + "; validation holds out whole users (--split_mode user)"
    notes.append(f"note: {Path(path).name} is the seeds' DMSC config; as its script (train_distributed_MovieReview.py) "
                 f"did, {what}")
    return dataclasses.replace(cfg, target_draw="latest", **split)


def cpu_rows_note(cfg) -> list[str]:
    """On a CPU, a micro-batch of several max_length rows (the seeds' batch_size N becomes N x max_length tokens)
    costs memory and gains no speed: said, with what to pass instead."""
    import torch

    tokens = cfg.batch_tokens
    if torch.cuda.is_available() or not isinstance(tokens, int) or tokens <= cfg.max_length:
        return []
    return [f"note: on a CPU, batch_tokens {tokens} ({tokens / cfg.max_length:g} x max_length {cfg.max_length}) "
            "packs that many tokens into one micro-batch: its peak memory grows with them and its speed does not "
            "(one step on 5 users: 12.5 GB at the seeds' batch_size 8, 2.95 GB at 1, the same tokens/s); pass "
            f"--batch_size 1 --gradient_accumulation_steps {cfg.gradient_accumulation_steps * tokens // cfg.max_length} "
            "for the same step in less memory"]


def print_config(cfg) -> int:
    """--print_config: the resolved settings as YAML, with the unit the run will really use (a setting only the
    sample unit honours switches it, said on stderr as training says it)."""
    import sys

    from usertwin.config import to_yaml
    from usertwin.data.applies import switched_unit

    cfg, notices = switched_unit(cfg)
    for notice in notices:
        print(notice, file=sys.stderr)
    print(to_yaml(cfg), end="")
    return 0


def run(args) -> int:
    import sys

    if args.batch_size_rows is not None and args.batch_size_rows < 1:
        from usertwin.errors import UsertwinError

        raise UsertwinError(f"command line: --batch_size must be at least 1, got {args.batch_size_rows}")
    from usertwin.config import resolve
    from usertwin.train.setup import select_devices

    cfg = seed_training(resolve(args), args)
    for note in seed_data_notes(args, cfg.prompt_style) + cpu_rows_note(cfg):
        print(note, file=sys.stderr)
    if args.print_config:
        return print_config(cfg)
    select_devices(args.gpu, args.local_rank)
    from usertwin.eval.valrating import val_rating_rmse
    from usertwin.train.trainer import train

    train(cfg, overwrite=args.overwrite, resume=args.resume, progress=args.progress, debug=args.debug,
          val_scorer=val_rating_rmse)
    return 0
