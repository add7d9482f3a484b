#!/usr/bin/env bash
# README command 2: install if needed, then run the whole test suite (extra args go to pytest).
#   bash scripts/test.sh                 # everything, slow tests included (what CI runs)
#   bash scripts/test.sh -m "not slow"   # the quick subset
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled WANDB_MODE=offline HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
