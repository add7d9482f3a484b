"""One switch between the Triton kernels and the PyTorch paths.

`backend="auto"` (the default) picks Triton for CUDA tensors and PyTorch elsewhere. The
environment variable MEMENTO_KERNELS_BACKEND (auto | triton | torch) changes the default; an
explicit `backend=` argument wins over both. Triton on CPU tensors only works under
TRITON_INTERPRET=1 (set before triton is imported); the Triton modules are imported lazily here,
so `import kernels` never imports triton.
"""

from __future__ import annotations

import os

import torch

from kernels.attention_torch import attention_torch
from kernels.logprob_torch import linear_logprob_entropy_torch

BACKENDS = ("auto", "triton", "torch")


def use_triton(device: torch.device, backend: str | None = None) -> bool:
    """Whether the Triton path runs for tensors on `device` under `backend` (None: the env default)."""
    backend = backend or os.environ.get("MEMENTO_KERNELS_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"[MEMENTO_KERNELS_BACKEND / backend] must be one of {BACKENDS}, got {backend!r}")
    return backend == "triton" or (backend == "auto" and device.type == "cuda")


def memento_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, evict_at: torch.Tensor,
                      scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Attention where key j is visible to query i iff j <= i < evict_at[j].

    Args:
        q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] with Hq a multiple of Hkv (GQA), RoPE already
            applied with the original positions.
        evict_at: [B, T] int, row-local positions; sequences packed in a row are separated by
            evict_at alone (capped at each key's sequence end).
        scale: softmax scale, default D**-0.5.
        backend: "auto" | "triton" | "torch"; None reads MEMENTO_KERNELS_BACKEND.

    Returns:
        [B, Hq, T, D] in q's dtype; differentiable w.r.t. q, k, v.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_triton(q.device, backend):
        from kernels.attention_triton import attention_triton
        return attention_triton(q, k, v, evict_at, scale)
    return attention_torch(q, k, v, evict_at, scale)


def linear_logprob_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           temperature: float = 1.0, backend: str | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token and the entropy, from hidden states and the lm_head weight.

    Computes log_softmax(hidden @ weight.T / temperature) at the targets without materialising
    the N x V logits (forward or backward).

    Args:
        hidden: [N, H]; weight: [V, H]; targets: [N] long in [0, V) or IGNORE_INDEX (-100).
        temperature: the sampler's temperature.
        backend: "auto" | "triton" | "torch"; None reads MEMENTO_KERNELS_BACKEND.

    Returns:
        (logprobs [N] fp32, entropy [N] fp32), both 0 where targets == IGNORE_INDEX;
        differentiable w.r.t. hidden and weight.
    """
    if use_triton(hidden.device, backend):
        from kernels.logprob_triton import linear_logprob_entropy_triton
        return linear_logprob_entropy_triton(hidden, weight, targets, temperature)
    return linear_logprob_entropy_torch(hidden, weight, targets, temperature)
