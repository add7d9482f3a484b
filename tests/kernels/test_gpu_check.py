"""`python -m kernels.gpu_check`: its CPU smoke path (Triton interpreted), that it fails when a kernel
and its reference disagree, and the pieces of the timing half that run without a GPU."""

import os
import re
import subprocess
import sys

import pytest
import torch

from kernels import gpu_check
from kernels.attention_torch import visible
from kernels.kernel_timing import fit_tokens, spec_peak_tflops
from kernels.synthetic_layouts import memento_evict_at, packed_layout, visible_pairs

RESULT = re.compile(r"^RESULT (\S+) (\S+) (\S+) ?(.*)$")  # scripts/bench_all.py's format


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def _results(stdout: str) -> dict[str, tuple[float, str, str]]:
    rows = {}
    for line in stdout.splitlines():
        match = RESULT.match(line)
        if match:
            name, value, unit, note = match.groups()
            rows[name] = (float(value), unit, note)
    return rows


@pytest.mark.slow
def test_cpu_quick_run_passes_and_reports_every_measurement():
    proc = subprocess.run([sys.executable, "-m", "kernels.gpu_check", "--device", "cpu", "--quick"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _results(proc.stdout)
    checks = {name: note for name, (_, unit, note) in rows.items() if name.startswith("check_")}
    assert set(checks) == {f"check_{kernel}_{dtype}" for kernel in ("logprob_V1000_N37", "attention_gqa8_packed")
                           for dtype in ("float32", "float16")}
    assert all(note.startswith("PASS") for note in checks.values()), checks
    for name in ("matmul_tflops", "peak_tflops", "logprob_fwd_triton_tflops", "logprob_fwd_bwd_naive_tflops",
                 "logprob_fwd_bwd_speedup_vs_naive", "logprob_fwd_peak_fraction",
                 "attention_fwd_T48_memento_tflops", "attention_fwd_bwd_T48_time_vs_sdpa"):
        value = rows[name][0]
        assert value > 0 and value == value, name  # measured, positive, not NaN


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernels_match_the_references_on_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    proc = subprocess.run([sys.executable, "-m", "kernels.gpu_check", "--skip-timing"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]


PERTURBED_REFERENCES = r'''
import sys
import kernels.gpu_check as check
from kernels.attention_torch import attention_dense
from kernels.logprob_torch import logprob_entropy_reference

def shifted_logprobs(*args):
    logprobs, entropy = logprob_entropy_reference(*args)
    return logprobs + 0.1, entropy  # forward wrong, gradients unchanged

def wrong_dq(q, k, v, evict_at, scale):
    return attention_dense(q, k, v, evict_at, scale) + 0.5 * (q - q.detach())  # forward right, dq wrong

check.logprob_entropy_reference = shifted_logprobs
check.attention_dense = wrong_dq
sys.exit(check.main(["--device", "cpu", "--quick", "--skip-timing"]))
'''


@pytest.mark.slow
def test_check_exits_nonzero_and_names_what_disagrees():
    proc = _run(PERTURBED_REFERENCES)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    notes = {name: note for name, (_, _, note) in _results(proc.stdout).items()}
    assert len(notes) == 4
    for name, note in notes.items():
        expected = "FAIL(logprobs)" if name.startswith("check_logprob") else "FAIL(dq)"
        assert note.startswith(expected + " "), (name, note)
    assert "MISMATCH" in proc.stdout


def test_a_case_that_raises_fails_without_stopping_the_check(monkeypatch, capsys):
    def broken_reference(*args):
        raise RuntimeError("out of resources")

    monkeypatch.setattr(gpu_check, "logprob_entropy_reference", broken_reference)
    assert not gpu_check.run_checks(torch.device("cpu"), quick=True, only="logprob")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT")]
    assert len(lines) == 2  # both dtypes were tried
    assert all("FAIL(raised) RuntimeError: out of resources" in line for line in lines)


def test_a_timing_section_that_raises_is_reported_and_the_next_runs(monkeypatch, capsys):
    from kernels import kernel_timing

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(kernel_timing, "time_logprob", out_of_memory)
    monkeypatch.setattr(kernel_timing, "time_attention", out_of_memory)
    assert gpu_check.main(["--device", "cpu", "--quick", "--only", "logprob"]) == 3  # numbers matched
    rows = _results(capsys.readouterr().out)
    assert rows["timing_logprob_raised"][1:] == ("error", "OutOfMemoryError: CUDA out of memory")
    assert rows["timing_attention_T48_raised"][1] == "error"


def test_cuda_mode_refuses_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "TRITON_INTERPRET is set" in capsys.readouterr().err


def test_fit_tokens_keeps_the_predicted_peak_in_budget():
    def peak(tokens):  # 1 GB fixed (a weight), 5 MB per token (fp32 logits at V=151936 and more)
        return 2**30 + 5 * 2**20 * tokens

    fitted = fit_tokens(peak, want=16384, budget=60 * 2**30, probe=1024)
    assert fitted % 1024 == 0 and peak(fitted) <= 60 * 2**30 < peak(fitted + 1024)
    assert fit_tokens(peak, want=4096, budget=60 * 2**30, probe=1024) == 4096  # fits: unchanged
    assert fit_tokens(peak, want=16384, budget=2**30, probe=1024) == 0  # not even the probe fits


def test_peak_lookup_by_device_name():
    assert spec_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert spec_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert spec_peak_tflops("NVIDIA H200") == 989.0
    assert spec_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert spec_peak_tflops("NVIDIA H20") is None  # not an H200: falls back to the measured matmul
    assert spec_peak_tflops("NVIDIA GeForce RTX 4090") is None


@pytest.mark.parametrize("evict_at", [memento_evict_at(300, prompt=20, block=50, memento=9),
                                      packed_layout([40, 17, 61], seed=3)], ids=["memento", "packed"])
def test_visible_pairs_count_the_definition(evict_at):
    pos = torch.arange(len(evict_at))
    assert visible_pairs(evict_at) == int(visible(evict_at[None], pos, pos).sum())


def test_memento_layout_evicts_block_content_at_the_summary_end():
    evict_at = memento_evict_at(40, prompt=5, block=10, memento=4)
    # block 1 at 5..14 (content 6..13), memento 15..18: content evicted at 18; block 2 at 19..28
    assert evict_at[6:14].tolist() == [18] * 8 and evict_at[20:28].tolist() == [32] * 8
    assert evict_at[[5, 14, 15, 18, 33]].tolist() == [40] * 5  # delimiters, mementos, tail kept


NO_HEAVY_IMPORTS = r'''
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numpy", "psutil", "transformers", "vllm", "ray", "deepspeed"):
            raise ModuleNotFoundError(f"blocked {name}", name=name)

sys.meta_path.insert(0, Blocked())
import kernels.gpu_check, kernels.kernel_timing
from kernels.synthetic_layouts import memento_evict_at, visible_fraction
print(round(visible_fraction(memento_evict_at(8192)), 3))
'''


def test_check_needs_only_torch_and_triton():
    """The GPU box may have only torch and triton: no numpy, psutil, transformers, vLLM, Ray,
    DeepSpeed."""
    proc = _run(NO_HEAVY_IMPORTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "0.376"  # README's fraction for this layout at T=8192
