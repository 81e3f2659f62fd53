#!/usr/bin/env bash
# One device call for issue 26 (fast twins): the shared prefill on a whole population (every ml-latest-small user
# on 100 items, ratings only; one prompt per pair on the first 40 users, side by side in the same run) for the
# SmolLM2 and Qwen3-1.7B shapes, then static decoding at batch 256 of the Qwen3 shape. Inputs carried in .gpu/
# (git-ignored): ml-small.jsonl (ml-latest-small converted: usertwin convert movielens DIR -o .gpu/ml-small.jsonl)
# and tok-smollm2/ (the SmolLM2 tokenizer folder). Run from the repository root on the GPU machine.
# PARTS picks and orders the parts (default: prefill-smollm2 prefill-qwen3-1.7b static256; also generate-SHAPE: 60
# users on 100 items generating 8 tokens each, shared against one prompt per pair on 20). Appends to OUT/run.log.
#   OUT=/some/dir bash benchmarks/gpu_fast_twins.sh     (about 9 minutes on an H100)
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
LOG="$OUT/run.log"  # one log: the device returns few files
BW=3.35e12  # memory bandwidth, B/s: H100 SXM; H200 below
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && BW=4.8e12
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
  for part in ${PARTS:-prefill-smollm2 prefill-qwen3-1.7b static256}; do
    echo "== $part"
    case $part in
      prefill-*) timeout 190 python benchmarks/shared_prefill.py --shape "${part#prefill-}" --items 100 \
                   --each_users 40 --batch_size 100 --tokenizer .gpu/tok-smollm2 --records .gpu/ml-small.jsonl \
                   --out "$OUT/$part" ;;
      generate-*) timeout 190 python benchmarks/shared_prefill.py --shape "${part#generate-}" --items 100 \
                    --users 60 --each_users 20 --batch_size 100 --generate_tokens 8 --tokenizer .gpu/tok-smollm2 \
                    --records .gpu/ml-small.jsonl --out "$OUT/$part" ;;
      static256) timeout 180 python benchmarks/simulate_speed.py --shapes qwen3-1.7b --batch_sizes 256 --batches 1 \
                   --bandwidth $BW --tokenizer .gpu/tok-smollm2 --records .gpu/ml-small.jsonl --out "$OUT/simulate" ;;
    esac
  done
} >> "$LOG" 2>&1
tail -n 60 "$LOG"
