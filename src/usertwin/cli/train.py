"""`usertwin train --config CFG.yaml [--resume | --overwrite]`."""

from __future__ import annotations

NAME = "train"
HELP = "fine-tune a model into user twins (LoRA or full); resumable"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags

    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")


def run(args) -> int:
    from usertwin.config import resolve
    from usertwin.train.trainer import train

    train(resolve(args), overwrite=args.overwrite, resume=args.resume, progress=args.progress, debug=args.debug)
    return 0
