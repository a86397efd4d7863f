#!/usr/bin/env bash
# Create a virtual environment and install gptjax into it.
#   setup.sh            .venv on the newest Python here (3.12 where it exists, else 3.11): the newest jax
#   setup.sh test       the same with the test extras except PyTorch (the test lane "newest")
#   setup.sh reference  .venv-py311: Python 3.11, jax 0.10.2 and the PyTorch reference stack (lane "reference")
# PYTHON=... chooses the interpreter of .venv instead.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # the first of the given versions that runs, on PATH or among pyenv's versions
  local v exe
  for v in "$@"; do
    for exe in "python$v" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v"; do
      # A pyenv shim is on PATH for every version pyenv has, but runs only the selected ones.
      if "$exe" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
        echo "$exe"; return
      fi
    done
  done
  echo "setup.sh: no Python $* found on PATH or under pyenv; gptjax needs Python 3.11 or newer" >&2
  return 1
}

mode=${1:-main}
case "$mode" in
  main|test) venv=.venv; py=${PYTHON:-$(find_python 3.12 3.11)} ;;
  reference) venv=.venv-py311; py=$(find_python 3.11) ;;
  *) echo "setup.sh: unknown mode '$mode'; expected nothing, test or reference" >&2; exit 2 ;;
esac
want=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$want" ]; then
  echo "setup.sh: $venv is not Python $want; creating it again"
  rm -rf "$venv"
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
# setuptools warns on every editable install that a folder named like the package may shadow it:
# here that folder is the package itself (gptjax/, with launch/ mapped to gptjax.launch).
export PYTHONWARNINGS="ignore:Editable installation"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip
# Each Python's set of versions that resolve together (pip freeze of the last CI that passed).
constraints=(-c "scripts/constraints-py$want.txt")
case "$mode" in
  main) "${pip[@]}" "${constraints[@]}" -e . ;;
  test) "${pip[@]}" "${constraints[@]}" -e ".[storage,eval,dev,wandb,docs]" ;;
  reference)
    # An unpinned torch resolves to a multi-GB CUDA build; 2.13.0 is the CPU build on this machine.
    "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" "${constraints[@]}" -e ".[hf,storage,eval,dev,wandb]" ;;
esac
if [ "$mode" != main ]; then
  # The TPU compiler for the TPU-topology plan tests, beside the environment rather than in it: an
  # importable libtpu makes every jax start on this machine look for a TPU and log that it found
  # none. Tests point TPU_LIBRARY_PATH at it (tests/conftest.py); the version is jax's `tpu` pin.
  libtpu=$("$venv/bin/python" -c "import importlib.metadata as m; print(next(r.split(';')[0].strip() for r in m.requires('jax') if r.startswith('libtpu')))")
  [ -f "$venv/tpu-compiler/libtpu/libtpu.so" ] || "${pip[@]}" --no-deps --target "$venv/tpu-compiler" "$libtpu"
fi
