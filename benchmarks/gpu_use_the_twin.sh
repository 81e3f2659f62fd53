#!/usr/bin/env bash
# One device call: simulate throughput, serve latency (issue "use the twin") and dialogue training speed in both
# units (issue "dialogue timelines"). Run from the repository root on the GPU machine, with the inputs carried in
# .gpu/ (git-ignored): data/ml (ml-latest-small CSVs), data/all_samples.json (the seeds' dialogue sample),
# tok/ (the SmolLM2 tokenizer folder), wheels/ (fastapi, uvicorn and their deps for the machine's Python).
#   OUT=/some/dir bash benchmarks/gpu_use_the_twin.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
LOG="$OUT/run.log"  # one log: the device returns few files
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
  python -m pip install -q --no-index --find-links .gpu/wheels fastapi uvicorn && python -c 'import uvicorn, fastapi'
  python -m usertwin.cli convert seed-samples .gpu/data/all_samples.json -o /tmp/seed.jsonl --no_progress
  echo "== dialogue_speed"
  timeout 240 python benchmarks/dialogue_speed.py --data /tmp/seed.jsonl --tokenizer .gpu/tok --out "$OUT/dialogue"
  echo "== simulate_speed"
  timeout 200 python benchmarks/simulate_speed.py --shapes smollm2 qwen3-1.7b --batch_sizes 1 32 256 \
      --bandwidth 4.8e12 --tokenizer .gpu/tok --movielens .gpu/data/ml --out "$OUT/simulate"
  echo "== serve_latency"
  timeout 120 python benchmarks/serve_latency.py --tokenizer .gpu/tok --out "$OUT/serve"
} > "$LOG" 2>&1
tail -n 60 "$LOG"
