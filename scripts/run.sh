#!/usr/bin/env bash
# README command 1: install if needed, then run the default job: the whole MEMENTO method on this
# CPU (tiny model, two-stage SFT, GRPO through the memento vLLM engine, evaluation; rl/demo.py).
# Extra arguments are key=value overrides, e.g. `bash scripts/run.sh rl_steps=30`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/python -m rl.demo "$@"
