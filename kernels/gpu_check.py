"""One command that checks the Triton kernels on a GPU: numbers against the PyTorch references,
then speed (kernels/kernel_timing.py). Needs only torch and triton; see docs/gpu_check.md.

    python -m kernels.gpu_check                         # sized for 8 minutes on one H100/H200
    python -m kernels.gpu_check --quick                 # smaller timing shapes
    python -m kernels.gpu_check --skip-timing           # correctness only
    python -m kernels.gpu_check --device cpu            # tiny shapes, Triton interpreted (minutes)
    python -m kernels.gpu_check --device cpu --quick    # a smoke subset of those (seconds)

Correctness runs the kernels compiled (on CPU: under TRITON_INTERPRET=1, fp32/fp16 only, because
bf16 into tl.dot is wrong in the interpreter) on awkward shapes: vocabularies that are not a
multiple of the tile, GQA ratios 1/2/4/8, packed sequences of ragged lengths, evicting and
non-evicting layouts, in bf16 and fp16. Forward and backward are compared with the fp32 PyTorch
references run on the same (upcast) inputs; the attention backward must also repeat bit for bit.
Each case prints

    RESULT check_<kernel>_<case>_<dtype> <worst error / tolerance> of_tol PASS|FAIL <errors...>

The exit status is 1 when any case fails or raises, 2 on a bad set-up, 3 when the numbers match
but a timing section raised, else 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from kernels.attention_torch import attention_dense
from kernels.logprob_torch import IGNORE_INDEX, logprob_entropy_reference
from kernels.synthetic_layouts import packed_layout

# Tolerance on max |got - want| / max |want| per tensor. The references see the same low-precision
# inputs upcast to fp32, so the error is the kernel's own rounding (bf16/fp16 probabilities and
# logit gradients fed to tl.dot), not input quantisation.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass(frozen=True)
class LogprobCase:
    name: str
    n: int  # tokens
    h: int  # hidden size
    v: int  # vocabulary
    temperature: float = 1.0
    tiles: dict = field(default_factory=dict, hash=False)  # kernel tile sizes; {} = the defaults


@dataclass(frozen=True)
class AttentionCase:
    name: str
    rows: int
    hq: int
    hkv: int
    seq_lens: tuple[int, ...]  # packed back to back in every row
    d: int  # head dim
    block_len: tuple[int, int] | None  # memento block lengths drawn from this range; None: no eviction
    tiles: dict = field(default_factory=dict, hash=False)


# GPU: the kernels' default tiles (what training runs), sizes that span many 64/128 tiles.
GPU_LOGPROB = [
    LogprobCase("V32003_N77", 77, 128, 32003),  # 8 vocab splits to merge, ragged token tile
    LogprobCase("V151936_N300_T0.7", 300, 256, 151936, temperature=0.7),  # Qwen3 vocabulary
    LogprobCase("V1000_N1029_H4096", 1029, 4096, 1000),  # long hidden loop, one split
]
GPU_ATTENTION = [
    AttentionCase("gqa1_packed", 1, 4, 4, (200, 77, 413), 128, (3, 40)),
    AttentionCase("gqa2_long_blocks", 2, 8, 4, (1000,), 128, (60, 200)),  # skipped and full tiles
    AttentionCase("gqa4_d64", 1, 8, 2, (333, 555), 64, (3, 60)),
    AttentionCase("gqa8_packed", 1, 16, 2, (1500, 549), 128, (100, 400)),
    AttentionCase("gqa4_causal", 2, 8, 2, (130, 61), 128, None),
]
# CPU (interpreter): tiny sizes, 16-wide tiles so a few dozen tokens still span several tiles.
SMALL = dict(block_m=16, block_n=128, block_k=16)
CPU_LOGPROB = [
    LogprobCase("V1000_N37", 37, 48, 1000, tiles=dict(SMALL, split=256, dlogits_budget=37 * 384)),
    LogprobCase("V4099_N20_T0.6", 20, 32, 4099, temperature=0.6, tiles=dict(SMALL, split=1024)),
]
ATTN16 = dict(block_m=16, block_n=16)
CPU_ATTENTION = [
    AttentionCase("gqa1_packed", 1, 2, 2, (13, 30, 27), 16, (3, 14), ATTN16),
    AttentionCase("gqa2_long_blocks", 1, 4, 2, (150,), 16, (30, 45), ATTN16),
    AttentionCase("gqa4_d24", 1, 4, 1, (21, 40), 24, (3, 14), ATTN16),
    AttentionCase("gqa8_packed", 1, 8, 1, (21, 12), 16, (3, 9), ATTN16),
    AttentionCase("gqa2_causal", 2, 2, 1, (33,), 16, None, ATTN16),
]
CPU_QUICK = {"V1000_N37", "gqa8_packed"}  # the smoke subset of `--device cpu --quick`


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| in fp32; inf when got is not finite."""
    got, want = got.detach().float(), want.detach().float()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


