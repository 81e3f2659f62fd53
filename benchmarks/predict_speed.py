"""Scoring speed of `usertwin predict` (likelihood scoring, no generation), side by side in one run:
one target per forward (--batch_size 1) against batches of targets in one forward.

    python benchmarks/predict_speed.py --data .gpu/ml.jsonl --model smollm2 --limit 64 --batch_sizes 1 16

Prints targets/s for each batch size and the ratio to batch size 1; results go to
benchmarks/results/predict_speed[_SUFFIX].json. The rows of every batch size are checked to agree (loss and
expected rating within 1e-3), so the speed-up is for the same numbers.
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


def random_smollm2(tokenizer_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000, tie_word_embeddings=True, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--data", required=True, help="records (e.g. converted ml-latest-small)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--limit", type=int, default=64, help="test targets scored per batch size")
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--suffix", default="cpu")
    ap.add_argument("--random_like", metavar="TOKENIZER_DIR",
                    help="score with a randomly initialised SmolLM2-135M-shaped model built with this tokenizer "
                         "(same speed as the real weights; no GGUF needed)")
    args = ap.parse_args()

    import torch

    from usertwin.cli import main as cli

    work = Path(tempfile.mkdtemp(prefix="predict-speed-"))
    if args.random_like:
        args.model = str(random_smollm2(Path(args.random_like), work / "model"))
    results, rows = [], {}
    for bs in args.batch_sizes:
        out = work / f"p{bs}.jsonl"
        t = time.perf_counter()
        assert cli(["predict", "--model", args.model, "--data", args.data, "--max_length", str(args.max_length),
                    "--split", "test", "--no-generate", "--limit", str(args.limit), "--batch_size", str(bs),
                    "-o", str(out), "--no-progress", "--cache_dir", str(work / "cache")]) == 0
        dt = time.perf_counter() - t
        rows[bs] = [json.loads(line) for line in out.read_text().splitlines()]
        results.append({"batch_size": bs, "targets": len(rows[bs]), "seconds": round(dt, 2),
                        "targets_per_second": round(len(rows[bs]) / dt, 2)})
        print(json.dumps(results[-1]), flush=True)
    # same numbers: float32 agrees to ~1e-5; bf16 on a GPU to its rounding (padding changes the kernels' sums)
    base, diff = rows[args.batch_sizes[0]], {"loss": 0.0, "expected_rating": 0.0}
    for rs in rows.values():
        for a, b in zip(base, rs):
            assert (a["user"], a["target_index"]) == (b["user"], b["target_index"])
            diff["loss"] = max(diff["loss"], abs(a["loss"] - b["loss"]))
            if "rating" in a:
                diff["expected_rating"] = max(diff["expected_rating"],
                                              abs(a["rating"]["expected"] - b["rating"]["expected"]))
    print(f"max difference between batch sizes: {diff}", flush=True)
    tol = 1e-3 if not torch.cuda.is_available() else 0.05
    assert diff["loss"] < tol and diff["expected_rating"] < tol, diff
    first = results[0]["targets_per_second"]
    for r in results:
        r["speedup_vs_first"] = round(r["targets_per_second"] / first, 2)
    env = {"machine": platform.platform(), "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join(["python", "benchmarks/predict_speed.py", *sys.argv[1:]])}
    dest = Path(__file__).parent / "results" / f"predict_speed_{args.suffix}.json"
    dest.write_text(json.dumps({"env": env, "results": results, "max_difference": diff}, indent=1) + "\n")
    print("\nbatch size  targets/s  vs batch size " + str(args.batch_sizes[0]))
    for r in results:
        print(f"{r['batch_size']:10}  {r['targets_per_second']:9.2f}  {r['speedup_vs_first']:.2f}x")


if __name__ == "__main__":
    main()
