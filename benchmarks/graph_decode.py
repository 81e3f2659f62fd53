"""The continuous decoder's step: transformers' forward over a dynamic cache (twin/continuous.py, Decoder) against
fixed slots with a CUDA graph per bucket of rows (twin/slots.py, SlotDecoder), side by side in one run
(issue 26: a decode step <= 5 ms at batch 1; serve's latency rides on it). Run on the device tool's GPU:

    python3 benchmarks/graph_decode.py --shape smollm2 --tokenizer .gpu/tok-smollm2 --out $OUT/graph_decode

For each batch size: that many random prompts (--prompt_tokens) join at once and decode greedily to
--max_new_tokens (no end of turn: random weights rarely say it, and every step counts); ms per decode step after
the first (the first records the graph) and the share of requests whose tokens are identical between the two
(the masked full-width attention of the slots rounds differently from the dynamic cache's in bf16).
Random weights of the real shape. Writes OUT/graph_decode.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import simulate_speed as ss  # noqa: E402


def run(decoder, prompts: list[list[int]], gen) -> tuple[list, float, int]:
    """(each request's tokens, seconds of the decode steps after the first, those steps)."""
    from usertwin.twin.continuous import Request

    got = {}
    decoder.join([Request(p, gen, done=lambda ids, k=k: got.__setitem__(k, ids)) for k, p in enumerate(prompts)])
    decoder.step()  # the first: a graph is recorded here
    ss._sync()
    t, steps = time.perf_counter(), 0
    while len(decoder):
        decoder.step()
        steps += 1
    ss._sync()
    return [got[k] for k in range(len(prompts))], time.perf_counter() - t, steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(ss.SHAPES), default="smollm2")
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--prompt_tokens", type=int, default=512)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--tokenizer", default="smollm2", help="tokenizer folder (anything --model takes)")
    ap.add_argument("--out", type=Path, required=True, help="folder for graph_decode.json and .md")
    args = ap.parse_args(argv)
    from usertwin.config import Config, GenerateSettings
    from usertwin.model.load import pick_dtype
    from usertwin.text.tokens import load_tokenizer
    from usertwin.twin.continuous import Decoder
    from usertwin.twin.engine import Engine
    from usertwin.twin.slots import SlotDecoder

    args.out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.tokenizer)
    model = ss.build_model(args.shape, len(tok), pick_dtype("auto"))
    engine = Engine(Config(max_length=args.prompt_tokens + args.max_new_tokens), model, tok)
    engine.eot_id = engine.pad_id = -1  # no end of turn: every request runs its max_new_tokens
    gen = GenerateSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    rng, rows = random.Random(0), []
    for b in args.batch_sizes:
        prompts = [[rng.randrange(100, 40000) for _ in range(args.prompt_tokens)] for _ in range(b)]
        row = {"shape": args.shape, "batch": b}
        outputs = {}
        for name, make in (("dynamic", lambda: Decoder(engine)), ("graphs", lambda: SlotDecoder(engine))):
            run(make(), prompts, gen)  # warm-up: kernels (and, for the slots, the graph)
            outputs[name], seconds, steps = run(make(), prompts, gen)
            row[f"{name}_ms_per_step"] = round(1000 * seconds / max(steps, 1), 2)
        row["speedup"] = round(row["dynamic_ms_per_step"] / row["graphs_ms_per_step"], 2)
        row["identical"] = f"{sum(a == b for a, b in zip(outputs['dynamic'], outputs['graphs']))}/{b}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = ss.environment("graph_decode.py", argv)
    (args.out / "graph_decode.json").write_text(json.dumps({"env": env, "results": rows}, indent=1))
    lines = [f"# continuous decoder step: dynamic cache against slots + CUDA graphs ({env['device']})", "",
             f"`{env['command']}` on {env['date']}; torch {env['torch']}. {args.prompt_tokens}-token prompts, "
             f"{args.max_new_tokens} greedy tokens each, ms per decode step after the first.", "",
             "| shape | batch | dynamic ms/step | graphs ms/step | speed-up | identical requests |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['shape']} | {r['batch']} | {r['dynamic_ms_per_step']} | {r['graphs_ms_per_step']} | "
              f"{r['speedup']}x | {r['identical']} |" for r in rows]
    (args.out / "graph_decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
