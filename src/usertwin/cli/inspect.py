"""`usertwin inspect --config CFG.yaml`: examples exactly as training sees them, counts, a dump of every target."""

from __future__ import annotations

from usertwin.cli import prepare

NAME = "inspect"
HELP = "show examples exactly as training sees them; counts; --dump"

# inspect builds what prepare builds (sequences/prepare.py) and renders it: the settings prepare reads
READS = prepare.READS
UNREAD = "shows the data as prepare builds it (loading only the model's tokenizer)"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags

    add_config_flags(p, reads=READS)
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all)")
    p.add_argument("-n", type=int, default=3, help="examples to print (default 3)")
    p.add_argument("--dump", metavar="FILE.jsonl", help="write one JSON line per target")


def run(args) -> int:
    import time

    from usertwin.cli.train import seed_training
    from usertwin.config import resolve
    from usertwin.data.timeline import SPLITS
    from usertwin.sequences.prepare import prepare
    from usertwin.sequences.preview import counts_table, show_examples, write_dump
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import load_tokenizer

    cfg = seed_training(resolve(args), args)
    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    prep = prepare(cfg, tokenizer=tok, progress=args.progress)
    renderer = Renderer(cfg, tok)
    splits = [args.split] if args.split else list(SPLITS)
    if args.n > 0:
        for split in splits:
            show_examples(prep, renderer, split, args.n)
    print(counts_table(prep))
    if args.dump:
        t = time.perf_counter()
        n = write_dump(prep, renderer, args.dump, splits)
        print(f"wrote {n} targets to {args.dump} ({time.perf_counter() - t:.1f} s)")
    return 0
