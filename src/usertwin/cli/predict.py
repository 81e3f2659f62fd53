"""`usertwin predict --run RUN [--split test]`: generate and score every target of a split (resumable)."""

from __future__ import annotations

NAME = "predict"
HELP = "generate and score every target of a split (resumable)"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags, add_generate_flags

    add_config_flags(p)
    p.add_argument("--run", help="a train run directory: its config and best weights")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="the split to predict")
    p.add_argument("-o", "--output", help="predictions file (default RUN/predictions-SPLIT.jsonl)")
    add_generate_flags(p)
    from usertwin.cli.train import add_device_flags

    add_device_flags(p, launched=False)


def run(args) -> int:
    from pathlib import Path

    from usertwin.config import generate_settings, resolve
    from usertwin.data.prepare import prepare
    from usertwin.errors import UsertwinError
    from usertwin.eval.predict import predict_split
    from usertwin.rundir import RunDir
    from usertwin.twin import Engine, load_tokenizer_and_model, rating_scale

    if not args.output and not args.run:
        raise UsertwinError("pass -o PREDICTIONS.jsonl (or --run RUN_DIR to write there)")
    from usertwin.train.setup import select_devices

    select_devices(args.gpu, None)
    cfg = resolve(args, RunDir(args.run).load_config()) if args.run else resolve(args)
    output = Path(args.output) if args.output else RunDir(args.run).predictions(args.split)
    tok, model = load_tokenizer_and_model(cfg, args.run)
    # the split's targets come from the prepared data, so its rating scale is read there too
    prep = prepare(cfg, tokenizer=tok, progress=False)
    engine = Engine(cfg, model, tok, scale=rating_scale(prep.timelines))
    gen = generate_settings(args)
    n = predict_split(engine, prep, args.split, output, gen, pick_k=gen.pick, generate=gen.generate,
                      limit=gen.limit, progress=args.progress)
    print(f"wrote {n} new prediction(s) to {output}")
    return 0
