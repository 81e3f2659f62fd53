"""`usertwin predict --run RUN [--split test]`: generate and score every target of a split (resumable);
`usertwin predict --scenario DIR -o OUT_DIR`: fill a scenario's test_leaderboard.json (usertwin.eval.scenario)."""

from __future__ import annotations

from usertwin.cli.twinflags import VLLM_FLAGS  # a constant: the module imports nothing heavy

NAME = "predict"
HELP = "generate and score every target of a split (resumable)"

# The settings predict reads (usertwin.config's sections: "*" for every key of one, else the keys), as its code
# path reads them: the data as the twin's training prepared it (Twin.prepare, sequences/prepare.py) and rendered
# (text/), the split, and how the weights load (twin/engine.py: dtype, remote code; attention is always sdpa).
# Any other setting given as a flag is refused, saying UNREAD (by key, else section, else "*"); a --config file
# (or the run's config.yaml) may hold it.
READS = {"data": "*", "split": "*", "sampling": "*", "render": "*", "model": ("dtype", "trust_remote_code"),
         "output": ("cache_dir",)}
UNREAD = {"*": "uses the weights as they are (a trained run's, or --model's)",
          "attention": "scores with sdpa attention (its block masks need it)",
          "output_dir": "writes to -o (default RUN/predictions-SPLIT.jsonl)"}

# setting names that are the research scripts' inference flags here: --output_dir is -o (add_seed_flags), not the
# run directory setting
SEED_NAMES = frozenset({"--output_dir"})


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags, add_generate_flags, generate_flag_names

    add_config_flags(p, leave=generate_flag_names() | SEED_NAMES, reads=READS)
    p.add_argument("--run", help="a train run directory: its config and best weights")
    p.add_argument("--split", choices=("train", "val", "test"), help="the split to predict (default test)")
    p.add_argument("-o", "--output", help="predictions file (default RUN/predictions-SPLIT.jsonl); with --scenario "
                                          "the output folder")
    p.add_argument("--scenario", metavar="DIR",
                   help="a scenario folder: train.json (the users' records) and test_leaderboard.json (records whose "
                        "items have no continuation: the targets). Writes OUT_DIR/test_leaderboard.json, the same "
                        "with --num_samples generated `continuations` per target item, and OUT_DIR/summary.json; "
                        "history: the user's train.json items (only earlier ones when timestamps exist); empty "
                        "generations are retried hotter (3 times, +0.2); resumable from OUT_DIR/generations.jsonl. "
                        "Model: --run RUN, else --model M (zero-shot); sampling seed: --seed")
    add_generate_flags(p)
    from usertwin.cli.train import add_device_flags

    add_device_flags(p, launched=False)
    from usertwin.cli.twinflags import add_batching_flag, add_decode_flag, add_engine_flags

    add_decode_flag(p)
    add_batching_flag(p)
    add_engine_flags(p)
    add_scenario_flags(p)
    add_seed_flags(p)


def add_scenario_flags(p) -> None:
    from usertwin.eval.scenario import RETRIES, RETRY_STEP

    g = p.add_argument_group("scenario", "how --scenario fills its test file (the research scripts' names)")
    g.add_argument("--max_retries", type=int, metavar="N",
                   help=f"an empty generation is drawn again up to N times (default {RETRIES})")
    g.add_argument("--retry_temperature_increment", type=float, metavar="T",
                   help=f"each retry samples T hotter, up to 1.5 (default {RETRY_STEP})")
    g.add_argument("--max_chars_per_turn", type=int, metavar="N",
                   help="each context turn of a target cut to N characters, ending in ... (the dialogue scripts' "
                        "300); unset: not cut, unless a seed script's defaults apply")


# The research scripts' inference flags (inference_vllm_<SYSTEM>.py) that are not usertwin names: any of them
# says a seed user runs the command, so that script's defaults apply where no flag says otherwise
# (usertwin.eval.seedscripts), said once. vLLM's engine flags are --engine vllm's (cli/twinflags.py).


