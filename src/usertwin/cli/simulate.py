"""`usertwin simulate --run RUN --data RECORDS (--users ID,... | --all) (--items ITEMS.jsonl | --steps K) -o OUT`."""

from __future__ import annotations

NAME = "simulate"
HELP = "the next behaviour of chosen users, for given items or as a rollout (resumable)"
DESCRIPTION = """\
The next behaviour of each chosen user, one JSON line per (user, step), from a trained twin.

  --items ITEMS.jsonl         every item of the file (one a line: continuation_prefix and/or context; optional
                              "type", "user" to give it to one user only, "continuation" kept as the reference),
                              answered independently on the user's real history.
  --steps K                   a rollout of K steps: each step's generation joins the user's history before the
                              next step. Without --items a step's item has no prefix and no context (the user's
                              unprompted next act: a review, a line); ratings need --items, used one per step in
                              file order.

Rating items get the probability of every allowed rating and the generated ratings; text items N generated
continuations (--num_samples). In a rollout the first sample joins the history. Sample i of (user, step) is
drawn with a seed made of (--seed, default 0; user; step) plus i: the same in any batch and after a resume. The output is
appended per batch; run the same command again to continue after a kill.
"""


def add_arguments(p) -> None:

    from usertwin.config import add_generate_flags

    p.description = DESCRIPTION
    p.add_argument("--run", required=True, help="a train run directory: its config and best weights")
    p.add_argument("--data", help="records file the users are read from (default: the records the run trained on)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated user ids")
    who.add_argument("--all", action="store_true", help="every user of the records file")
    p.add_argument("--items", help="ITEMS.jsonl: the items to answer (with --steps: the rollout's items, in order)")
    p.add_argument("--steps", type=int, help="rollout steps per user")
    p.add_argument("-o", "--output", required=True, help="output JSON Lines file (appended; resumable)")
    from usertwin.cli.twinflags import add_engine_flags

    add_engine_flags(p)
    add_generate_flags(p)
    from usertwin.cli.twinflags import add_batching_flag, add_decode_flag, add_prefill_flag

    add_decode_flag(p)
    add_prefill_flag(p)
    add_batching_flag(p)


def run(args) -> int:
    import sys
    from pathlib import Path

    from usertwin.cli.twinflags import engine_args
    from usertwin.config import generate_settings
    from usertwin.errors import UsertwinError
    from usertwin.rundir import RunDir
    from usertwin.simulate import check_users_in, check_what, choose_users, read_items, simulate

    if hasattr(args, "gen__pick"):  # generation flags are set only when given
        raise UsertwinError("--pick is predict's pick-the-real-one test; simulate has no reference to pick")
    if hasattr(args, "gen__scoring"):
        raise UsertwinError("--scoring is how predict reads a split's targets; simulate has no split")
    cfg = RunDir(args.run).load_config()
    data = args.data or cfg.data
    if not data or not Path(data).is_file():
        raise UsertwinError(f"pass --data RECORDS.jsonl: the users' records (the run's own data {data!r} "
                            "is not there)")
    check_what(args.items is not None, args.steps)  # before loading the model: mistakes show at once
    from usertwin.twin.api import check_batching

    check_batching(args.batching, args.engine)
    items = read_items(args.items) if args.items else None
    asked = None if args.all else [u.strip() for u in args.users.split(",") if u.strip()]
    if asked is not None:
        check_users_in(data, asked, cfg.on_error)
    from usertwin.twin import Twin

    gen = generate_settings(args)
    twin = Twin.load(args.run, records=data, decode=args.decode, progress=args.progress, prefill=args.prefill,
                     engine=args.engine, engine_args=engine_args(args, cfg.max_length, gen.max_new_tokens))
    users = choose_users(twin, asked)
    if gen.generate and gen.sampling_notice():
        print(gen.sampling_notice(), file=sys.stderr)
    seed = gen.seed if gen.seed is not None else 0
    n = simulate(twin, users, items, args.steps, args.output, gen, seed, args.progress, args.batching)
    print(f"wrote {n} new row(s) for {len(users)} user(s) to {args.output}")
    return 0
