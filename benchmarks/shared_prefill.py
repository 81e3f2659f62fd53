"""Ratings-only simulation of a population: user x item pairs a second with the shared prefill (a user's history
read once for many items) against one prompt per pair, side by side in one run on one machine.

    python benchmarks/shared_prefill.py --shape smollm2 --items 100 --batch_size 100 \
        --out benchmarks/results/shared_prefill_h100

Users are real: ml-latest-small converted (--movielens) or any records file (--records), every user unless
--users N. The items are the --items most-rated movies of the records, as the records write them, and every user
answers every item through `usertwin simulate --items --no-generate` itself (prompts, batching, the rating
distribution over the whole scale, the output file). Both prefills answer the same prompts (simulate puts every
item of a user on one history); `each` is the slow one, so --each_users limits it to the first N users and its
pairs/s is compared per pair. The two alternate user by user, so a machine that slows down slows both.

Also reported: the tokens the scoring forwards read per pair (prompt and candidates), and the largest
difference of a rating probability between the two (float rounding only: the same prompts and candidates).
With --generate_tokens T every pair also generates (greedy, at most T tokens): the prompts' shared beginning is then
read once for generation too (twin/prefix.py), and the share of generations identical between the two is reported.
Random weights of the real shape: the speed of a shape does not depend on its weights.
Writes OUT/shared_prefill.json and OUT/shared_prefill.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate_speed import (  # noqa: E402
    DEFAULT_MOVIELENS,
    SHAPES,
    _sync,
    build_model,
    environment,
    make_twin,
    records_path,
)


def top_items(records: Path, n: int) -> list[str]:
    """The continuation_prefix of the n most-rated items (ties: first seen first)."""
    counts = Counter()
    with open(records, encoding="utf-8") as f:
        for line in f:
            for coll in json.loads(line)["task"]["task_behavior_collections"]:
                counts.update(it["continuation_prefix"] for it in coll["data"] if it.get("continuation_prefix"))
    return [p for p, _ in counts.most_common(n)]


def count_reads(engine) -> dict:
    """Wrap the engine's scoring so it counts the tokens its two forwards read (windows, then blocks)."""
    seen = {"tokens": 0, "forwards": 0}
    score_blocks = engine.score_blocks

    def counting(windows, blocks):
        seen["tokens"] += sum(map(len, windows)) + sum(len(s.tokens) for b in blocks for s in b)
        seen["forwards"] += 1
        return score_blocks(windows, blocks)

    engine.score_blocks = counting
    return seen


def run_user(twin, user: str, items_file: Path, out: Path, batch: int, tokens: int = 0) -> float:
    from usertwin.config import GenerateSettings
    from usertwin.simulate import read_items, simulate

    gen = GenerateSettings(generate=tokens > 0, max_new_tokens=max(tokens, 1), batch_size=batch)
    _sync()
    t = time.perf_counter()
    simulate(twin, [user], read_items(items_file), None, out, gen, progress=False)
    _sync()
    return time.perf_counter() - t


