"""Latency of a live `usertwin serve` under 1, 16 and 64 concurrent clients: p50 / p95 / mean per request and
requests per second, for a chat completion (generation) and a rating distribution (one scoring forward), for each
--batching mode side by side (static: a batch decodes until all its rows are done; continuous: requests join and
leave the running batch between decode steps).

    python benchmarks/serve_latency.py --batching static continuous --out benchmarks/results/serve_latency_h100
    python benchmarks/serve_latency.py --shape tiny --clients 1 4 --requests 3 --out /tmp/sl     # CPU check

The twin is a randomly initialised model of the SmolLM2-135M shape (llama, hidden 576, 30 layers, 9 heads,
3 kv heads, intermediate 1536; same speed as the real weights) with the SmolLM2 tokenizer (--tokenizer:
`smollm2`, the embedded default, or a tokenizer folder), in a run directory built here with synthetic users
(ratings and dialogue). The server runs as a subprocess, as a user would start it; each client sends its
requests one after another, all clients at once. Writes OUT/serve_latency.json and OUT/serve_latency.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

SHAPES = {  # llama configs: the SmolLM2-135M shape, and one small enough for a CPU check
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
KEY = "bench"


def build_run(run: Path, shape: str, tokenizer: str, max_length: int) -> dict:
    """A run directory a twin loads: config.yaml, full weights + tokenizer in best/, twin.json."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from usertwin.text.tokens import load_tokenizer

    tok = load_tokenizer(tokenizer)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, rope_theta=100000,
                         tie_word_embeddings=True, rms_norm_eps=1e-5, **SHAPES[shape])
    torch.manual_seed(0)
    best = run / "best"
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(best)
    tok.save_pretrained(best)
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    (run / "config.yaml").write_text(f"model: {best}\nmax_length: {max_length}\nlora: false\ndtype: {dtype}\n")
    (run / "twin.json").write_text(json.dumps({"rating_scale": [f"{v}.0" for v in range(1, 6)],
                                               "task": "Rate movies and talk about them.", "language": "en",
                                               "collections": ["dialogue", "movie_rating"]}))
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tok), "dtype": dtype}


def write_records(path: Path, users: int, items: int) -> None:
    """Synthetic users: alternating ratings and dialogue lines, so prompts have realistic history."""
    with path.open("w") as f:
        for u in range(users):
            ratings = [{"continuation_prefix": f"Movie {(i * 7 + u) % 50} (1999) (Drama, Comedy): ",
                        "continuation": f"{(i + u) % 5 + 1}.0", "timestamp": 1_000_000 + 120 * i}
                       for i in range(items)]
            lines = [{"context": [{"source": "ALEX", "content": f"What did you think of movie {i}?"}],
                      "continuation": f"It was fine, I would watch movie {i} again.",
                      "timestamp": 1_000_060 + 120 * i} for i in range(items)]
            f.write(json.dumps({"user_hash": f"u{u}", "user": {"profile": {"name": f"user {u}", "age": 20 + u}},
                                "task": {"description": "Rate movies and talk about them.", "language": "en",
                                         "task_behavior_collections": [{"type": "movie_rating", "data": ratings},
                                                                       {"type": "dialogue", "data": lines}]}})
                    + "\n")


MODES = {"static": ["--batching", "static"], "continuous": ["--batching", "continuous", "--decode", "dynamic"],
         "graphs": ["--batching", "continuous", "--decode", "static"]}  # graphs: twin/slots.py


