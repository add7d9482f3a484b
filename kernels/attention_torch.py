"""PyTorch memento attention: the CPU path and the reference for the Triton kernel.

Key j is visible to query i iff `j <= i < evict_at[j]` (DESIGN.md section 1). Everything goes
through `scaled_dot_product_attention` with a *float* additive mask: transformers' eager attention
is silently wrong with a bool 4D mask, and FlexAttention has no backward on CPU.

Shapes: B rows, Hq query heads, Hkv key/value heads (Hq a multiple of Hkv), T tokens, D head dim.
Several sequences may be packed in one row; evict_at is then capped at each key's sequence end, so
no segment ids are needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def visible(evict_at: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Visibility of keys `k_pos` to queries `q_pos`.

    Args:
        evict_at: [B, K] int, evict_at of the keys `k_pos`.
        q_pos: [Q] query positions; k_pos: [K] key positions.

    Returns:
        [B, Q, K] bool, True where the query sees the key.
    """
    causal = k_pos[None, None, :] <= q_pos[None, :, None]
    return causal & (q_pos[None, :, None] < evict_at[:, None, :])


def float_mask(evict_at: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, Q, K] additive mask (0 visible, -inf hidden); arguments as in `visible`."""
    hidden = ~visible(evict_at, q_pos, k_pos)[:, None]
    return torch.zeros_like(hidden, dtype=dtype).masked_fill_(hidden, float("-inf"))


def dense_float_mask(evict_at: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive mask for evict_at [B, T]."""
    pos = torch.arange(evict_at.shape[1], device=evict_at.device)
    return float_mask(evict_at, pos, pos, dtype)


def attention_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, evict_at: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """Memento attention through one dense [T, T] float mask: small sizes and tests.

    Args:
        q: [B, Hq, T, D]; k, v: [B, Hkv, T, D]; evict_at: [B, T] int (row-local positions).
        scale: softmax scale (usually D**-0.5).

    Returns:
        [B, Hq, T, D] in q's dtype.
    """
    mask = dense_float_mask(evict_at, q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _query_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, evict_at: torch.Tensor,
                 q0: int, scale: float) -> torch.Tensor:
    """Attention of the queries q [1, Hq, C, D] at positions q0.. over the keys they can see."""
    q1 = q0 + q.shape[2]
    # Keys before q1 that are still alive at q0: a superset of what any query of the chunk sees,
    # and about the visible fraction of the causal keys under a memento layout.
    keys = torch.nonzero(evict_at[0, :q1] > q0).squeeze(1)
    q_pos = torch.arange(q0, q1, device=q.device)
    mask = float_mask(evict_at[:, keys], q_pos, keys, q.dtype)
    return F.scaled_dot_product_attention(q, k[:, :, keys], v[:, :, keys], attn_mask=mask,
                                          scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, evict_at: torch.Tensor,
                      scale: float, chunk_size: int = 1024) -> torch.Tensor:
    """Memory-bounded memento attention: query chunks of `chunk_size`, each over its live keys.

    Memory per chunk is chunk_size x (live keys); with autograd each chunk is checkpointed, so the
    backward keeps only q, k, v and recomputes one chunk at a time. Same Args/Returns as
    `attention_dense`.
    """
    rows = []
    for b in range(q.shape[0]):
        chunks = []
        for q0 in range(0, q.shape[2], chunk_size):
            args = (q[b:b + 1, :, q0:q0 + chunk_size], k[b:b + 1], v[b:b + 1], evict_at[b:b + 1], q0, scale)
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                chunks.append(checkpoint(_query_chunk, *args, use_reentrant=False))
            else:
                chunks.append(_query_chunk(*args))
        rows.append(torch.cat(chunks, dim=2))
    return torch.cat(rows, dim=0)


def independent_segments(evict_at: torch.Tensor) -> list[tuple[int, int]]:
    """Split points of a row into spans no query outside can see into: [(start, end), ...].

    A span ends at k when no key before k is visible at or after k (cummax(evict_at)[k-1] <= k):
    the packed sequences of a micro-batch, found from evict_at alone.

    Args:
        evict_at: [T] int, one row.
    """
    T = evict_at.shape[0]
    reach = torch.cummax(evict_at, dim=0).values  # [T] furthest query any key up to k reaches
    ends = torch.nonzero(reach <= torch.arange(1, T + 1, device=evict_at.device)).squeeze(1) + 1
    bounds = [0, *ends.tolist()]
    if bounds[-1] != T:
        bounds.append(T)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, evict_at: torch.Tensor,
                    scale: float, chunk_size: int = 1024) -> torch.Tensor:
    """Each packed sequence on its own, so packing costs no cross-sequence work: sequences up to
    `chunk_size` tokens go through one batched dense-mask call (padded to the longest), longer ones
    through the chunked path. See `attention_dense` for Args/Returns."""
    if q.shape[2] <= chunk_size:
        return attention_dense(q, k, v, evict_at, scale)
    spans = [(b, start, end) for b in range(q.shape[0])
             for start, end in independent_segments(evict_at[b])]
    out = torch.empty_like(q)
    short = [s for s in spans if s[2] - s[1] <= chunk_size]
    if short:
        for (b, start, end), o in zip(short, _attention_batched(q, k, v, evict_at, short, scale)):
            out[b, :, start:end] = o
    for b, start, end in spans:
        if end - start > chunk_size:
            out[b:b + 1, :, start:end] = attention_chunked(
                q[b:b + 1, :, start:end], k[b:b + 1, :, start:end], v[b:b + 1, :, start:end],
                evict_at[b:b + 1, start:end] - start, scale, chunk_size)
    return out


def _attention_batched(q, k, v, evict_at, spans, scale) -> list[torch.Tensor]:
    """Dense-mask attention of several spans at once, padded to the longest span.

    A padding key j gets evict_at = L_max: real queries (i < j) never see it, and each padding
    query sees at least itself, so no softmax row is empty. Returns per span [Hq, L, D].
    """
    longest = max(end - start for _, start, end in spans)

    def stack(t):
        return torch.stack([F.pad(t[b, :, start:end], (0, 0, 0, longest - (end - start)))
                            for b, start, end in spans])

    ev = torch.full((len(spans), longest), longest, dtype=evict_at.dtype, device=evict_at.device)
    for i, (b, start, end) in enumerate(spans):
        ev[i, :end - start] = evict_at[b, start:end] - start
    out = attention_dense(stack(q), stack(k), stack(v), ev, scale)
    return [out[i, :, :end - start] for i, (_, start, end) in enumerate(spans)]
