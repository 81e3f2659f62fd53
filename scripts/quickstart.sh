#!/usr/bin/env bash
# The main job on the embedded default: convert the shipped MovieLens slice, prepare it, and show what
# training will see (examples with the loss-bearing spans marked, counts per split).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
usertwin convert movielens examples/movielens-mini -o "$OUT/records.jsonl"
usertwin prepare --config configs/quickstart.yaml --data "$OUT/records.jsonl" --output_dir "$OUT"
usertwin inspect --config configs/quickstart.yaml --data "$OUT/records.jsonl" --output_dir "$OUT" \
  --split train -n 1 --dump "$OUT/targets.jsonl"
