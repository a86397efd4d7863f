#!/usr/bin/env bash
# gptjax beside MaxText 0.2.5 on the TPU compiler's programs (no TPU needed): see compare.py.
# Its own environment (MAXTEXT_VENV, default benchmarks/maxtext/.venv): maxtext[tpu]==0.2.5 on
# Python 3.12 with the jax and libtpu of gptjax's newest test lane, and gptjax itself.
#   bash benchmarks/maxtext/run.sh [--shapes gpt3-xl gpt3-6b] [--pairs 5] [--output FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${MAXTEXT_VENV:-benchmarks/maxtext/.venv}
if [ ! -x "$venv/bin/python" ]; then
  py=$(command -v python3.12 || ls "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12 | head -1)
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # jax 0.12.1 pins libtpu 0.0.53, which is not published: the newest lane's pair (scripts/constraints-py3.12.txt).
  "$venv/bin/python" -m pip install -q "maxtext[tpu]==0.2.5" "jax==0.12.0.1" "jaxlib==0.12.0.1" "libtpu==0.0.52"
  "$venv/bin/python" -m pip install -q -e .
fi
exec "$venv/bin/python" benchmarks/maxtext/compare.py "$@"
