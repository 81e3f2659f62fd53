"""`usertwin predict --run RUN [--split test]`: generate and score every target of a split (resumable)."""

from __future__ import annotations

NAME = "predict"
HELP = "generate and score every target of a split (resumable)"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags

    add_config_flags(p)
    p.add_argument("--run", help="a train run directory: its config and best weights")
    p.add_argument("--split", choices=("train", "val", "test"), default="test", help="the split to predict")
    p.add_argument("-o", "--output", help="predictions file (default RUN/predictions-SPLIT.jsonl)")
    p.add_argument("--max_new_tokens", type=int, default=64, help="tokens generated per prediction (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling share (default 1.0: off)")
    p.add_argument("--num_samples", type=int, default=1, help="predictions generated per target (default 1)")
    p.add_argument("--batch_size", type=int, default=8, help="targets scored and generated together (default 8)")
    p.add_argument("--pick", type=int, default=3, metavar="K", help="pick-the-real-one distractors (0: off)")
    p.add_argument("--no-generate", dest="generate", action="store_false", help="likelihood scoring only")
    p.add_argument("--limit", type=int, help="at most this many targets (for a quick look)")


def run(args) -> int:
    from pathlib import Path

    from usertwin.config import resolve
    from usertwin.data.prepare import prepare
    from usertwin.errors import UsertwinError
    from usertwin.eval.predict import predict_split
    from usertwin.rundir import RunDir
    from usertwin.twin import Engine, GenerationConfig, load_tokenizer_and_model, rating_scale

    if not args.output and not args.run:
        raise UsertwinError("pass -o PREDICTIONS.jsonl (or --run RUN_DIR to write there)")
    cfg = resolve(args, RunDir(args.run).load_config()) if args.run else resolve(args)
    output = Path(args.output) if args.output else RunDir(args.run).predictions(args.split)
    tok, model = load_tokenizer_and_model(cfg, args.run)
    # the split's targets come from the prepared data, so its rating scale is read there too
    prep = prepare(cfg, tokenizer=tok, progress=False)
    engine = Engine(cfg, model, tok, scale=rating_scale(prep.timelines))
    gen = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.num_samples, args.batch_size)
    n = predict_split(engine, prep, args.split, output, gen, pick_k=args.pick, generate=args.generate,
                      limit=args.limit, progress=args.progress)
    print(f"wrote {n} new prediction(s) to {output}")
    return 0
