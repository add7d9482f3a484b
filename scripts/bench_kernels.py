"""Benchmarks for kernels/: memory and time against the naive paths, measured side by side.

CPU (runs anywhere, a few minutes on 2 cores):
  - log-prob + entropy head at V=151936, H=1024, T=4096: `linear_logprob_entropy` (chunked,
    never T x V) against full logits + log_softmax; forward under no_grad (reference / old-policy
    workers) and forward+backward (actor). Goal: <= 1/8 of the naive peak memory, no slower.
  - attention at T=8192 under a typical memento layout (prompt 512, blocks of 1150 tokens with
    194-token mementos): the chunked PyTorch path against SDPA with a dense [T, T] float mask.
    Goal: memory and time following the visible fraction of causal pairs.
  Each case runs in a fresh process; peak memory is the process's peak RSS above its RSS once the
  inputs exist. Ratios are ours / naive.
GPU (only when CUDA is available): `python -m kernels.gpu_check` (docs/gpu_check.md), the
Triton kernels compiled against the PyTorch references, then their TFLOP/s against full logits,
dense causal SDPA and the chip's bf16 peak. H100 targets: log-prob forward >= 650 TFLOP/s,
memento attention forward >= 350 TFLOP/s on visible pairs.

    python scripts/bench_kernels.py            # CPU part, plus the GPU part if CUDA is present
    python scripts/bench_kernels.py --quick    # smaller shapes, for a smoke run
    python scripts/bench_kernels.py --skip-cpu # the GPU check only
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import psutil
import torch

from kernels import gpu_check
from kernels.attention_torch import attention_dense, attention_torch
from kernels.logprob_torch import linear_logprob_entropy_torch, logprob_entropy_reference
from kernels.synthetic_layouts import memento_evict_at, visible_fraction


def _logprob_case(kind: str, grad: bool, T: int, H: int, V: int):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(T, H, generator=gen).requires_grad_(grad)
    weight = (torch.randn(V, H, generator=gen) / H ** 0.5).requires_grad_(grad)
    targets = torch.randint(0, V, (T,), generator=gen)
    fn = linear_logprob_entropy_torch if kind == "chunked" else logprob_entropy_reference

    def run():
        with torch.set_grad_enabled(grad):
            logprobs, entropy = fn(hidden, weight, targets)
            if grad:
                (logprobs.sum() + entropy.sum()).backward()
    return run


def _attention_case(kind: str, grad: bool, T: int, hq: int, hkv: int, d: int):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, T, d, generator=gen).requires_grad_(grad) for h in (hq, hkv, hkv))
    evict_at = memento_evict_at(T)[None]
    fn = attention_torch if kind == "chunked" else attention_dense

    def run():
        with torch.set_grad_enabled(grad):
            out = fn(q, k, v, evict_at, d ** -0.5)
            if grad:
                out.sum().backward()
    return run


def _measure(make, args, warmup_args, queue):
    """Child process: warm up on tiny inputs (first-call costs such as lazy imports), build the
    inputs, then report (seconds, peak bytes above the inputs)."""
    make(*warmup_args)()
    run = make(*args)
    base = psutil.Process().memory_info().rss
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    queue.put((seconds, max(peak - base, 0)))


def measure(make, args: tuple, warmup_args: tuple) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(make, args, warmup_args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def compare(title: str, make, naive_args: tuple, ours_args: tuple, shape: tuple, warmup_shape: tuple) -> None:
    t_naive, m_naive = measure(make, naive_args + shape, naive_args + warmup_shape)
    t_ours, m_ours = measure(make, ours_args + shape, ours_args + warmup_shape)
    print(f"{title:<22} time {t_ours:7.2f}s vs {t_naive:7.2f}s (ratio {t_ours / t_naive:5.2f})   "
          f"peak {m_ours / 2**20:7.0f} MiB vs {m_naive / 2**20:7.0f} MiB (ratio {m_ours / max(m_naive, 1):5.3f})")
    name = "_".join(title.replace("(", "").replace(")", "").replace("+", "_").split())
    print(f"RESULT {name}_time {t_ours / t_naive:.3f} ratio ours/naive {shape}")
    print(f"RESULT {name}_peak_memory {m_ours / max(m_naive, 1):.3f} ratio ours/naive {shape}")


def cpu_benchmarks(quick: bool) -> None:
    shape = (1024, 256, 32000) if quick else (4096, 1024, 151936)
    print("log-prob + entropy head, T={} H={} V={} fp32: chunked vs full logits".format(*shape))
    for grad in (False, True):
        label = "forward+backward" if grad else "forward (no_grad)"
        compare(f"  {label}", _logprob_case, ("naive", grad), ("chunked", grad), shape, (8, 16, 64))

    shape = (2048, 4, 2, 64) if quick else (8192, 8, 2, 128)
    fraction = visible_fraction(memento_evict_at(shape[0]))
    print("attention, T={} Hq={} Hkv={} D={} fp32, memento layout with {:.3f} of causal pairs visible: "
          "chunked vs dense-mask SDPA".format(*shape, fraction))
    for grad in (False, True):
        label = "forward+backward" if grad else "forward (no_grad)"
        compare(f"  {label}", _attention_case, ("dense", grad), ("chunked", grad), shape, (2048, 2, 1, 16))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes for a smoke run")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU part only")
    args = parser.parse_args()
    if not args.skip_cpu:
        cpu_benchmarks(args.quick)
    if not torch.cuda.is_available():
        print("GPU part skipped: CUDA is not available")
        return 0
    return gpu_check.main(["--quick"] if args.quick else [])


if __name__ == "__main__":
    sys.exit(main())
