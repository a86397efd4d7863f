#!/usr/bin/env bash
# Set up with the test extras and run the whole suite on 8 fake CPU devices.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Scratch caches (peak-FLOPs measurement, encoded corpora) stay out of the user's home.
export GPTJAX_CACHE_DIR=${GPTJAX_CACHE_DIR:-$(mktemp -d)}
.venv/bin/python -m pytest -q -n 2 --dist loadgroup --durations=25 "$@"