def measure(args, tok, records: Path, work: Path) -> dict:
    from usertwin.model.load import pick_dtype

    model = build_model(args.shape, len(tok), pick_dtype(args.dtype))
    twin = make_twin(model, tok, records, args.max_length)
    items = work / "items.jsonl"
    items.write_text("".join(json.dumps({"continuation_prefix": p, "type": "movie_rating"}) + "\n"
                             for p in top_items(records, args.items)))
    users = twin.users if args.users is None else twin.users[:args.users]
    each_users = set(users if args.each_users is None else users[:args.each_users])
    reads = count_reads(twin.engine)
    stats = {p: {"seconds": 0.0, "pairs": 0, "tokens_read": 0, "forwards": 0} for p in ("shared", "each")}
    run_user(twin, users[0], items, work / "warm.jsonl", args.batch_size, args.generate_tokens)  # warm-up: kernels, allocator
    for k, user in enumerate(users):
        for prefill in ("shared", "each") if user in each_users else ("shared",):
            twin.engine.prefill = prefill
            before = dict(reads)
            dt = run_user(twin, user, items, work / f"{prefill}.jsonl", args.batch_size, args.generate_tokens)
            s = stats[prefill]
            s["seconds"] += dt
            s["pairs"] += args.items
            s["tokens_read"] += reads["tokens"] - before["tokens"]
            s["forwards"] += reads["forwards"] - before["forwards"]
        if (k + 1) % max(1, len(users) // 10) == 0:
            print(f"{k + 1}/{len(users)} users: {json.dumps(stats)}", flush=True)
    rows = {p: [json.loads(x) for x in (work / f"{p}.jsonl").read_text().splitlines()] for p in stats}
    return summary(args, model, stats, rows)


def summary(args, model, stats: dict, rows: dict) -> dict:
    shared = {(r["user"], r["step"]): r for r in rows["shared"]}
    diff = max((abs(a - b) for r in rows["each"] for a, b in
                zip(r["rating"]["probs"], shared[(r["user"], r["step"])]["rating"]["probs"])), default=0.0)
    same_prompts = all(r["prompt_hash"] == shared[(r["user"], r["step"])]["prompt_hash"] for r in rows["each"])
    out = {"shape": args.shape, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
           "items_per_user": args.items, "batch_size": args.batch_size, "max_length": args.max_length,
           "users": len({r["user"] for r in rows["shared"]}), "max_prob_difference": diff,
           "same_prompts": same_prompts, "generate_tokens": args.generate_tokens}
    if args.generate_tokens:
        same = [r["generations"] == shared[(r["user"], r["step"])]["generations"] for r in rows["each"]]
        out["identical_generations"] = f"{sum(same)}/{len(same)}"
    for p, s in stats.items():
        out[p] = {**s, "seconds": round(s["seconds"], 3), "pairs_per_s": round(s["pairs"] / s["seconds"], 2),
                  "tokens_read_per_pair": round(s["tokens_read"] / s["pairs"], 1)}
    out["speedup"] = round(out["shared"]["pairs_per_s"] / out["each"]["pairs_per_s"], 2)
    return out


def markdown(r: dict, env: dict) -> str:
    s, e = r["shared"], r["each"]
    return "\n".join([
        f"# shared prefill, simulate ({env['device']})", "",
        f"`{env['command']}` on {env['date']}; torch {env['torch']}; {env['machine']}.",
        f"{r['shape']} shape ({r['dtype']}, random weights), max_length {r['max_length']}, {r['items_per_user']} "
        f"items a user, batch {r['batch_size']}; "
        + (f"every pair also generates up to {r['generate_tokens']} tokens (greedy); " if r["generate_tokens"] else
           "ratings only; ") + "the two prefills alternate user by user.", "",
        "| prefill | users | pairs | seconds | pairs/s | tokens read a pair | scoring forwards |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| each (one prompt per pair) | {e['pairs'] // r['items_per_user']} | {e['pairs']} | {e['seconds']} | "
        f"{e['pairs_per_s']} | {e['tokens_read_per_pair']} | {e['forwards']} |",
        f"| shared (one history read for many items) | {r['users']} | {s['pairs']} | {s['seconds']} | "
        f"{s['pairs_per_s']} | {s['tokens_read_per_pair']} | {s['forwards']} |", "",
        f"Speed-up (pairs/s, shared / each): **{r['speedup']}x**. Same prompts in both: {r['same_prompts']}; "
        f"largest difference of a rating probability: {r['max_prob_difference']:.2e}."
        + (f" Identical generations: {r['identical_generations']}." if r["generate_tokens"] else ""), ""])


def parse(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    ap.add_argument("--items", type=int, default=100, help="items every user answers (the most-rated ones)")
    ap.add_argument("--users", type=int, help="the first N users of the records (default: every user)")
    ap.add_argument("--each_users", type=int, help="run one-prompt-per-pair on the first N users only")
    ap.add_argument("--batch_size", type=int, default=100, help="prompts per scoring batch")
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--generate_tokens", type=int, default=0,
                    help="also generate up to this many tokens a pair, greedy (default 0: ratings only)")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU that has it, else float32")
    ap.add_argument("--tokenizer", default="smollm2", help="tokenizer (anything --model takes); default SmolLM2's")
    ap.add_argument("--records", help="records file (default: ml-latest-small from --movielens, converted)")
    ap.add_argument("--movielens", default=str(DEFAULT_MOVIELENS))
    ap.add_argument("--out", required=True, help="folder for shared_prefill.json and shared_prefill.md")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    from usertwin.text.tokens import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shared-prefill-"))
    tok = load_tokenizer(args.tokenizer)
    result = measure(args, tok, records_path(args, work), work)
    env = environment("shared_prefill.py", argv)
    (out / "shared_prefill.json").write_text(json.dumps({"env": env, "result": result}, indent=1) + "\n")
    (out / "shared_prefill.md").write_text(markdown(result, env))
    print(markdown(result, env))
    return result


if __name__ == "__main__":
    main()
