"""Weight buckets: how the actor's parameters are cut into pieces and laid out on the wire.

Both sides of a weight sync import this module (it needs only torch and numpy): the trainer
plans the buckets and packs each one, the rollout engine unpacks them. A bucket is a run of
consecutive parameters, in `named_parameters()` order, whose bytes fit `bucket_bytes`; a tensor
larger than the budget travels alone. Packed, a bucket is one flat byte buffer holding each
tensor's bytes back to back (each aligned to 16 bytes), plus the per-tensor `names`, `dtype_names` and `shapes` (the same
fields vLLM's NCCL and IPC weight-transfer engines carry), so bfloat16 survives the trip even
though numpy has no such dtype.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

ALIGN = 16  # bytes: the largest element size (complex128), so any dtype views its slice


@dataclass(frozen=True)
class ParamMeta:
    """Name, dtype and full (gathered) shape of one parameter; the attributes vLLM's
    `weight_transfer.base.ParamMeta` has, so vLLM's trainer engines can read it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def plan_buckets(params: list[ParamMeta], bucket_bytes: int) -> list[list[int]]:
    """Indices of `params` per bucket, in order: each bucket is filled until the next tensor
    would overflow `bucket_bytes`; a tensor bigger than the budget gets a bucket of its own.

    Args:
        params: the parameters in the order they are sent (P entries).
        bucket_bytes: the budget of one bucket, > 0.

    Returns:
        buckets whose concatenation is 0..P-1.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[int]] = []
    filled = 0
    for index, meta in enumerate(params):
        if not buckets or filled + meta.num_bytes > bucket_bytes:
            buckets.append([])
            filled = 0
        buckets[-1].append(index)
        filled += meta.num_bytes
    return buckets


def layout(sizes: list[int]) -> tuple[list[int], int]:
    """Byte offsets of tensors of `sizes` bytes in a packed bucket, and its total size: each
    offset rounded up to ALIGN, so every dtype can view its slice in place."""
    offsets, end = [], 0
    for size in sizes:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + size
    return offsets, end


def pack_bucket(named_tensors: list[tuple[str, torch.Tensor]]) -> tuple[dict, bytearray]:
    """One bucket as (update_info, buffer): metadata lists and the tensors' bytes, on the host.

    The buffer is fresh memory (the only copy made here), so the caller may release the source
    tensors (e.g. a ZeRO-3 gather) as soon as this returns. It is a bytearray because vLLM's
    RPC carries bytes as they are (numpy arrays it turns into lists).
    """
    sizes = [t.numel() * t.element_size() for _, t in named_tensors]
    offsets, total = layout(sizes)
    buffer = bytearray(total)
    flat = np.frombuffer(buffer, dtype=np.uint8)
    for (_, tensor), offset, size in zip(named_tensors, offsets, sizes):
        flat[offset:offset + size] = tensor.detach().cpu().contiguous().view(-1).view(
            torch.uint8).numpy()
    info = {"names": [n for n, _ in named_tensors],
            "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in named_tensors],
            "shapes": [list(t.shape) for _, t in named_tensors]}
    return info, buffer


def unpack_bucket(info: dict, buffer) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a packed bucket: views of `buffer` (bytes or bytearray), no copy.

    Over vLLM's RPC the buffer arrives as read-only bytes: the views are only read from (the
    model's weight loaders copy them into the parameters).
    """
    metas = [ParamMeta(n, getattr(torch, d), tuple(s))
             for n, d, s in zip(info["names"], info["dtype_names"], info["shapes"], strict=True)]
    offsets, total = layout([m.num_bytes for m in metas])
    array = np.frombuffer(buffer, dtype=np.uint8)
    if total != array.size:
        raise ValueError(f"bucket of {array.size} bytes, but its metadata describes {total}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        flat = torch.from_numpy(array)
    return [(m.name, flat[offset:offset + m.num_bytes].view(m.dtype).view(m.shape))
            for m, offset in zip(metas, offsets)]
