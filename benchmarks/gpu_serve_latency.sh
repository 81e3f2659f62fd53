#!/usr/bin/env bash
# One device step for issue 26 item 3: usertwin serve's chat latency, static against continuous batching side by
# side (benchmarks/serve_latency.py), 1 and 64 concurrent clients, the SmolLM2-135M shape with random weights and
# the tokenizer in .gpu/tok-smollm2 (git-ignored; see gpu_fast_twins.sh). FastAPI, uvicorn and pydantic come as
# carried wheels in .gpu/whl (the GPU box has none of them): pip download --no-deps --only-binary=:all:
# --python-version 3.12 --platform manylinux_2_17_x86_64 fastapi starlette uvicorn pydantic pydantic_core
# typing-inspection annotated-types annotated-doc opentelemetry-api typing_extensions. Appends to OUT/run.log.
#   OUT=/some/dir bash benchmarks/gpu_serve_latency.sh     (about 2 minutes on an H200)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
{ echo "== serve_latency ${MODES:-static continuous graphs}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH=src:/tmp/site
  timeout 170 python benchmarks/serve_latency.py --batching ${MODES:-static continuous graphs} --clients 1 64 --requests 8 \
      --endpoints chat --max_tokens 16 --max_batch 64 --tokenizer .gpu/tok-smollm2 --out "$OUT/serve"
} >> "$OUT/run.log" 2>&1
tail -n 20 "$OUT/run.log"
