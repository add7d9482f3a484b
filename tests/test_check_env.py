"""scripts/check_env.py and scripts/setup.sh's use of it: a broken environment is found and repaired.

The end-to-end test runs setup.sh in a copy of the repository whose .venv is a throwaway venv
that sees this environment's packages through a .pth file, with a fake CUDA-built torchvision
installed into it (it fails to import, as the real one does beside the CPU torch).
"""

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_check_env():
    spec = importlib.util.spec_from_file_location("check_env", ROOT / "scripts" / "check_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_env = _load_check_env()


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """check_env with its verified-fingerprint file in tmp_path (never this venv's)."""
    monkeypatch.setattr(check_env, "VERIFIED", tmp_path / ".memento-env-ok")
    return check_env


def _fake_versions(monkeypatch, versions: dict[str, str]):
    monkeypatch.setattr(check_env, "_version", versions.get)


def test_only_non_cpu_builds_beside_a_cpu_torch_are_flagged(isolated, monkeypatch):
    _fake_versions(monkeypatch, {"torch": "2.13.0+cpu", "torchvision": "0.28.0", "torchaudio": "2.13.0+cpu"})
    assert isolated.cuda_builds_beside_cpu_torch() == ["torchvision"]
    _fake_versions(monkeypatch, {"torch": "2.13.0", "torchvision": "0.28.0"})  # CUDA torch: fine
    assert isolated.cuda_builds_beside_cpu_torch() == []


def test_model_import_reruns_only_when_installed_distributions_change(isolated, monkeypatch):
    _fake_versions(monkeypatch, {"torch": "2.13.0+cpu"})
    fingerprint, imports = ["a"], []
    monkeypatch.setattr(isolated, "installed_fingerprint", lambda: fingerprint[0])
    monkeypatch.setattr(isolated, "import_error", lambda full: imports.append(full))
    assert isolated.check(repair=True, full=False) == [] and len(imports) == 1
    assert isolated.check(repair=True, full=False) == [] and len(imports) == 1  # unchanged: no import
    fingerprint[0] = "b"  # a pip install happened
    assert isolated.check(repair=True, full=False) == [] and len(imports) == 2
    assert isolated.check(repair=True, full=True) == [] and imports[-1] is True  # --full always imports


def test_a_failing_import_is_reported_and_not_remembered(isolated, monkeypatch):
    _fake_versions(monkeypatch, {"torch": "2.13.0+cpu"})
    monkeypatch.setattr(isolated, "installed_fingerprint", lambda: "a")
    monkeypatch.setattr(isolated, "import_error", lambda full: "ModuleNotFoundError: Could not import Qwen3")
    assert isolated.check(repair=True, full=False) == [
        "`from transformers import Qwen3ForCausalLM` fails: ModuleNotFoundError: Could not import Qwen3"]
    assert not isolated.VERIFIED.exists()


def test_hub_kernels_distribution_is_reported(isolated, monkeypatch):
    _fake_versions(monkeypatch, {"torch": "2.13.0+cpu", "kernels": "0.9.0"})
    assert "pip uninstall kernels" in isolated.check(repair=True, full=False)[0]


def test_fingerprint_follows_installs(isolated, monkeypatch, tmp_path):
    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    monkeypatch.setattr(isolated.site, "getsitepackages", lambda: [str(site_packages)])
    before = isolated.installed_fingerprint()
    (site_packages / "__pycache__").mkdir()  # bytecode written on import: not an install
    assert isolated.installed_fingerprint() == before
    (site_packages / "trl-1.16.0.dist-info").mkdir()
    assert isolated.installed_fingerprint() != before


def _fake_cuda_torchvision(site_packages: Path) -> None:
    """A torchvision distribution (metadata and RECORD, so pip can uninstall it) whose import fails
    like the CUDA build's beside the CPU torch."""
    (site_packages / "torchvision").mkdir()
    (site_packages / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    info = site_packages / "torchvision-0.28.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\nVersion: 0.28.0\n")
    (info / "RECORD").write_text("torchvision/__init__.py,,\n" + "".join(
        f"{info.name}/{name},,\n" for name in ("METADATA", "RECORD")))


@pytest.fixture
def repo_copy(tmp_path):
    """scripts/setup.sh, scripts/check_env.py and pyproject.toml in tmp_path, with a throwaway .venv
    that sees this environment's site-packages, and a stamp saying it is installed as asked."""
    for name in ("scripts/setup.sh", "scripts/check_env.py", "pyproject.toml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    site_packages = next((tmp_path / ".venv").glob("lib/python*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site_packages / "memento-parent.pth").write_text(ours + "\n")
    inputs = b"".join((tmp_path / name).read_bytes()
                      for name in ("pyproject.toml", "scripts/setup.sh", "scripts/check_env.py"))
    (tmp_path / ".venv" / ".memento-installed").write_text(f"cpu,dev {hashlib.sha256(inputs).hexdigest()[:16]}\n")
    return tmp_path, site_packages


def _setup(repo: Path, extras: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "MEMENTO_EXTRAS": extras, "HOME": str(repo)}
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_setup_repairs_a_broken_environment_even_when_its_stamp_matches(repo_copy):
    repo, site_packages = repo_copy
    _fake_cuda_torchvision(site_packages)
    python = repo / ".venv" / "bin" / "python"
    found = subprocess.run([python, "scripts/check_env.py", "--check"], cwd=repo, capture_output=True, text=True)
    assert found.returncode == 1 and "torchvision 0.28.0 is a CUDA build beside torch" in found.stdout

    repaired = _setup(repo, "cpu")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "removing torchvision" in repaired.stdout and "environment OK" in repaired.stdout
    assert not (site_packages / "torchvision").exists()
    assert "pip install" not in repaired.stdout + repaired.stderr  # repaired, not reinstalled
    assert (repo / ".venv" / ".memento-env-ok").exists()  # written once the model import passed


def test_setup_rejects_two_flavours(repo_copy):
    result = _setup(repo_copy[0], "cpu,gpu,bench")
    assert result.returncode == 2 and "choose cpu or gpu" in result.stderr
