"""Speed of the Triton kernels against the paths one would run without them, measured side by side.

The timing half of `python -m kernels.gpu_check` (and of scripts/bench_kernels.py's GPU part):

- log-prob + entropy head at T=16384, H=4096, V=151936 (Qwen3's vocabulary): the fused Triton
  kernel against full logits + log_softmax, forward (no_grad) and forward+backward, as TFLOP/s
  and as a fraction of the chip's dense bf16 peak. FLOPs counted are the ones the math needs:
  2THV forward (the logits), 6THV forward+backward (logits, dX, dW); the Triton backward's logit
  recompute is not counted, so both paths are scored on the same work.
- memento attention (Qwen3-8B heads: Hq=32, Hkv=8, D=128) at 8K, 16K and 32K context under the
  paper's typical layout (blocks of 1150 tokens, mementos of 194): TFLOP/s on the visible
  (query, key) pairs against dense causal SDPA (FlashAttention) on all causal pairs, and the
  time ratio. FLOPs: 4 D Hq per pair forward, 2.5x that for the backward.

Every measurement is yielded as a `Row` as soon as it exists, so a long run streams; a section
that raises yields one row of unit `error` and the next section runs. Sizes are
chosen so peak memory stays under 80 GB (probed, see `fit_tokens`); on CPU (the interpreter
smoke run) shapes are tiny and the numbers mean nothing. Imports torch and, on CUDA, triton.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from kernels.logprob_torch import logprob_entropy_reference
from kernels.synthetic_layouts import memento_evict_at, visible_fraction, visible_pairs

GiB = 2**30
MEMORY_CAP = 80 * GiB  # the smallest H100/A100 we target; an H200 runs the same sizes
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from NVIDIA's data sheets. Matched in order
# against the upper-cased device name, so the PCIe / NVL variants come before the plain names.
BF16_PEAK_TFLOPS = (("H100 PCIE", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
                    ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


@dataclass(frozen=True)
class Row:
    """One `RESULT <name> <value> <unit> <note>` line (the format scripts/bench_all.py reads)."""
    name: str
    value: float
    unit: str
    note: str = ""

    def __str__(self) -> str:
        return f"RESULT {self.name} {self.value:.4g} {self.unit} {self.note}".rstrip()


@dataclass(frozen=True)
class TimingShapes:
    logprob: tuple[int, int, int]  # T, H, V
    attention_lengths: tuple[int, ...]
    heads: tuple[int, int, int]  # Hq, Hkv, D
    layout: tuple[int, int, int] = (512, 1150, 194)  # prompt, block, memento lengths


def timing_shapes(device: torch.device, quick: bool) -> TimingShapes:
    if device.type != "cuda":  # interpreter smoke run: exercises the code, measures nothing
        return TimingShapes((32, 16, 300), (48,), (2, 1, 16), layout=(4, 12, 4))
    if quick:
        return TimingShapes((4096, 1024, 32000), (8192,), (32, 8, 128))
    return TimingShapes((16384, 4096, 151936), (8192, 16384, 32768), (32, 8, 128))


def spec_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a known chip (H100 / H200 / A100 variants), else None."""
    name = device_name.upper()
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def seconds_per_call(fn: Callable[[], object], device: torch.device) -> float:
    """Median seconds of one call: triton's do_bench on CUDA (L2 flushed between calls); elsewhere
    (the interpreter smoke run) one call after a warm-up."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_bytes(make: Callable[[], Callable[[], object]], device: torch.device) -> int:
    """Peak CUDA memory of building a case (`make()`, which allocates its inputs) and running it
    once, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    make()()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def fit_tokens(peak_at: Callable[[int], int], want: int, budget: int, probe: int) -> int:
    """Largest T <= want, a multiple of `probe`, whose predicted peak memory fits `budget` bytes.

    Peak memory is affine in T for these cases (inputs and logits grow with T, the weight does
    not): it is measured at `probe` and 2 x `probe` tokens and extrapolated. Returns 0 when even
    `probe` tokens do not fit.
    """
    first, second = peak_at(probe), peak_at(2 * probe)
    per_token = max(second - first, 0) / probe
    fixed = first - per_token * probe
    if first > budget:
        return 0
    fits = want if per_token == 0 else int((budget - fixed) / per_token)
    return max(min(want, fits) // probe * probe, probe)


def memory_budget(device: torch.device) -> int:
    """Bytes a timing case may use: 85% of min(80 GB, the device) minus what is already held."""
    total = torch.cuda.get_device_properties(device).total_memory
    return int(0.85 * min(MEMORY_CAP, total)) - torch.cuda.memory_allocated(device)


def _logprob_case(fn, T: int, H: int, weight: torch.Tensor, grad: bool):
    """make() for one log-prob measurement: inputs of T tokens, then fn forward (+ backward)."""
    def make():
        gen = torch.Generator(weight.device).manual_seed(T)
        hidden = torch.randn(T, H, generator=gen, device=weight.device).to(weight.dtype).requires_grad_(grad)
        targets = torch.randint(0, weight.shape[0], (T,), generator=gen, device=weight.device)

        def run():
            with torch.set_grad_enabled(grad):
                logprobs, entropy = fn(hidden, weight, targets)
                if grad:
                    torch.autograd.grad(logprobs.sum() + entropy.sum(), (hidden, weight))
        return run
    return make


def _fitted_tokens(make_at: Callable[[int], Callable], want: int, device: torch.device) -> int:
    if device.type != "cuda":
        return want
    probe = min(1024, want)
    return fit_tokens(lambda t: peak_bytes(make_at(t), device), want, memory_budget(device), probe)


def time_logprob(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int], peak: float
                 ) -> Iterator[Row | str]:
    """Fused Triton log-prob against full logits, forward and forward+backward."""
    from kernels.logprob_triton import linear_logprob_entropy_triton

    T, H, V = shape
    gen = torch.Generator(device).manual_seed(0)
    weight = (torch.randn(V, H, generator=gen, device=device) / H ** 0.5).to(dtype).requires_grad_()
    paths = {"triton": linear_logprob_entropy_triton, "naive": logprob_entropy_reference}
    for grad, label, flops_per_token in ((False, "fwd", 2 * H * V), (True, "fwd_bwd", 6 * H * V)):
        tflops = {}
        for path, fn in paths.items():
            tokens = _fitted_tokens(lambda t: _logprob_case(fn, t, H, weight, grad), T, device)
            if tokens == 0:
                yield f"timing: {path} log-prob {label} does not fit in memory at any size, skipped"
                continue
            run = _logprob_case(fn, tokens, H, weight, grad)()
            tflops[path] = flops_per_token * tokens / seconds_per_call(run, device) / 1e12
            del run
            yield Row(f"logprob_{label}_{path}_tflops", tflops[path], "TFLOP/s",
                      f"{path} T={tokens} H={H} V={V} {str(dtype)[6:]}, {flops_per_token // (H * V)}THV counted, "
                      f"{tflops[path] / peak:.2f} of the {peak:.4g} TFLOP/s peak")
        if len(tflops) == 2:
            yield Row(f"logprob_{label}_speedup_vs_naive", tflops["triton"] / tflops["naive"], "x",
                      "Triton TFLOP/s / full-logits TFLOP/s, side by side")
        if "triton" in tflops:
            yield Row(f"logprob_{label}_peak_fraction", tflops["triton"] / peak, "ratio",
                      f"Triton TFLOP/s / the {peak:.4g} TFLOP/s peak")


