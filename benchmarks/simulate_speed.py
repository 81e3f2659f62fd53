"""Throughput of `usertwin simulate`: users/s and generated tokens/s at several batch sizes, and how close
decoding comes to the memory-bandwidth bound.

    python benchmarks/simulate_speed.py --shapes smollm2 qwen3-1.7b --batch_sizes 1 32 256 \
        --bandwidth 4.8e12 --out benchmarks/results/simulate_speed_h200

Models are random weights built from a config of the real shape (the speed of a shape does not depend on its
weights): `smollm2` (SmolLM2-135M: llama, hidden 576, 30 layers, 9 heads, 3 KV heads, vocab 49152),
`qwen3-1.7b` (hidden 2048, 28 layers, 16 heads, 8 KV heads, head_dim 128, vocab 151936) and `tiny` (for a CPU
check). Users are real: ml-latest-small converted (--movielens) or any records file (--records); every user
answers one rating item through the simulate path itself (prompt rendering, rating-distribution scoring,
batched generation with the KV cache). Random weights rarely emit the end-of-turn, so nearly every row runs to
--max_new_tokens.

Two measurements per shape and batch size:
* simulate: wall time of whole batches of the real path -> users/s and generated tokens/s;
* decode: the time of one decoding step of that batch (generate with T and with 1 new token, forced to full
  length; the difference over T-1), the weight bytes every step reads (every parameter once, except the input
  embedding rows that are not looked up) and the KV-cache bytes at the mean context -> achieved bytes/s as a
  share of --bandwidth (weights only, and weights + KV cache).

Each measurement runs once per --decodes (dynamic: transformers' default cache, the path before issue 26;
static: a static KV cache compiled into CUDA graphs, `--decode static`), side by side in one run on one card;
the static rows also give the first (compiling) call's time and the share of rows whose greedy tokens equal the
dynamic path's.

Writes OUT/simulate_speed.json and OUT/simulate_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SHAPES = {
    "smollm2": dict(kind="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "qwen3-1.7b": dict(kind="qwen3", hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=6144, vocab_size=151936,
                       tie_word_embeddings=True),
    "tiny": dict(kind="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=False),
}
DEFAULT_MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-latest-small"


def build_model(shape: str, vocab_at_least: int, dtype):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    spec = dict(SHAPES[shape])
    kind = spec.pop("kind")
    spec["vocab_size"] = max(spec["vocab_size"], vocab_at_least)  # every token id of the tokenizer exists
    cls = Qwen3Config if kind == "qwen3" else LlamaConfig
    config = cls(max_position_embeddings=8192, **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    return model.eval().to("cuda" if torch.cuda.is_available() else "cpu")


def records_path(args, work: Path) -> Path:
    if args.records:
        return Path(args.records)
    from usertwin.cli import main as cli

    out = work / "movielens.jsonl"
    assert cli(["convert", "movielens", str(args.movielens), "-o", str(out)]) == 0
    return out


def make_twin(model, tok, records: Path, max_length: int):
    from usertwin.config import from_mapping
    from usertwin.data.facts import twin_facts
    from usertwin.twin import Twin
    from usertwin.twin.api import timelines_of

    cfg = from_mapping({"max_length": max_length, "data": str(records)}, "benchmark")
    engine = counting_engine(cfg, model, tok)
    timelines = timelines_of(records, engine)
    facts = twin_facts(timelines)
    engine.scale = facts["rating_scale"]
    return Twin(engine, facts, timelines, records)


def counting_engine(cfg, model, tok):
    """An Engine that counts the tokens its generation really produced."""
    from usertwin.twin.engine import Engine

    class Counting(Engine):
        generated = 0

        def generate_ids(self, prompts, gen, seeds=None, streamer=None, gone=None, running=None):
            out = super().generate_ids(prompts, gen, seeds, streamer, gone, running)
            self.generated += sum(len(ids) for row in out for ids in row[:1 if gen.temperature == 0 else None])
            return out

    return Counting(cfg, model, tok)


def run_simulate(twin, users: list, batch: int, max_new_tokens: int, work: Path, shape: str,
                 batching: str = "auto") -> dict:
    shape = f"{shape}-{twin.engine.decoding}"
    # one output file per (shape, batch): simulate resumes, so a shared file would skip every row already there
    from usertwin.config import GenerateSettings
    from usertwin.simulate import StepItem, simulate

    gen = GenerateSettings(max_new_tokens=max_new_tokens, batch_size=batch)
    item = [StepItem("Heat (1995) (Action, Crime, Thriller): ", kind="movie_rating")]
    _sync()
    t = time.perf_counter()
    simulate(twin, users[:batch], item, None, work / f"warm-{shape}-{batch}.jsonl", gen, progress=False,
             batching=batching)  # warm-up
    _sync()
    first = time.perf_counter() - t  # with static decoding: compiling this batch's shapes
    twin.engine.generated = 0
    _sync()
    t = time.perf_counter()
    simulate(twin, users, item, None, work / f"sim-{shape}-{batch}.jsonl", gen, progress=False, batching=batching)
    _sync()
    dt = time.perf_counter() - t
    return {"users": len(users), "seconds": round(dt, 3), "users_per_s": round(len(users) / dt, 2),
            "first_batch_seconds": round(first, 3),
            "generated_tokens": twin.engine.generated, "generated_tokens_per_s": round(twin.engine.generated / dt, 1)}


def decode_step(twin, users: list, batch: int, steps: int) -> dict:
    """Seconds per decoding step of `batch` rows, all forced to run the full `steps` tokens."""
    import torch

    engine = twin.engine
    prompts = [twin.prompt(user=u, item="Heat (1995) (Action, Crime, Thriller): ", room=steps)
               for u in users[:batch]]
    width = max(map(len, prompts))
    static = {"cache_implementation": "static"} if engine.static else {}
    if static:  # as the engine pads it (twin/engine.py)
        width = max(64, 1 << (width - 1).bit_length())
    ids = torch.full((batch, width), engine.pad_id, device=engine.device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1

    def timed(n: int) -> float:
        _sync()
        t = time.perf_counter()
        with torch.no_grad():
            engine.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, use_cache=True, pad_token_id=engine.pad_id, **static)
        _sync()
        return time.perf_counter() - t

    timed(1), timed(steps)  # warm-up (static: compiles both lengths' shapes)
    one, full = min(timed(1) for _ in range(2)), min(timed(steps) for _ in range(2))
    return {"step_seconds": max(full - one, 1e-9) / (steps - 1), "prompt_tokens_mean": width,
            "context_mean": width + steps / 2}


def same_greedy(twin, users: list, max_new_tokens: int) -> float:
    """The share of rows whose greedy tokens are the same with this decoding as with the dynamic path."""
    from usertwin.config import GenerateSettings

    engine, decoding = twin.engine, twin.engine.decoding
    prompts = [twin.prompt(user=u, item="Heat (1995) (Action, Crime, Thriller): ", room=max_new_tokens)
               for u in users]
    g = GenerateSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    fast = engine.generate_ids(prompts, g)
    engine.decoding = "dynamic"
    try:
        slow = engine.generate_ids(prompts, g)
    finally:
        engine.decoding = decoding
    return round(sum(a == b for a, b in zip(fast, slow)) / len(prompts), 4)


def bytes_per_step(model, batch: int, context: float) -> dict:
    """Weight bytes one decoding step reads, and the KV cache it reads at the mean context."""
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not tied:  # the input embedding is only looked up, a row per sequence
        weights -= emb.numel() * emb.element_size() - batch * emb.shape[1] * emb.element_size()
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * emb.element_size() * context * batch
    return {"weight_bytes": weights, "kv_bytes": int(kv)}


def _sig(x: float) -> float:
    """4 significant digits: a share is 0.45 on a GPU and 1e-7 for the tiny CPU check."""
    return float(f"{x:.4g}")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(shape: str, args, tok, records: Path, work: Path) -> list[dict]:
    import torch

    from usertwin.model.load import pick_dtype

    model = build_model(shape, len(tok), pick_dtype(args.dtype))
    twin = make_twin(model, tok, records, args.max_length)
    out = []
    for b, decode in ((b, d) for b in args.batch_sizes for d in args.decodes):
        twin.engine.decoding = decode
        users = twin.users[:max(b * args.batches, args.min_users)]
        if len(users) < b:
            print(f"{shape} batch {b}: only {len(users)} users in the records; skipped", flush=True)
            continue
        row = {"shape": shape, "batch_size": b, "decode": decode,
               "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
               "max_new_tokens": args.max_new_tokens, **run_simulate(twin, users, b, args.max_new_tokens, work, shape, args.batching)}
        if decode != "dynamic":
            row["greedy_rows_identical"] = same_greedy(twin, users[:b], args.max_new_tokens)
        step = decode_step(twin, users, b, args.decode_steps)
        moved = bytes_per_step(model, b, step["context_mean"])
        row.update(step, **moved, params=sum(p.numel() for p in model.parameters()))
        row["decode_tokens_per_s"] = round(b / step["step_seconds"], 1)
        row["bandwidth_share_weights"] = _sig(moved["weight_bytes"] / step["step_seconds"] / args.bandwidth)
        row["bandwidth_share_weights_kv"] = _sig((moved["weight_bytes"] + moved["kv_bytes"])
                                                 / step["step_seconds"] / args.bandwidth)
        row["step_seconds"] = round(step["step_seconds"], 6)
        print(json.dumps(row), flush=True)
        out.append(row)
    del model, twin
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def environment(script: str, argv) -> dict:
    """The machine, card, torch and command a benchmark's results were measured with."""
    import torch

    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"cpu ({torch.get_num_threads()} threads)")
    return {"machine": platform.platform(), "device": device, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", f"benchmarks/{script}", *(argv or sys.argv[1:])])}


def markdown(results: list[dict], env: dict) -> str:
    lines = [f"# simulate speed ({env['device']}, bandwidth {env['bandwidth']:.3g} B/s)", "",
             f"`{env['command']}` on {env['date']}; torch {env['torch']}. One rating item per user through "
             "the simulate path (rating distribution + generation); random weights of the real shapes.", "",
             "| shape | batch | decode | users/s | generated tokens/s | vs dynamic | first batch s | decode step ms | "
             "decode tokens/s | bandwidth share (weights) | (weights + KV) | greedy rows = dynamic |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {(r["shape"], r["batch_size"]): r for r in results if r["decode"] == "dynamic"}
    for r in results:
        ref = base.get((r["shape"], r["batch_size"]))
        ratio = f"{r['generated_tokens_per_s'] / ref['generated_tokens_per_s']:.2f}x" if ref else "-"
        lines.append(f"| {r['shape']} ({r['dtype']}) | {r['batch_size']} | {r['decode']} | {r['users_per_s']} | "
                     f"{r['generated_tokens_per_s']} | {ratio} | {r['first_batch_seconds']} | "
                     f"{r['step_seconds'] * 1e3:.2f} | {r['decode_tokens_per_s']} | "
                     f"{100 * r['bandwidth_share_weights']:.3g}% | {100 * r['bandwidth_share_weights_kv']:.3g}% | "
                     f"{r.get('greedy_rows_identical', '-')} |")
    return "\n".join(lines) + "\n"


def parse(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["smollm2", "qwen3-1.7b"])
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--batches", type=int, default=2, help="batches timed per batch size")
    ap.add_argument("--min_users", type=int, default=8, help="at least this many users per batch size")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--batching", choices=("auto", "continuous", "static"), default="auto",
                    help="simulate's --batching (random weights rarely end a row early: both decode every token)")
    ap.add_argument("--decode_steps", type=int, default=32, help="tokens of the decode-step measurement")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on a GPU that has it, else float32")
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="the GPU's memory bandwidth in bytes/s")
    ap.add_argument("--tokenizer", default="smollm2", help="tokenizer (anything --model takes); default SmolLM2's")
    ap.add_argument("--records", help="records file (default: ml-latest-small from --movielens, converted)")
    ap.add_argument("--movielens", default=str(DEFAULT_MOVIELENS))
    ap.add_argument("--decodes", nargs="+", choices=("dynamic", "static"), default=["dynamic", "static"],
                    help="decodings measured side by side (twin/engine.py)")
    ap.add_argument("--out", required=True, help="folder for simulate_speed.json and simulate_speed.md")
    return ap.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse(argv)

    from usertwin.text.tokens import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="simulate-speed-"))
    tok = load_tokenizer(args.tokenizer)
    records = records_path(args, work)
    results = [r for shape in args.shapes for r in measure(shape, args, tok, records, work)]
    env = {**environment("simulate_speed.py", argv), "bandwidth": args.bandwidth}
    (out / "simulate_speed.json").write_text(json.dumps({"env": env, "results": results}, indent=1) + "\n")
    (out / "simulate_speed.md").write_text(markdown(results, env))
    print(markdown(results, env))
    return results


if __name__ == "__main__":
    main()
