#!/usr/bin/env bash
# Create .venv with Python 3.11 and install gptjax. `setup.sh test` adds the test extras
# (transformers and the CPU build of torch, for parity checks).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  # An unpinned torch resolves to a multi-GB CUDA build; 2.13.0 is the CPU build on this machine.
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -c scripts/constraints.txt -e ".[hf,storage,eval,dev,wandb]"
  # The TPU compiler for the TPU-topology plan tests, beside the environment rather than in it: an
  # importable libtpu makes every jax start on this machine look for a TPU and log that it found
  # none. Tests point TPU_LIBRARY_PATH at it (tests/conftest.py); the version is jax's `tpu` pin.
  libtpu=$(python -c "import importlib.metadata as m; print(next(r.split(';')[0].strip() for r in m.requires('jax') if r.startswith('libtpu')))")
  [ -f .venv/tpu-compiler/libtpu/libtpu.so ] || python -m pip install -q --no-deps --target .venv/tpu-compiler "$libtpu"
else
  python -m pip install -q -c scripts/constraints.txt -e .
fi
