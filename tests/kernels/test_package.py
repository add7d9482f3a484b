"""Package boundaries: what `import kernels` pulls in, the backend switch, transformers' probe."""

import subprocess
import sys

import pytest
import torch

from kernels import use_triton


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_import_pulls_in_no_triton_and_no_sibling_package():
    loaded = _run("import sys, kernels; print(' '.join(sys.modules))").split()
    for name in ("triton", "transformers", "rollout", "rl", "rewards", "vllm", "ray", "deepspeed"):
        assert name not in loaded, name


def test_transformers_does_not_take_our_package_for_hub_kernels():
    """transformers probes a top-level `kernels` (the Hugging Face hub-kernels library). It finds
    ours, reads the version of the distribution that ships it (memento-rl 0.1.0), which is
    outside its accepted range, and answers False without importing our package."""
    out = _run("import sys; from transformers.utils import is_kernels_available; "
               "print(is_kernels_available(), 'kernels' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_backend_switch(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("MEMENTO_KERNELS_BACKEND", raising=False)
    assert (use_triton(cpu), use_triton(cuda)) == (False, True)
    monkeypatch.setenv("MEMENTO_KERNELS_BACKEND", "torch")
    assert not use_triton(cuda)
    assert use_triton(cpu, backend="triton")  # the argument wins over the environment
    monkeypatch.setenv("MEMENTO_KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="MEMENTO_KERNELS_BACKEND"):
        use_triton(cpu)
