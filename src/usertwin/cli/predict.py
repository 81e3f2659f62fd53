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


def run(args) -> int:
    from pathlib import Path

    from usertwin.config import generate_settings, resolve
    from usertwin.errors import UsertwinError
    from usertwin.eval.predict import Predictor, load_twin_model, predict_split
    from usertwin.rundir import RunDir
    from usertwin.text.tokens import load_tokenizer

    if args.run:
        run_dir = RunDir(args.run)
        cfg = resolve(args, run_dir.load_config())
        tok = load_tokenizer(run_dir.tokenizer_source(cfg.model), cfg.trust_remote_code)
    else:
        cfg = resolve(args)
        tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    if not args.output and not args.run:
        raise UsertwinError("pass -o PREDICTIONS.jsonl (or --run RUN_DIR to write there)")
    output = Path(args.output) if args.output else RunDir(args.run).predictions(args.split)
    pred = Predictor(cfg, load_twin_model(cfg, args.run), tok)
    gen = generate_settings(args)
    n = predict_split(pred, args.split, output, gen, pick_k=gen.pick, generate=gen.generate, limit=gen.limit,
                      progress=args.progress)
    print(f"wrote {n} new prediction(s) to {output}")
    return 0