def _attention_runs(q, k, v, evict_at, grad_out):
    """(memento forward, memento fwd+bwd, SDPA causal forward, SDPA causal fwd+bwd) closures."""
    from kernels.attention_triton import attention_triton

    scale = q.shape[-1] ** -0.5
    group = q.shape[1] // k.shape[1]
    k_all, v_all = (x.detach().repeat_interleave(group, 1).requires_grad_() for x in (k, v))

    def memento(grad):
        def run():
            with torch.set_grad_enabled(grad):
                out = attention_triton(q, k, v, evict_at, scale)
                if grad:
                    torch.autograd.grad(out, (q, k, v), grad_out)
        return run

    def sdpa(grad):
        def run():
            with torch.set_grad_enabled(grad), _flash_only(q.device):
                out = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True, scale=scale)
                if grad:
                    torch.autograd.grad(out, (q, k_all, v_all), grad_out)
        return run
    return memento(False), memento(True), sdpa(False), sdpa(True)


def _flash_only(device: torch.device):
    """FlashAttention for the dense baseline on CUDA: an error, not the T x T math fallback
    (128 GB at 32K), if it is unavailable."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION if device.type == "cuda" else SDPBackend.MATH)


def time_attention(device: torch.device, dtype: torch.dtype, T: int, shapes: TimingShapes) -> Iterator[Row]:
    """Memento attention (Triton) against dense causal SDPA at context T."""
    hq, hkv, d = shapes.heads
    evict_at = memento_evict_at(T, *shapes.layout)
    pairs, causal_pairs = visible_pairs(evict_at), T * (T + 1) // 2
    gen = torch.Generator(device).manual_seed(T)
    q, k, v = (torch.randn(1, h, T, d, generator=gen, device=device).to(dtype).requires_grad_()
               for h in (hq, hkv, hkv))
    grad_out = torch.randn(1, hq, T, d, generator=gen, device=device).to(dtype)
    runs = _attention_runs(q, k, v, evict_at[None].to(device), grad_out)
    fwd_flops = 4 * d * hq
    note = f"Hq={hq} Hkv={hkv} D={d} {str(dtype)[6:]}, {visible_fraction(evict_at):.3f} of causal pairs visible"
    for label, per_pair, memento_run, sdpa_run in (("fwd", fwd_flops, runs[0], runs[2]),
                                                   ("fwd_bwd", 3.5 * fwd_flops, runs[1], runs[3])):
        t_memento, t_sdpa = seconds_per_call(memento_run, device), seconds_per_call(sdpa_run, device)
        yield Row(f"attention_{label}_T{T}_memento_tflops", per_pair * pairs / t_memento / 1e12, "TFLOP/s",
                  f"Triton on visible pairs; {note}")
        yield Row(f"attention_{label}_T{T}_sdpa_tflops", per_pair * causal_pairs / t_sdpa / 1e12, "TFLOP/s",
                  f"dense causal SDPA on all causal pairs; {note}")
        yield Row(f"attention_{label}_T{T}_time_vs_sdpa", t_memento / t_sdpa, "ratio",
                  f"memento Triton time / dense causal SDPA time; {note}")


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured TFLOP/s of one square matmul (8192 on CUDA): the practical ceiling."""
    n = 8192 if device.type == "cuda" else 256
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n ** 3 / seconds_per_call(lambda: a @ b, device) / 1e12


