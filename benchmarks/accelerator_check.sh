#!/usr/bin/env bash
# The accelerator check for a lent GPU machine: at most a few minutes, random weights, nothing
# downloaded. The machine brings jax (with CUDA), flax, optax, orbax and tiktoken; what else gptjax
# imports on this path travels beside the checkout as wheels (benchmarks/device_wheels.sh makes
# .device-wheels/ here; carry it). Prints the figures and writes them to $OUT (or benchmarks/results).
#   bash benchmarks/accelerator_check.sh            on the GPU machine
#   bash benchmarks/accelerator_check.sh --smoke    anywhere: a tiny model, to check the script runs
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .device-wheels ] && ! "$PY" -c "import draccus, grain, safetensors" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps .device-wheels/*.whl
fi
out=${OUT:-benchmarks/results}
mkdir -p "$out"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/accelerator_check.py --output "$out/accelerator_check.json" "$@"
