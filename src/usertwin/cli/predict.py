"""`usertwin predict --run RUN [--split test]`: generate and score every target of a split (resumable);
`usertwin predict --scenario DIR -o OUT_DIR`: fill a scenario's test_leaderboard.json (usertwin.eval.scenario)."""

from __future__ import annotations

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


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags, add_generate_flags, generate_flag_names

    add_config_flags(p, leave=generate_flag_names(), reads=READS)
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
    add_decode_flag(p)


def add_decode_flag(p) -> None:
    from usertwin.config import DECODES

    p.add_argument("--decode", choices=DECODES, default="dynamic",
                   help="how generation decodes: dynamic (transformers' default cache) or static (a static KV cache "
                        "compiled into CUDA graphs on a GPU: on an H100 the decode step fell from 29 to 3.6 ms at "
                        "batch 1, after 35-56 s of compiling per batch/width bucket; worth it for long jobs at "
                        "small batches) (default dynamic)")


def run(args) -> int:
    import sys
    from pathlib import Path

    from usertwin.config import generate_settings, resolve
    from usertwin.errors import UsertwinError
    from usertwin.eval.predict import predict_split, targets_left
    from usertwin.rundir import RunDir
    from usertwin.twin.api import Twin

    if args.scenario:
        return _scenario(args)
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
    twin = Twin.load(args.run, cfg=cfg, progress=args.progress, decode=args.decode)
    prep = twin.prepare()  # the split's targets, rendered as the twin was trained
    if gen.generate and gen.sampling_notice():
        print(gen.sampling_notice(), file=sys.stderr)
    n = predict_split(twin, prep, args.split, output, gen, pick_k=gen.pick, generate=gen.generate,
                      limit=gen.limit, progress=args.progress)
    print(f"wrote {n} new prediction(s) to {output}")
    return 0


def _scenario(args) -> int:
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
    twin = Twin.load(args.run, cfg=cfg, progress=args.progress, decode=args.decode)
    source = {"run": str(args.run)} if args.run else {"model": cfg.model}
    summary = predict_scenario(twin, args.scenario, args.output, gen,
                               seed=cfg.seed if gen.seed is None else gen.seed,
                               source=source, progress=args.progress)
    for line in summary_lines(summary, args.output):
        print(line)
    return 0
