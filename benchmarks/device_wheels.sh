#!/usr/bin/env bash
# Wheels for the lent GPU machine (Python 3.12, no network there): what gptjax imports on the
# accelerator check's path beyond the jax stack the machine has, into .device-wheels/ (git-ignored;
# about 5 MiB). Run here, where PyPI is reachable, then carry .device-wheels with the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
# The versions CI resolved on Python 3.12 (scripts/constraints-py3.12.txt); newer grain wheels carry manylinux_2_27+ tags.
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --no-deps \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  -c scripts/constraints-py3.12.txt -d .device-wheels \
  draccus mergedeep pyyaml-include toml typing-inspect mypy-extensions grain array-record safetensors \
  cloudpickle dm-tree tqdm tensorboardX
du -sh .device-wheels
