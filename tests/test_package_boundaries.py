"""Package rules from DESIGN.md section 2: import direction and no heavy imports at import time."""

import ast
import json
import os
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


HEAVY = ("vllm", "deepspeed", "ray")
# The modules that wrap a heavy dependency, and so import it when they are imported. Every other
# module must import none of them, so that configs, data, rewards and `--cfg job` stay cheap and
# a machine without a GPU stack can read them.
WRAPPERS = {
    "rl.cluster": "Ray worker groups and placement: the module that wraps Ray",
    "rollout.engine": "the memento engine on vLLM's LLM class",
    "rollout.vllm_plugin.logits": "vLLM logits processors (block-length cap, test scripts)",
    "rollout.vllm_plugin.runner": "the vLLM model runner with KV compaction",
    "rollout.vllm_plugin.scheduler": "the vLLM scheduler that frees evicted KV pages",
    "rollout.vllm_plugin.weights": "vLLM's weight-transfer engine for the bucketed weight push",
}
# Imported once before the modules are tried one by one, so each try costs only our own code;
# none of them loads a heavy dependency (checked).
PRELOADED = ("numpy", "torch", "transformers", "omegaconf", "hydra", "pyarrow")

PROBE = """
import importlib, json, os, sys
heavy, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for lib in json.loads(sys.argv[3]):
    importlib.import_module(lib)
results = {"<preloaded>": sorted(h for h in heavy if h in sys.modules)}
for name in names:  # each module in a fork of this interpreter: nothing of ours imported yet
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            found = sorted(h for h in heavy if h in sys.modules)
        except BaseException as e:
            found = [f"import failed: {type(e).__name__}: {e}"]
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        results[name] = json.loads(f.read() or '["no result"]')
    os.wait()
print(json.dumps(results))
"""


def module_names(root: Path, packages) -> list[str]:
    """Every module of the packages under `root`, found on disk (walking by import would import
    the packages in this process)."""
    names = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def heavy_imports(root: Path, packages, skip=()) -> dict[str, list[str]]:
    """module -> the heavy dependencies in sys.modules after importing it (fresh interpreter);
    the `skip` modules are not tried."""
    names = [name for name in module_names(root, packages) if name not in skip]
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(names),
                          json.dumps(PRELOADED)],
                         cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_no_module_but_the_wrappers_imports_vllm_deepspeed_or_ray():
    assert set(WRAPPERS) <= set(module_names(ROOT, PACKAGES)), "a listed wrapper is gone"
    results = heavy_imports(ROOT, PACKAGES, skip=WRAPPERS)  # they may; importing them is slow
    assert results.pop("<preloaded>") == []
    offenders = {name: found for name, found in results.items() if found}
    assert not offenders, offenders
    assert len(results) > 50  # every other module of the four packages was tried


def test_the_probe_catches_a_module_level_ray_import(tmp_path):
    # What the test above would see if rl/train.py imported Ray at module level.
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text("")
    (tmp_path / "toy" / "train.py").write_text("import ray\n")
    (tmp_path / "toy" / "lazy.py").write_text("def start():\n    import ray\n")
    results = heavy_imports(tmp_path, ["toy"])
    assert results["toy.train"] == ["ray"]
    assert results["toy.lazy"] == [] and results["toy"] == []


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
