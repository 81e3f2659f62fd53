"""LoRA on a MoE's experts: peft's path (W + BA built per layer and pass) against grouped products
(train/moelora.py), side by side in one run (issue 27, item 3). Run on the device tool's GPU:

    python3 benchmarks/moe_lora.py --layers 4 --tokens 16384 --out $OUT

The Qwen3-30B-A3B layer shape (hidden 2048, 128 experts of 768, 8 a token, 32 heads, 4 KV heads) with --layers
of its 48 layers, random bf16 weights, LoRA r16 on attention and experts (usertwin's add_lora), one packed row of
--tokens random token ids: forward + backward + AdamW step; tokens/s over --steps after --warmup, peak memory,
and the losses of the first step (the same weights and data in both, so they must agree within bf16 tolerance).
Results: OUT/moe_lora.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import simulate_speed as ss  # noqa: E402

SHAPES = {
    "qwen3-30b-a3b": dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                          num_experts_per_tok=8, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512),
}


def build(shape: str, layers: int, grouped: bool, device: str):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    import usertwin.train.trainable as trainable

    config = Qwen3MoeConfig(num_hidden_layers=layers, tie_word_embeddings=False, max_position_embeddings=65536,
                            **SHAPES[shape])
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    torch.manual_seed(1)
    model = trainable.add_lora(model, r=16, alpha=32, dropout=0.0, grouped_experts=grouped)
    model = trainable.mixed_precision(model, "auto")
    return model


def run(args, grouped: bool) -> dict:
    from usertwin.train.trainable import TargetLoss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(args.shape, args.layers, grouped, device)
    loss_model = TargetLoss(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SHAPES[args.shape]["vocab_size"], (1, args.tokens), generator=g).to(device)
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(args.tokens, device=device)[None]}
    losses, stamps = [], []
    for _ in range(args.warmup + args.steps):
        loss = loss_model(**batch).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # a sync: the stamp follows the step's work
        stamps.append(time.perf_counter())
    seconds = stamps[-1] - stamps[args.warmup - 1] if args.warmup else stamps[-1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    del model, loss_model, opt
    return {"path": "grouped" if grouped else "peft", "tokens_per_second": round(args.tokens * args.steps / seconds),
            "first_loss": round(losses[0], 5), "peak_gib": round(peak, 2)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the shape (the real one has 48)")
    ap.add_argument("--tokens", type=int, default=16384, help="tokens of the one packed row a step trains on")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True, help="folder for moe_lora.json and moe_lora.md")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = ss.environment("moe_lora.py", argv)
    results = []
    for grouped in (False, True):
        try:
            results.append(run(args, grouped))
        except torch.OutOfMemoryError as e:
            results.append({"path": "grouped" if grouped else "peft", "error": str(e).splitlines()[0]})
        print(json.dumps(results[-1]), flush=True)
    (args.out / "moe_lora.json").write_text(json.dumps({"env": env, "args": vars(args) | {"out": str(args.out)},
                                                        "results": results}, indent=1))
    lines = [f"# LoRA on MoE experts: peft's W + BA against grouped products ({env['device']})", "",
             f"`{env['command']}` on {env['date']}; torch {env['torch']}. {args.shape} layer shape, {args.layers} "
             f"layers, random weights, LoRA r16 on attention and experts, one row of {args.tokens} tokens.", "",
             "| path | tokens/s | first loss | peak GiB |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['path']} | {r.get('tokens_per_second', r.get('error', ''))} | {r.get('first_loss', '')} | "
              f"{r.get('peak_gib', '')} |" for r in results]
    if all("tokens_per_second" in r for r in results):
        lines += ["", f"grouped / peft tokens/s: **{results[1]['tokens_per_second'] / results[0]['tokens_per_second']:.2f}x**"]
    (args.out / "moe_lora.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