def start_server(run: Path, records: Path, max_batch: int, wait_ms: float, log: Path, batching: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "usertwin.cli", "serve", "--run", str(run), "--data", str(records), "--port",
           str(port), "--api_key", KEY, "--max_batch", str(max_batch), "--batch_wait_ms", str(wait_ms),
           *MODES[batching]]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(base: str, proc, log: Path, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"usertwin serve exited:\n{log.read_text()[-3000:]}")
            try:
                if (await c.get(base + "/v1/models", timeout=5)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit(f"usertwin serve did not start:\n{log.read_text()[-3000:]}")


def request_of(kind: str, model: str, user: str, n: int, max_tokens: int) -> tuple[str, dict]:
    if kind == "chat":
        return "/v1/chat/completions", {"model": model, "user": user, "max_tokens": max_tokens,
                                        "messages": [{"role": "user", "name": "ALEX",
                                                      "content": f"What did you think of movie {n}?"}]}
    return "/v1/twin/predict", {"user": user, "item": f"Movie {n % 50} (1999) (Drama, Comedy): ", "generate": False}


async def load(base: str, kind: str, model: str, clients: int, requests: int, users: int, max_tokens: int) -> dict:
    """`clients` concurrent clients, each sending `requests` requests one after another."""
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=600,
                                 limits=limits) as c:
        before = (await c.get("/v1/twin")).json()["batching"]

        async def client(k: int) -> None:
            for r in range(requests):
                path, body = request_of(kind, model, f"u{(k + r) % users}", k * requests + r, max_tokens)
                t = time.perf_counter()
                resp = await c.post(path, json=body)
                latencies.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    raise SystemExit(f"{path}: {resp.status_code} {resp.text[:500]}")

        t = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t
        after = (await c.get("/v1/twin")).json()["batching"]
    batches = after["batches"] - before["batches"]
    steps = after.get("steps", 0) - before.get("steps", 0)
    rows = round((after.get("row_steps", 0) - before.get("row_steps", 0)) / steps, 2) if steps else None
    return {"batching": after["mode"], "endpoint": kind, "clients": clients, "requests": len(latencies),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1), "requests_per_s": round(len(latencies) / wall, 2),
            "mean_batch": round((after["requests"] - before["requests"]) / max(1, batches), 2),
            "rows_per_step": rows}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an observed latency, never an interpolated one."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def markdown(meta: dict, rows: list[dict]) -> str:
    head = ["batching", "endpoint", "clients", "requests", "p50 ms", "p95 ms", "mean ms", "req/s", "mean batch",
            "rows/step"]
    lines = [f"# usertwin serve latency ({meta['device']})", "",
             f"Model: random {meta['shape']} llama ({meta['parameters']:,} parameters), {meta['dtype']}, "
             f"tokenizer {meta['tokenizer']}; max_tokens {meta['max_tokens']} (chat, greedy); batch wait "
             f"{meta['batch_wait_ms']} ms, max batch {meta['max_batch']}; {meta['users']} users x "
             f"{meta['items']} items each. mean batch: requests per batch (static) or per join of the running "
             "batch (continuous); rows/step: rows in a decode step, continuous only.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['batching']} | {r['endpoint']} | {r['clients']} | {r['requests']} | {r['p50_ms']} | "
                     f"{r['p95_ms']} | {r['mean_ms']} | {r['requests_per_s']} | {r['mean_batch']} | "
                     f"{'-' if r['rows_per_step'] is None else r['rows_per_step']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for serve_latency.json and serve_latency.md")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--tokenizer", default="smollm2", help="`smollm2` (embedded default) or a tokenizer folder")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--requests", type=int, default=8, help="requests per client at each concurrency")
    ap.add_argument("--endpoints", nargs="+", choices=("chat", "predict"), default=["chat", "predict"])
    ap.add_argument("--max_tokens", type=int, default=16)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--items", type=int, default=10, help="ratings (and as many dialogue lines) per user")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--max_batch", type=int, default=64)
    ap.add_argument("--batch_wait_ms", type=float, default=5.0)
    ap.add_argument("--batching", nargs="+", choices=sorted(MODES), default=["static", "continuous"],
                    help="serve's --batching modes to measure, one server each, side by side in one table (graphs: "
                         "continuous with --decode static, each decode step a CUDA graph)")
    args = ap.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    run, records = work / "run", work / "records.jsonl"
    run.mkdir()
    built = build_run(run, args.shape, args.tokenizer, args.max_length)
    write_records(records, args.users, args.items)
    rows = []
    for mode in args.batching:
        log = work / f"server-{mode}.log"
        proc, base = start_server(run, records, args.max_batch, args.batch_wait_ms, log, mode)
        try:
            asyncio.run(wait_up(base, proc, log))
            for kind in args.endpoints:
                # warm-up, not measured: kernels, and the graphs of every batch size the clients will make
                asyncio.run(load(base, kind, "run", max(args.clients), 1, args.users, args.max_tokens))
                for c in args.clients:
                    rows.append(asyncio.run(load(base, kind, "run", c, args.requests, args.users, args.max_tokens)))
                    rows[-1]["batching"] = mode
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    cpu = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    meta = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu, "shape": args.shape,
            **built, "tokenizer": args.tokenizer, "max_tokens": args.max_tokens,
            "batch_wait_ms": args.batch_wait_ms, "max_batch": args.max_batch, "batching": args.batching, "users": args.users,
            "items": args.items, "requests_per_client": args.requests, "torch": torch.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_latency.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    (out / "serve_latency.md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
