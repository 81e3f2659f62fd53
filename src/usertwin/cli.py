"""The command line: thin wrappers that call the pipeline modules."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import UsertwinError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from .config import add_config_flags

    parser = argparse.ArgumentParser(prog="usertwin", description="Fine-tune language models into user twins.")
    parser.add_argument("--version", action="version", version=f"usertwin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="raw public dataset -> records (JSONL)")
    p.add_argument("dataset", help="movielens | dmsc | douban-dmr | cornell | seed-samples | records")
    p.add_argument("raw", help="the raw file or folder")
    p.add_argument("-o", "--output", required=True, help="records file to write (JSONL)")
    p.add_argument("--on-error", "--on_error", dest="on_error", choices=("stop", "skip"), default="stop")
    _add_common(p)

    p = sub.add_parser("validate", help="check a records file; optionally write a repaired copy")
    p.add_argument("file")
    p.add_argument("--repair", metavar="OUT", help="write a repaired copy to OUT (never in place)")
    p.add_argument("--on-error", "--on_error", dest="on_error", choices=("stop", "skip"), default="stop")
    _add_common(p)

    p = sub.add_parser("prepare", help="records -> splits + samples/windows (cached), with counts")
    add_config_flags(p)
    _add_common(p)

    p = sub.add_parser("train", help="fine-tune a model into user twins (LoRA or full); resumable")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    _add_common(p)

    p = sub.add_parser("predict", help="generate and score every target of a split (resumable)")
    add_config_flags(p)
    p.add_argument("--run", help="a train run directory: its config and best weights")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("-o", "--output", help="predictions file (default RUN/predictions-SPLIT.jsonl)")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--pick", type=int, default=3, metavar="K", help="pick-the-real-one distractors (0: off)")
    p.add_argument("--no-generate", dest="generate", action="store_false", help="likelihood scoring only")
    p.add_argument("--limit", type=int, help="at most this many targets (for a quick look)")
    _add_common(p)

    p = sub.add_parser("evaluate", help="predictions -> metrics.json and a printed table")
    p.add_argument("predictions", nargs="?", help="a predictions JSONL file")
    p.add_argument("--run", help="a run directory: evaluates RUN/predictions-SPLIT.jsonl into RUN/metrics.json")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("-o", "--output", help="metrics file (default: metrics.json beside the predictions)")
    _add_common(p)

    p = sub.add_parser("baselines", help="global / user / item mean, user+item bias, copy-last on the same split")
    add_config_flags(p)
    p.add_argument("--run", help="use this run directory's config (and write RUN/baselines.json)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("-o", "--output", help="baselines JSON file")
    _add_common(p)

    p = sub.add_parser("report", help="one self-contained HTML (+ Markdown) comparing runs, with baselines")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", default="report.html", help="HTML file (report.md and PNGs go beside it)")
    p.add_argument("--baselines", help="baselines JSON (default: the first run's baselines.json, if any)")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--examples", type=int, default=5, help="users per run in the sample of predictions")
    _add_common(p)

    p = sub.add_parser("inspect", help="show examples exactly as training sees them; counts; --dump")
    add_config_flags(p)
    p.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all)")
    p.add_argument("-n", type=int, default=3, help="examples to print (default 3)")
    p.add_argument("--dump", metavar="FILE.jsonl", help="write one JSON line per target")
    _add_common(p)
    return parser


def cmd_convert(args) -> int:
    from .convert import convert_to_file

    summary = convert_to_file(args.dataset, args.raw, args.output, on_error=args.on_error,
                              progress=args.progress)
    print(summary.line())
    return 0


def cmd_validate(args) -> int:
    from .records import validate_file

    report = validate_file(args.file, repair_out=args.repair, on_error=args.on_error)
    for line in report.summary_lines():
        print(line)
    return 0


def cmd_prepare(args) -> int:
    from .atomic import write_json
    from .config import resolve
    from .prepare import prepare, summary
    from .preview import counts_table

    cfg = resolve(args)
    prep = prepare(cfg, progress=args.progress)
    print(counts_table(prep))
    print(f"prepared in {prep.seconds:.1f} s")
    if cfg.output_dir:
        out = Path(cfg.output_dir)
        write_json(out / "data_summary.json", summary(prep))
        write_json(out / "config.json", cfg.to_dict())
        print(f"wrote {out / 'data_summary.json'} and {out / 'config.json'}")
    return 0


def cmd_inspect(args) -> int:
    from .config import render_config, resolve
    from .prepare import prepare
    from .preview import counts_table, show_examples, write_dump
    from .render import Renderer
    from .timeline import SPLITS
    from .tokenize import load_tokenizer

    cfg = resolve(args)
    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    prep = prepare(cfg, tokenizer=tok, progress=args.progress)
    renderer = Renderer(render_config(cfg), tok)
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


def cmd_train(args) -> int:
    from .config import resolve
    from .train import train

    cfg = resolve(args)
    train(cfg, overwrite=args.overwrite, resume=args.resume, progress=args.progress)
    return 0


def cmd_predict(args) -> int:
    from .config import resolve
    from .predict import GenerationConfig, Predictor, load_run_config, load_twin_model, predict_split
    from .tokenize import load_tokenizer

    if args.run:
        cfg = resolve(args, load_run_config(args.run))
        best = Path(args.run) / "best"
        tok = load_tokenizer(str(best) if (best / "tokenizer_config.json").is_file() else cfg.model,
                              cfg.trust_remote_code)
    else:
        cfg = resolve(args)
        tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    if not args.output and not args.run:
        raise UsertwinError("pass -o PREDICTIONS.jsonl (or --run RUN_DIR to write there)")
    output = Path(args.output or Path(args.run) / f"predictions-{args.split}.jsonl")
    pred = Predictor(cfg, load_twin_model(cfg, args.run), tok)
    gen = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.num_samples, args.batch_size)
    n = predict_split(pred, args.split, output, gen, pick_k=args.pick, generate=args.generate, limit=args.limit,
                      progress=args.progress)
    print(f"wrote {n} new prediction(s) to {output}")
    return 0


def cmd_evaluate(args) -> int:
    from .atomic import write_json
    from .metrics import evaluate_rows, format_table, read_rows

    if not args.predictions and not args.run:
        raise UsertwinError("pass a predictions file or --run RUN_DIR")
    path = Path(args.predictions) if args.predictions else Path(args.run) / f"predictions-{args.split}.jsonl"
    if not path.is_file():
        hint = f"; run: usertwin predict --run {args.run} --split {args.split}" if args.run else ""
        raise UsertwinError(f"{path} does not exist{hint}")
    metrics = evaluate_rows(read_rows(path))
    out = Path(args.output) if args.output else path.with_name("metrics.json")
    write_json(out, metrics)
    print(format_table(metrics))
    print(f"wrote {out}")
    return 0


def cmd_baselines(args) -> int:
    from .atomic import write_json
    from .baselines import run_baselines
    from .config import resolve
    from .metrics import format_table
    from .predict import load_run_config

    cfg = resolve(args, load_run_config(args.run) if args.run else None)
    if not cfg.data:
        raise UsertwinError("no data: pass --config CFG.yaml, --data RECORDS.jsonl or --run RUN_DIR")
    result = run_baselines(cfg, split=args.split)
    print(format_table(result))
    out = Path(args.output) if args.output else (Path(args.run) / "baselines.json" if args.run else None)
    if out:
        write_json(out, result)
        print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    import json

    from .report import build_report

    for run in args.runs:
        if not Path(run).is_dir():
            raise UsertwinError(f"{run} is not a run directory")
    base_path = Path(args.baselines) if args.baselines else Path(args.runs[0]) / "baselines.json"
    baselines = None
    if base_path.is_file():
        baselines = json.loads(base_path.read_text(encoding="utf-8"))
    elif args.baselines:
        raise UsertwinError(f"{base_path} does not exist; run: usertwin baselines --run RUN_DIR")
    out = build_report([Path(r) for r in args.runs], Path(args.output), baselines=baselines,
                       max_examples=args.examples, split=args.split)
    print(f"wrote {out['html']} and {out['markdown']} ({out['rows']} table rows)")
    return 0


COMMANDS = {"report": cmd_report, "evaluate": cmd_evaluate, "baselines": cmd_baselines, "predict": cmd_predict, "train": cmd_train, "convert": cmd_convert, "validate": cmd_validate, "prepare": cmd_prepare, "inspect": cmd_inspect}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsertwinError as e:
        if args.debug:
            raise
        print(f"usertwin {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("usertwin: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # unreadable input, unwritable output, full disk: what the system said, about which file
        if args.debug:
            raise
        names = " -> ".join(str(n) for n in (e.filename, e.filename2) if n is not None)
        print(f"usertwin {args.command}: error: {names + ': ' if names else ''}{e.strerror or e} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 2
    except Exception as e:  # out of memory: say what to lower; anything else keeps its traceback (a bug)
        if args.debug or not _out_of_memory(e):
            raise
        print(f"usertwin {args.command}: error: out of memory ({type(e).__name__}). {OOM_HINT}", file=sys.stderr)
        return 2


OOM_HINT = ("Lower --batch_tokens (tokens per micro-batch row) or --max_length, or pass --gradient_checkpointing "
            "(and --gradient_accumulation_steps to keep the step size); for predict lower --batch_size. "
            "A killed train run continues with --resume; predict resumes from its output file.")


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e)[:200]


if __name__ == "__main__":
    sys.exit(main())
