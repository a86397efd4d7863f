#!/usr/bin/env bash
# The main job: set up, train nanoGPT's Shakespeare character model (resumes if interrupted),
# print a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/gptjax train experiments/shakespeare_char.yaml "$@"
.venv/bin/gptjax sample runs/shakespeare_char --prompt "ROMEO:" --max-new-tokens 300 --temperature 0.8
