#!/usr/bin/env bash
# One device call for issue 27: LoRA against full fine-tuning (benchmarks/lora_speed.py), the SmolLM2-135M shape at
# 65,536-token micro-batches (with torch's profiler on two more steps of each variant) and the Qwen3-1.7B shape at
# 16,384 (32,768 ran out of an H100's 80 GB); LoRA on MoE experts, peft's path against grouped products
# (benchmarks/moe_lora.py, 4 layers of the Qwen3-30B-A3B shape). liger-kernel comes as a carried wheel (.gpu/whl,
# git-ignored: pip download --no-deps liger-kernel), so every variant runs with it, as training on a GPU does by
# default. Inputs in .gpu/ as for gpu_fast_twins.sh. PARTS picks and orders the parts (default: smollm2 moe qwen3).
# Appends to OUT/run.log.
#   OUT=/some/dir bash benchmarks/gpu_lora_speed.sh     (about 8 minutes on an H200)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
LOG="$OUT/run.log"
{ python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=src:/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, transformers, peft, liger_kernel; print(torch.__version__, transformers.__version__, peft.__version__)"
  for part in ${PARTS:-smollm2 moe qwen3}; do
    echo "== $part"
    case $part in
      smollm2) timeout 180 python benchmarks/lora_speed.py --shapes smollm2 --batch_tokens 65536 --profile --breakdown \
                 --records .gpu/ml-small.jsonl --tokenizer .gpu/tok-smollm2 --out "$OUT/smollm2" ;;
      moe) timeout 100 python benchmarks/moe_lora.py --layers 4 --tokens 16384 --out "$OUT/moe" ;;
      qwen3) timeout 170 python benchmarks/lora_speed.py --shapes qwen3-1.7b --batch_tokens 16384 --max_length 4096 \
               --variants full lora-float32 lora-mixed \
               --records .gpu/ml-small.jsonl --tokenizer .gpu/tok-smollm2 --out "$OUT/qwen3" ;;
    esac
  done
  rm -f "$OUT"/*/run_logs.jsonl  # the device returns at most 8 files
} >> "$LOG" 2>&1
tail -n 40 "$LOG"