def check_logprob(case: LogprobCase, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Errors of the fused Triton log-prob / entropy and their gradients, against full logits."""
    from kernels.logprob_triton import linear_logprob_entropy_triton

    gen = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(case.n, case.h, generator=gen, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(case.v, case.h, generator=gen, device=device) / case.h ** 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, case.v, (case.n,), generator=gen, device=device)
    targets[::7] = IGNORE_INDEX
    targets[1] = case.v - 1  # the last real column sits in a ragged tile
    mix = torch.randn(2, case.n, generator=gen, device=device)  # a random mix of both outputs

    got = linear_logprob_entropy_triton(hidden, weight, targets, case.temperature, **case.tiles)
    ref_inputs = [x.detach().float().requires_grad_() for x in (hidden, weight)]
    want = logprob_entropy_reference(*ref_inputs, targets, case.temperature)
    grads_got = torch.autograd.grad(got[0] @ mix[0] + got[1] @ mix[1], (hidden, weight))
    grads_want = torch.autograd.grad(want[0] @ mix[0] + want[1] @ mix[1], ref_inputs)
    names = ("logprobs", "entropy", "d_hidden", "d_weight")
    return {n: relative_error(g, w) for n, g, w in zip(names, (*got, *grads_got), (*want, *grads_want))}


def check_attention(case: AttentionCase, dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """Errors of Triton memento attention and its q/k/v gradients against the dense-mask reference;
    `rerun` is the largest difference between two backward passes (deterministic: 0)."""
    from kernels.attention_triton import attention_triton

    gen = torch.Generator(device).manual_seed(0)
    T = sum(case.seq_lens)
    q, k, v = (torch.randn(case.rows, h, T, case.d, generator=gen, device=device).to(dtype).requires_grad_()
               for h in (case.hq, case.hkv, case.hkv))
    grad_out = torch.randn(case.rows, case.hq, T, case.d, generator=gen, device=device).to(dtype)
    evict_at = torch.stack([packed_layout(list(case.seq_lens), case.block_len is not None, seed=row,
                                          block_len=case.block_len or (3, 14))
                            for row in range(case.rows)]).to(device)
    scale = case.d ** -0.5

    got = attention_triton(q, k, v, evict_at, scale, **case.tiles)
    grads_got = torch.autograd.grad(got, (q, k, v), grad_out)
    rerun = torch.autograd.grad(attention_triton(q, k, v, evict_at, scale, **case.tiles), (q, k, v), grad_out)
    ref_inputs = [x.detach().float().requires_grad_() for x in (q, k, v)]
    want = attention_dense(*ref_inputs, evict_at, scale)
    grads_want = torch.autograd.grad(want, ref_inputs, grad_out.float())
    errors = {n: relative_error(g, w) for n, g, w in zip(("out", "dq", "dk", "dv"), (got, *grads_got),
                                                          (want, *grads_want))}
    errors["rerun"] = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads_got, rerun))
    return errors


def report(name: str, errors: dict[str, float], tol: float) -> bool:
    """Print the case's RESULT line; True when every error is within tolerance (rerun: exactly 0)."""
    limits = {key: 0.0 if key == "rerun" else tol for key in errors}
    bad = [key for key, err in errors.items() if not err <= limits[key]]  # NaN fails too
    worst = max(err / tol for err in errors.values())
    detail = " ".join(f"{key}={err:.2e}" for key, err in errors.items())
    print(f"RESULT check_{name} {worst:.3g} of_tol {'FAIL(' + ','.join(bad) + ')' if bad else 'PASS'} "
          f"tol={tol:g} {detail}", flush=True)
    return not bad


def run_checks(device: torch.device, quick: bool = False, only: str | None = None) -> bool:
    """The correctness cases on `device` (on CPU with `quick`, the smoke subset); True when all
    pass. A case that raises fails."""
    cuda = device.type == "cuda"
    dtypes = (torch.bfloat16, torch.float16) if cuda else (torch.float32, torch.float16)
    kernels = {"logprob": (check_logprob, GPU_LOGPROB if cuda else CPU_LOGPROB),
               "attention": (check_attention, GPU_ATTENTION if cuda else CPU_ATTENTION)}
    all_ok = True
    for kernel, (check, cases) in kernels.items():
        if only not in (None, kernel):
            continue
        for case in cases:
            if quick and not cuda and case.name not in CPU_QUICK:
                continue
            for dtype in dtypes:
                name = f"{kernel}_{case.name}_{str(dtype)[6:]}"
                try:
                    errors = check(case, dtype, device)
                except Exception as exc:  # a compile or launch error is a failed case, not a crash
                    print(f"RESULT check_{name} nan of_tol FAIL(raised) {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}", flush=True)
                    all_ok = False
                    continue
                all_ok &= report(name, errors, TOLERANCE[dtype])
    return all_ok


def _prepare(device: torch.device) -> str | None:
    """Set up Triton's mode for `device` before triton is imported; an error message or None."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available; run with --device cpu for the interpreter smoke run"
        if interpret:
            return "TRITON_INTERPRET is set: unset it, the check must run the compiled kernels"
        return None
    if "triton" in sys.modules and not interpret:
        return "triton was imported before TRITON_INTERPRET=1 could be set; set it in the environment"
    os.environ["TRITON_INTERPRET"] = "1"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true",
                        help="smaller timing shapes; on CPU also only a smoke subset of the cases")
    parser.add_argument("--skip-timing", action="store_true", help="correctness only")
    parser.add_argument("--only", choices=("logprob", "attention"), help="check one kernel only")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="timing sections that would start after this many seconds are skipped")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    problem = _prepare(device)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 references must be fp32 (the default)
    start = time.monotonic()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    print(f"gpu_check on {name}: torch {torch.__version__}", flush=True)
    ok = run_checks(device, args.quick, args.only)
    print(f"correctness: {'all cases pass' if ok else 'MISMATCH'} ({time.monotonic() - start:.0f}s)", flush=True)
    timing_ok = True
    if not args.skip_timing:
        from kernels.kernel_timing import Row, run_timing
        for row in run_timing(device, args.quick, deadline=start + args.budget_s):
            print(row, flush=True)
            timing_ok &= not (isinstance(row, Row) and row.unit == "error")
        print(f"timing done ({time.monotonic() - start:.0f}s)", flush=True)
    return 1 if not ok else 0 if timing_ok else 3


if __name__ == "__main__":
    sys.exit(main())
