#!/usr/bin/env bash
# Issue 24's crowd-context ablation, planned for one GPU and about 20 minutes of it: on two MovieLens layouts
# (ml-latest-small, all 610 users; ml-1m, 400 seeded users), LoRA with history and without / with crowd context,
# the same recipe otherwise (max_length 2048, 2 epochs, best validation checkpoint, 65,536-token steps).
#
#   bash benchmarks/quality_crowd_gpu.sh SMOLLM2.gguf DATA_DIR OUT [SECONDS]
#   bash benchmarks/quality_crowd_gpu.sh --watch OUT [SECONDS]
#
# DATA_DIR holds ml-latest-small/ (ratings.csv, movies.csv, tags.csv) and ml-1m-400/ (ratings.dat with 400
# users, movies.dat, users.dat). The four trainings run at once, two a process (16,384-token micro-batches x 4);
# on an H100 (80 GB) the fourth ran out of memory on 2026-12-07 and was re-run alone once two had finished (the
# note in its results says so): on an H100 start the second dataset's process after the first's trainings end,
# or pass --batch_tokens 8192 --accumulation 8. The runs go to the background (setsid) so they outlive the call;
# results (json/md) land in OUT as each process finishes; the baselines are fit on a CPU machine with LensKit
# afterwards (quality_movielens.py --merge). The variants: lora_history (crowd context off) and lora_crowd (on).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# progress: the watcher of quality_gpu.sh (the same processes, the same logs under OUT/work)
if [ "${1:-}" = "--watch" ]; then
    exec bash "$ROOT/benchmarks/quality_gpu.sh" --watch "$2" "${3:-540}"
fi
GGUF=$1; [ -e "$GGUF" ] && GGUF=$(realpath "$GGUF")
DATA=$(realpath "$2"); OUT=$(mkdir -p "$3" && realpath "$3")
mkdir -p "$OUT/work"
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4
cd "$ROOT"
export COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
"$PY" -m usertwin.cli convert movielens "$DATA/ml-latest-small" -o "$OUT/work/ml-latest-small.jsonl" --no_progress
"$PY" -m usertwin.cli convert movielens "$DATA/ml-1m-400" -o "$OUT/work/ml-1m-400.jsonl" --no_progress
for set in ml-latest-small ml-1m-400; do
    setsid nohup "$PY" benchmarks/quality_movielens.py --model "$GGUF" --records "$OUT/work/$set.jsonl" \
        --skip baselines,zero_shot,zero_shot_none,lora_none,full_history,full_none \
        --variant lora_crowd=lora_history:crowd_context=item \
        --max_length 2048 --max_epochs 2 --parallel 2 --batch_tokens 16384 --accumulation 4 \
        --batch_size 128 --scoring window --results_dir "$OUT" --results_suffix "crowd_$set" \
        --note "usertwin commit $COMMIT; baselines: merge on a machine with LensKit (--merge)" \
        --out "$OUT/work/$set" > "$OUT/work/$set.log" 2>&1 < /dev/null &
done
sleep 5
exec bash "$ROOT/benchmarks/quality_gpu.sh" --watch "$OUT" "${4:-540}"
