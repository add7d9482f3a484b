"""Package rules from DESIGN.md section 2: import direction and no heavy imports at import time."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl", "rollout", "rewards", "kernels")
# Who may import whom (rollout -> kernels only for the reference generator).
ALLOWED = {
    "rl": {"rollout", "kernels", "rewards"},
    "rollout": {"kernels"},
    "kernels": set(),
    "rewards": set(),
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def fresh_python(code: str) -> str:
    """stdout of `code` run in a new interpreter (nothing imported by the tests leaks in)."""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        forbidden = (imported_packages(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        assert not forbidden, f"{path.relative_to(ROOT)} imports {sorted(forbidden)}"


def test_importing_the_packages_pulls_in_no_vllm_deepspeed_or_ray():
    code = (
        "import sys, rl, rollout, rewards, kernels\n"
        "heavy = sorted(m for m in ('vllm', 'deepspeed', 'ray') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    assert fresh_python(code).strip() == ""


def test_transformers_does_not_mistake_our_kernels_package_for_hub_kernels():
    """transformers probes for Hugging Face's third-party `kernels` package by import name.

    It finds our top-level `kernels`, maps it to our distribution (memento-rl) and reads our
    version, which is below its supported range, so hub kernels stay disabled and transformers
    never imports our package. This breaks if our version reaches that range or if the
    distribution metadata goes missing (then transformers imports the package to read a version).
    """
    code = (
        "import sys\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "import transformers.integrations.hub_kernels\n"
        "print(is_kernels_available(), 'kernels' in sys.modules)\n"
    )
    assert fresh_python(code).split()[-2:] == ["False", "False"]
