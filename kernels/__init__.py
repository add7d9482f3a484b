"""Kernels for training under the memento layout: attention where key j is visible to query i
iff j <= i < evict_at[j], and fused hidden-states -> log-prob / entropy, each in Triton (CUDA)
with a PyTorch path (CPU, and the reference). Imports none of the other project packages.

    import kernels
    kernels.enable_memento_attention(model)
    logprobs, entropy = kernels.compute_logprobs(model, input_ids, position_ids, evict_at, targets)

Backend: Triton on CUDA tensors, PyTorch elsewhere; override with `backend=` or the
MEMENTO_KERNELS_BACKEND environment variable (auto | triton | torch). Tests: `pytest tests/kernels`
(Triton runs in the interpreter there). Benchmarks: `python scripts/bench_kernels.py`. On a GPU,
`python -m kernels.gpu_check` checks and times the compiled kernels (docs/gpu_check.md).
"""

from kernels.dispatch import linear_logprob_entropy, memento_attention, use_triton
from kernels.hf_integration import (
    ATTN_IMPLEMENTATION,
    compute_logprobs,
    enable_memento_attention,
    next_token_targets,
    register_memento_attention,
)
from kernels.logprob_torch import IGNORE_INDEX

__all__ = [
    "ATTN_IMPLEMENTATION",
    "IGNORE_INDEX",
    "compute_logprobs",
    "enable_memento_attention",
    "linear_logprob_entropy",
    "memento_attention",
    "next_token_targets",
    "register_memento_attention",
    "use_triton",
]