def run_timing(device: torch.device, quick: bool, deadline: float) -> Iterator[Row | str]:
    """All timing rows; sections that would start after `deadline` (time.monotonic()) are skipped."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = timing_shapes(device, quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    measured = matmul_tflops(device, dtype)
    yield Row("matmul_tflops", measured, "TFLOP/s", f"torch matmul {str(dtype)[6:]} on {name}")
    peak, source = spec_peak_tflops(name), "data sheet, dense bf16"
    if peak is None:  # unknown chip (or CPU): fractions of peak are fractions of the measured matmul
        peak, source = measured, "no data-sheet entry: the measured matmul"
    yield Row("peak_tflops", peak, "TFLOP/s", f"{name} ({source})")
    sections = [("logprob", lambda: time_logprob(device, dtype, shapes.logprob, peak))]
    sections += [(f"attention_T{T}", lambda T=T: time_attention(device, dtype, T, shapes))
                 for T in shapes.attention_lengths]
    for section, rows in sections:
        if time.monotonic() > deadline:
            yield f"timing: time budget spent, {section} and later sections skipped"
            return
        try:
            yield from rows()
        except Exception as exc:  # e.g. no FlashAttention for the baseline: report, go on
            yield Row(f"timing_{section}_raised", float("nan"), "error",
                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
