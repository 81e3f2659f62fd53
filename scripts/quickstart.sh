#!/usr/bin/env bash
# The main job on the embedded default: convert the shipped MovieLens slice, then LoRA-train the embedded
# SmolLM2-135M-Instruct on it (CPU, a few minutes); prints the validation loss before and after training.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
usertwin convert movielens examples/movielens-mini -o examples/movielens-mini/records.jsonl
usertwin train --config configs/quickstart.yaml --overwrite
