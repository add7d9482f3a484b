#!/usr/bin/env bash
# README command 1: install if needed, then run the main job on the built-in default config.
# Extra arguments are Hydra overrides, e.g. `bash scripts/run.sh trainer.total_steps=5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/python -m rl.train "$@"