def add_seed_flags(p) -> None:
    g = p.add_argument_group(
        "the research scripts' inference flags",
        "inference_vllm_<SYSTEM>.py's own flags, so its commands run unchanged; any of them (or --seed_script) makes "
        "--scenario do what that script did wherever no flag says otherwise: 5 samples, its temperature, top_p, "
        "top_k 50, repetition penalty, token cap and history cap, and the caps it put on given values (said once)")
    g.add_argument("--checkpoint_dir", metavar="DIR", help="the model: a usertwin run directory (or its best/) is "
                                                           "--run, any other folder --model")
    g.add_argument("--scenario_path", metavar="DIR", help="same as --scenario")
    g.add_argument("--output_dir", dest="seed_output_dir", metavar="DIR", help="same as -o")
    g.add_argument("--seed_script", metavar="NAME",
                   help="the seed system whose inference to follow: MovieLens, DMSC, Chameleons, LovinkDialogue, "
                        "LovinkQuestionnaire, PERSONA_Bench, REALTALK, RealPersonaChat (or inference_vllm_NAME.py); "
                        "unset: the one the scenario's path or the --config file's name names, else the one of the "
                        "scenario's collection type")
    g.add_argument("--dataset", metavar="NAME",
                   help="the shared inference_vllm.py's seed system: its defaults (temperature at least 1.2, no "
                        "repetition penalty, 512 tokens); it found the scenario under /mnt/parallel/...: pass "
                        "--scenario_path DIR")
    g.add_argument("--max_history_reviews", "--max_history_ratings", dest="seed_max_history", type=int, metavar="N",
                   help="same as --max_history_items N: the latest N items as history (DMSC's default 100, "
                        "MovieLens's 50)")


def run(args) -> int:
    import sys
    from pathlib import Path

    from usertwin.cli.twinflags import engine_args
    from usertwin.config import generate_settings, resolve
    from usertwin.errors import UsertwinError
    from usertwin.eval.predict import predict_split, targets_left
    from usertwin.rundir import RunDir
    from usertwin.twin.api import Twin

    from_seed_flags(args)
    from usertwin.twin.api import check_batching

    check_batching(args.batching, args.engine)  # before the model loads
    if args.scenario:
        return _scenario(args)
    _refuse_scenario_flags(args)
    args.split = args.split or "test"
    if not args.output and not args.run:
        raise UsertwinError("pass -o PREDICTIONS.jsonl (or --run RUN_DIR to write there)")
    from usertwin.train.setup import select_devices

    select_devices(args.gpu, None)
    cfg = resolve(args, RunDir(args.run).load_config()) if args.run else resolve(args)
    output = Path(args.output) if args.output else RunDir(args.run).predictions(args.split)
    gen = generate_settings(args)
    if output.is_file() and cfg.data:  # a re-run of a finished predict: say so before a minute of model loading
        total, left = targets_left(cfg, args.split, output, gen.limit)
        if not left:
            print(f"nothing to do: {output} already holds every target of the {args.split} split ({total}"
                  f"{'' if gen.limit is None else f', or the --limit {gen.limit}'})")
            return 0
    twin = Twin.load(args.run, cfg=cfg, progress=args.progress, decode=args.decode, engine=args.engine,
                     engine_args=engine_args(args, cfg.max_length, gen.max_new_tokens))
    prep = twin.prepare()  # the split's targets, rendered as the twin was trained
    if gen.generate and gen.sampling_notice():
        print(gen.sampling_notice(), file=sys.stderr)
    n = predict_split(twin, prep, args.split, output, gen, pick_k=gen.pick, generate=gen.generate,
                      limit=gen.limit, progress=args.progress, batching=args.batching)
    print(f"wrote {n} new prediction(s) to {output}")
    return 0


SEED_FLAGS = {"checkpoint_dir": "--checkpoint_dir", "scenario_path": "--scenario_path",
              "seed_output_dir": "--output_dir", "seed_script": "--seed_script", "dataset": "--dataset",
              "seed_max_history": "--max_history_reviews/--max_history_ratings",
              **{k: f"--{k}" for k in VLLM_FLAGS}}


