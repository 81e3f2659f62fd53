"""simulate's generation batched continuously against in static batches (issue 26), side by side in one run
on a trained twin, the same users, items and seeds:

    python benchmarks/continuous_simulate.py --run runs/quickstart --data examples/movielens-mini/records.jsonl \
        --out DIR

Static batching decodes every batch until its longest row ends; continuous batching (`simulate --batching
continuous`) lets a prompt join as soon as rows finish. Where answers differ in length (a twin that mostly
answers with a rating and sometimes writes on), continuous decodes fewer padded rows. Each mode runs --repeats
times in turn (alternating, so a busy machine slows both alike); the rows are compared. Results:
OUT/continuous_simulate.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import simulate_speed as ss  # noqa: E402

TITLES = ["Heat (1995)", "Fargo (1996)", "Alien (1979)", "Clueless (1995)", "Casino (1995)", "Babe (1995)",
          "Se7en (1995)", "Twister (1996)"]


@contextlib.contextmanager
def counted_steps(twin):
    """Row-steps (rows x decode steps) of the continuous decoder and of generate (a batch's rows x its longest
    row's steps), counted while the block runs."""
    from usertwin.twin.continuous import Decoder

    counts = {"row_steps": 0}
    step, generate = Decoder.step, twin.engine.generate_ids

    def decoder_step(self):
        counts["row_steps"] += len(self)
        step(self)

    def generate_ids(prompts, gen, seeds=None, stream=None, gone=None, running=None):
        out = generate(prompts, gen, seeds, stream, gone, running)
        if running is None:
            n = gen.resolved().num_samples if gen.resolved().temperature > 0 else 1
            counts["row_steps"] += len(prompts) * n * max(len(ids) for row in out for ids in row)
        return out

    Decoder.step, twin.engine.generate_ids = decoder_step, generate_ids
    try:
        yield counts
    finally:
        Decoder.step = step
        del twin.engine.generate_ids  # the instance attribute: the class's method again


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained twin's run directory")
    ap.add_argument("--data", type=Path, required=True, help="the records its users are read from")
    ap.add_argument("--out", type=Path, required=True, help="folder for continuous_simulate.json/.md")
    ap.add_argument("--users", type=int, default=12, help="the first N users of the records")
    ap.add_argument("--items", type=int, default=6, help="items asked of every user (movie_review, no rating)")
    ap.add_argument("--batch_size", type=int, default=8, help="prompts decoding at once in both modes")
    ap.add_argument("--max_new_tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from usertwin.config import GenerateSettings
    from usertwin.simulate import StepItem, simulate
    from usertwin.twin import Twin

    env = ss.environment("continuous_simulate.py", argv)
    twin = Twin.load(args.run, records=str(args.data), progress=False)
    users = twin.users[:args.users]
    items = [StepItem(f"{t}: ", kind="movie_review") for t in (TITLES * args.items)[:args.items]]
    gen = GenerateSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=1,
                           batch_size=args.batch_size)
    seconds, rows, row_steps = {"static": [], "continuous": []}, {}, {}
    with tempfile.TemporaryDirectory() as tmp, counted_steps(twin) as counts:
        for r in range(args.repeats):
            for mode in seconds:
                out = Path(tmp) / f"{mode}-{r}.jsonl"
                counts["row_steps"] = 0
                t = time.perf_counter()
                simulate(twin, users, items, None, out, gen, seed=1, progress=False, batching=mode)
                seconds[mode].append(time.perf_counter() - t)
                rows[mode] = [json.loads(x) for x in out.read_text().splitlines()]
                row_steps[mode] = counts["row_steps"]
    pairs = len(users) * len(items)
    lengths = [len(twin.engine.tokenizer(g)["input_ids"]) for r in rows["static"] for g in r["generations"]]
    med = {m: statistics.median(v) for m, v in seconds.items()}
    result = {"env": env, "pairs": pairs, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "seconds": {m: [round(x, 1) for x in v] for m, v in seconds.items()},
              "pairs_per_s": {m: round(pairs / v, 3) for m, v in med.items()},
              "speedup": round(med["static"] / med["continuous"], 2), "row_steps": row_steps,
              "identical_rows": sum(a == b for a, b in zip(rows["static"], rows["continuous"])),
              "answer_tokens": {"median": statistics.median(lengths), "max": max(lengths)}}
    text = (f"# simulate: continuous against static batching ({env['device']})\n\n`{env['command']}` on "
            f"{env['date']}; torch {env['torch']}. {pairs} user x item pairs ({len(users)} users x {len(items)} "
            f"review items), batch {args.batch_size}, sampling at temperature {args.temperature}, at most "
            f"{args.max_new_tokens} new tokens; answers: median {result['answer_tokens']['median']} tokens, "
            f"longest {result['answer_tokens']['max']}. Each mode ran {args.repeats} times, alternating; "
            f"identical rows: **{result['identical_rows']} of {pairs}** (a sampled text can part at a near-tie "
            "where float rounding differs with the rows beside it: static batching at batch 1 and 8 part the "
            "same way).\n\n"
            "| batching | seconds (each run) | pairs/s (median) | rows decoded x steps |\n| --- | --- | --- | --- |\n"
            + "".join(f"| {m} | {', '.join(map(str, result['seconds'][m]))} | {result['pairs_per_s'][m]} | "
                      f"{row_steps[m]:,} |\n" for m in seconds)
            + f"\nSpeed-up of continuous: **{result['speedup']}x**.\n")
    (args.out / "continuous_simulate.json").write_text(json.dumps(result, indent=1))
    (args.out / "continuous_simulate.md").write_text(text)
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
