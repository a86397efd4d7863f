#!/usr/bin/env bash
# The whole suite in two lanes, each in its own environment on 8 fake CPU devices:
#   newest     .venv: Python 3.12, the newest jax, flax, optax, orbax and libtpu; every test that needs
#              no PyTorch (the TPU plan tests included) but the slow `workflow` ones
#   reference  .venv-py311: Python 3.11, jax 0.10.2 (the oldest jax gptjax supports) and the PyTorch
#              reference stack; the tests marked `torch` or `workflow` (sweeps and fault recovery end
#              to end, whose logic is gptjax's own) and every test not marked `slow`
# Together they run every test; each lane takes about 20 minutes or less on 2 cores.
# GPTJAX_LANES picks lanes (default "newest reference"); GPTJAX_MARKS narrows what each lane runs
# (GPTJAX_MARKS="not slow" is the inner loop). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for lane in ${GPTJAX_LANES:-newest reference}; do
  case "$lane" in
    newest) bash scripts/setup.sh test; venv=.venv; marks="not torch and not (workflow and slow)" ;;
    reference) bash scripts/setup.sh reference; venv=.venv-py311; marks="torch or workflow or not slow" ;;
    *) echo "test.sh: unknown lane '$lane' in GPTJAX_LANES; expected newest or reference" >&2; exit 2 ;;
  esac
  [ -z "${GPTJAX_MARKS:-}" ] || marks="($marks) and ($GPTJAX_MARKS)"
  "$venv/bin/python" -c "import sys, jax, flax; print(f'== lane $lane: Python {sys.version.split()[0]}, jax {jax.__version__}, flax {flax.__version__}; -m \"$marks\"')"
  start=$SECONDS
  # Scratch caches (peak-FLOPs measurement, encoded corpora, compiled programs) stay out of the
  # user's home, one per lane.
  GPTJAX_CACHE_DIR=${GPTJAX_CACHE_DIR:-$(mktemp -d)} GPTJAX_TEST_LANE=$lane \
    "$venv/bin/python" -m pytest -q -n 2 --dist loadgroup --durations=25 -m "$marks" "$@" || status=$?
  echo "== lane $lane: $((SECONDS - start)) s"
done
exit "$status"