def from_seed_flags(args) -> None:
    """The research scripts' inference flags onto usertwin's (see add_seed_flags); nothing when none is given."""

    from usertwin.errors import UsertwinError

    given = [flag for dest, flag in SEED_FLAGS.items() if getattr(args, dest, None) is not None]
    if not given and args.scenario and _seed_config(args):
        given = ["--config (a research scripts' config)"]
    if not given:
        return
    args.scenario = _one_of(args.scenario, "--scenario", args.scenario_path, "--scenario_path")
    args.output = _one_of(args.output, "-o", args.seed_output_dir, "--output_dir")
    if args.checkpoint_dir is not None:
        if args.run or hasattr(args, "cfg__model"):
            raise UsertwinError("--checkpoint_dir names the model: drop --run / --model")
        args.run, model = _run_or_model(args.checkpoint_dir)
        if model is not None:
            args.cfg__model = model
    if not args.scenario and args.dataset:
        raise UsertwinError(f"--dataset {args.dataset}: the research scripts found its scenario under "
                            "/mnt/parallel/GIDigitalTwinBench/; pass --scenario_path DIR (the folder holding "
                            "train.json and test_leaderboard.json)")
    if not args.scenario and given == ["--output_dir"]:
        raise UsertwinError("--output_dir is the research scripts' name of -o for a scenario (--scenario_path DIR); "
                            "predicting a split writes to -o (default RUN/predictions-SPLIT.jsonl), and a run "
                            "directory is set for usertwin train")
    if not args.scenario:
        raise UsertwinError(f"{given[0]} is a flag of the research scripts' inference, which fills a scenario: "
                            "pass --scenario_path DIR (train.json and test_leaderboard.json)")
    _seed_script_defaults(args)


def _seed_config(args) -> bool:
    """Whether --config is one of the research scripts' nested JSON configs."""
    from usertwin import seedconfig
    from usertwin.config import load_yaml

    return bool(getattr(args, "config", None)) and seedconfig.is_seed_config(load_yaml(args.config))


def _run_or_model(checkpoint_dir: str) -> tuple:
    """(run, None) when the seeds' --checkpoint_dir is a usertwin run directory or its best/ (the seeds pointed
    at the saved model: the run's config then renders the prompts as training did), else (None, the folder)."""
    from pathlib import Path

    from usertwin.rundir import RunDir

    path = Path(checkpoint_dir)
    if RunDir(path).is_run():
        return str(path), None
    if RunDir(path.parent).is_run() and RunDir(path.parent).best.resolve() == path.resolve():
        return str(path.parent), None
    return None, checkpoint_dir


def _one_of(ours, our_flag: str, theirs, their_flag: str):
    from usertwin.errors import UsertwinError

    if ours is not None and theirs is not None and str(ours) != str(theirs):
        raise UsertwinError(f"{our_flag} {ours} and {their_flag} {theirs} name different folders: give one")
    return ours if ours is not None else theirs


def _seed_script_defaults(args) -> None:
    """What the seed system's script did wherever no flag says otherwise (eval/seedscripts.py), said in one
    line on stderr: its generation defaults, the caps it put on given values, its history and turn caps."""
    import sys

    from usertwin.errors import UsertwinError
    from usertwin.eval.seedscripts import bounded

    script, why = _which_script(args)
    applied = {}
    for key, value in script.defaults.items():
        if not hasattr(args, f"gen__{key}"):
            setattr(args, f"gen__{key}", value)
            applied[f"--{'max_tokens' if key == 'max_new_tokens' else key}"] = value
    values, capped = bounded(script, {k: getattr(args, f"gen__{k}") for k in script.defaults})
    for key, value in values.items():
        setattr(args, f"gen__{key}", value)
    history = args.seed_max_history
    if history is not None and getattr(args, "cfg__max_history_items", history) != history:
        raise UsertwinError(f"--max_history_items {args.cfg__max_history_items} and --max_history_reviews "
                            f"{history} disagree: give one")
    if history is None and script.max_history_items is not None and not hasattr(args, "cfg__max_history_items"):
        history = applied["--max_history_items"] = script.max_history_items
    if history is not None:
        args.cfg__max_history_items = history
    if args.max_chars_per_turn is None and script.max_chars_per_turn is not None:
        args.max_chars_per_turn = applied["--max_chars_per_turn"] = script.max_chars_per_turn
    said = " ".join(f"{flag} {value}" for flag, value in applied.items()) or "none (every one is given)"
    line = f"note: the research scripts' flags: doing what {script.script} did ({why}) where no flag says " \
           f"otherwise: {said}"
    print(line + (f"; as it did, {', '.join(capped)}" if capped else ""), file=sys.stderr)


def _which_script(args):
    """(the seed script to follow, what says so): --seed_script, else the scenario's path, else the --config
    file's name, else the scenario's collection type, else the dialogue scripts' shared defaults."""
    from pathlib import Path

    from usertwin.eval import seedscripts
    from usertwin.eval.scenario import collection_types

    if args.seed_script:
        return seedscripts.named(args.seed_script), "--seed_script"
    if args.dataset:
        system = seedscripts.named(args.dataset, "--dataset").name  # refuses a name that is no seed system
        return seedscripts.generic(system), "--dataset"
    found = seedscripts.in_path(args.scenario)
    if found:
        return found, "named by the scenario path"
    found = seedscripts.in_name(Path(args.config).name) if getattr(args, "config", None) else None
    if found:
        return found, "named by the --config file"
    kinds = [seedscripts.BY_COLLECTION[t] for t in collection_types(args.scenario) if t in seedscripts.BY_COLLECTION]
    if len(set(kinds)) == 1:
        return seedscripts.SCRIPTS[kinds[0]], "the scenario's items are its kind; --seed_script NAME for another"
    return seedscripts.DIALOGUE, "the scenario names no seed system; --seed_script NAME for one script's"


def _refuse_scenario_flags(args) -> None:
    from usertwin.errors import UsertwinError

    for flag in ("max_retries", "retry_temperature_increment", "max_chars_per_turn"):
        if getattr(args, flag) is not None:
            raise UsertwinError(f"--{flag} applies to --scenario only: predicting a split draws no retries and "
                                "cuts no context turns")


def _scenario_options(args):
    from usertwin.errors import UsertwinError
    from usertwin.eval.scenario import Options

    for flag, low in (("max_retries", 0), ("retry_temperature_increment", 0), ("max_chars_per_turn", 4)):
        value = getattr(args, flag)
        if value is not None and value < low:
            raise UsertwinError(f"--{flag} must be at least {low}, got {value}")
    given = {"max_retries": args.max_retries, "retry_step": args.retry_temperature_increment,
             "max_chars_per_turn": args.max_chars_per_turn}
    return Options(**{k: v for k, v in given.items() if v is not None})


def _refuse_unread(args) -> None:
    """A setting given as a flag that --scenario does not read stops it, naming the flag: accepted, it would
    change nothing but the resume fingerprint, so a re-run without it would refuse to resume."""
    from usertwin.config import given_settings
    from usertwin.errors import UsertwinError
    from usertwin.eval.scenario import UNREAD

    for key in given_settings(args):
        if key in UNREAD:
            raise UsertwinError(f"--{key} does not apply to --scenario: predict --scenario {UNREAD[key]}; drop "
                                "the flag (a --config file may hold it)")


def _scenario(args) -> int:
    from usertwin.cli.twinflags import engine_args
    from usertwin.config import generate_settings, resolve
    from usertwin.errors import UsertwinError
    from usertwin.eval.scenario import check_folders, predict_scenario, summary_lines
    from usertwin.rundir import RunDir
    from usertwin.twin.api import Twin

    for flag, given in (("--split", args.split is not None), ("--pick", hasattr(args, "gen__pick")),
                        ("--no_generate", hasattr(args, "gen__generate")),
                        ("--scoring", hasattr(args, "gen__scoring"))):
        if given:
            raise UsertwinError(f"{flag} does not apply to --scenario: its targets are the test file's items, "
                                "and they are generated")
    _refuse_unread(args)
    if not args.output:
        raise UsertwinError("pass -o OUT_DIR: the folder the filled test_leaderboard.json and summary.json go to")
    check_folders(args.scenario, args.output)  # before the model loads: mistakes show at once
    cfg = resolve(args, RunDir(args.run).load_config()) if args.run else resolve(args)
    gen = generate_settings(args)
    if gen.sampling_notice():
        print(gen.sampling_notice())
    if gen.num_samples > 1 and gen.temperature == 0:
        print(f"note: --temperature 0 (greedy) gives {gen.num_samples} identical continuations per target; pass "
              "--temperature (the research scripts used 0.7) for different ones")
    twin = Twin.load(args.run, cfg=cfg, progress=args.progress, decode=args.decode, engine=args.engine,
                     engine_args=engine_args(args, cfg.max_length, gen.max_new_tokens))
    source = {"run": str(args.run)} if args.run else {"model": cfg.model}
    summary = predict_scenario(twin, args.scenario, args.output, gen,
                               seed=cfg.seed if gen.seed is None else gen.seed,
                               source=source, progress=args.progress, options=_scenario_options(args),
                               batching=args.batching)
    for line in summary_lines(summary, args.output):
        print(line)
    return 0
