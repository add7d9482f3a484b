"""Triton memento attention, forward and backward (FlashAttention-2 structure).

Key j is visible to query i iff `j <= i < evict_at[j]`. Per KV tile we precompute the min and max
of evict_at; a (query tile, KV tile) pair is then
  - skipped when the tile is above the diagonal or every key is evicted before the first query,
  - full (no element mask) when every key precedes every query and outlives the last one,
  - partial otherwise (one int32 load of evict_at per KV tile builds the element mask),
so the work follows the visible pairs. The backward is deterministic: dK/dV and dQ are separate
kernels, each program owns its output tile (no atomics); GQA query heads of one KV head are summed
in a loop inside the dK/dV program. Accumulation is fp32; operands are the input dtype (fp16/bf16
on GPU; fp32/fp16 under TRITON_INTERPRET=1, where bf16 into tl.dot is wrong).

This module imports triton; `kernels.dispatch` imports it only when the Triton path is chosen.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)


@triton.jit
def _tile_kind(q0, q_last, k0, BLOCK_N: tl.constexpr, KMIN, KMAX, tile):
    """(live: any pair visible, partial: needs the element mask) for queries [q0, q_last] and
    the KV tile at k0. Not partial = full: every key precedes every query and outlives the last."""
    kmax = tl.load(KMAX + tile)
    kmin = tl.load(KMIN + tile)
    live = (k0 <= q_last) & (kmax > q0)
    partial = (k0 + BLOCK_N - 1 > q0) | (q_last >= kmin)
    return live, partial


@triton.jit
def _load_tile(PTR, b, h, sb, sh, st, offs_t, T, offs_d, HEAD_DIM: tl.constexpr):
    """[len(offs_t), BLOCK_D] rows offs_t of head h in row b of a [B, H, T, D] tensor; 0 outside."""
    mask = (offs_t < T)[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(PTR + b * sb + h * sh + offs_t[:, None] * st + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(PTR, value, b, h, sb, sh, st, offs_t, T, offs_d, HEAD_DIM: tl.constexpr):
    mask = (offs_t < T)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(PTR + b * sb + h * sh + offs_t[:, None] * st + offs_d[None, :], value.to(PTR.dtype.element_ty), mask=mask)


@triton.jit
def _visible(q_pos, k_pos, k_evict_at):
    """j <= i < evict_at[j], broadcasting query positions against key positions."""
    return (k_pos <= q_pos) & (q_pos < k_evict_at)


@triton.jit
def _query_tile(T, HQ, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """(row b, head h, first and last query, query offsets, head-dim offsets) of a query-tile program."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    q0 = pid_m * BLOCK_M
    return (pid_bh // HQ, pid_bh % HQ, q0, tl.minimum(q0 + BLOCK_M, T) - 1,
            q0 + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D))


@triton.jit
def _scores(q, K, V, EV, b, hk, skb, skh, skt, svb, svh, svt, offs_m, offs_n, offs_d, partial, T, qk_scale,
            HEAD_DIM: tl.constexpr):
    """(scores [BM, BN] in log2 units, -inf where hidden; the k and v tiles) of the queries q at
    offs_m against the keys at offs_n; only `partial` tiles apply the element mask."""
    k = _load_tile(K, b, hk, skb, skh, skt, offs_n, T, offs_d, HEAD_DIM)
    v = _load_tile(V, b, hk, svb, svh, svt, offs_n, T, offs_d, HEAD_DIM)
    s = tl.dot(q, tl.trans(k)) * qk_scale
    if partial:
        ev = tl.load(EV + b * T + offs_n, mask=offs_n < T, other=0)
        s = tl.where(_visible(offs_m[:, None], offs_n[None, :], ev[None, :]), s, float("-inf"))
    return s, k, v


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, EV, KMIN, KMAX,
              sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
              T, HQ, n_kv_tiles, qk_scale,
              GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, h, q0, q_last, offs_m, offs_d = _query_tile(T, HQ, BLOCK_M, BLOCK_D)
    q = _load_tile(Q, b, h, sqb, sqh, sqt, offs_m, T, offs_d, HEAD_DIM)
    # Finite start: a row whose first tiles are all masked gets exp2(-inf - -1e30) = 0, not NaN.
    m_i = tl.full([BLOCK_M], -1e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for kt in range(0, q_last // BLOCK_N + 1):
        k0 = kt * BLOCK_N
        live, partial = _tile_kind(q0, q_last, k0, BLOCK_N, KMIN, KMAX, b * n_kv_tiles + kt)
        if live:
            s, k, v = _scores(q, K, V, EV, b, h // GROUP, skb, skh, skt, svb, svh, svt,
                              offs_m, k0 + tl.arange(0, BLOCK_N), offs_d, partial, T, qk_scale, HEAD_DIM)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    _store_tile(O, acc / l_safe[:, None], b, h, sob, soh, sot, offs_m, T, offs_d, HEAD_DIM)
    tl.store(LSE + (b * HQ + h) * T + offs_m, m_i + tl.log2(l_safe), mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, EV, KMIN, KMAX,
                   sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot,
                   sdkb, sdkh, sdkt, sdvb, sdvh, sdvt,
                   T, HQ, HKV, n_kv_tiles, qk_scale, sm_scale,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, hk = pid_bh // HKV, pid_bh % HKV
    k0 = pid_n * BLOCK_N
    offs_n = k0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K, b, hk, skb, skh, skt, offs_n, T, offs_d, HEAD_DIM)
    v = _load_tile(V, b, hk, svb, svh, svt, offs_n, T, offs_d, HEAD_DIM)
    ev = tl.load(EV + b * T + offs_n, mask=offs_n < T, other=0)
    kmax = tl.load(KMAX + b * n_kv_tiles + pid_n)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # The rows that see any key of this tile are exactly [k0, kmax): one contiguous loop.
    for g in range(0, GROUP):
        h = hk * GROUP + g
        for qt in range(k0 // BLOCK_M, tl.cdiv(kmax, BLOCK_M)):
            q0 = qt * BLOCK_M
            q_last = tl.minimum(q0 + BLOCK_M, T) - 1
            live, partial = _tile_kind(q0, q_last, k0, BLOCK_N, KMIN, KMAX, b * n_kv_tiles + pid_n)
            if live:
                offs_m = q0 + tl.arange(0, BLOCK_M)
                q = _load_tile(Q, b, h, sqb, sqh, sqt, offs_m, T, offs_d, HEAD_DIM)
                do = _load_tile(DO, b, h, sdob, sdoh, sdot, offs_m, T, offs_d, HEAD_DIM)
                lse = tl.load(LSE + (b * HQ + h) * T + offs_m, mask=offs_m < T, other=0.0)
                delta = tl.load(DELTA + (b * HQ + h) * T + offs_m, mask=offs_m < T, other=0.0)
                p_t = tl.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])  # [BN, BM]
                if partial:
                    p_t = tl.where(_visible(offs_m[None, :], offs_n[:, None], ev[:, None]), p_t, 0.0)
                dv += tl.dot(p_t.to(do.dtype), do)
                ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])
                dk += tl.dot(ds_t.to(q.dtype), q)
    _store_tile(DK, dk * sm_scale, b, hk, sdkb, sdkh, sdkt, offs_n, T, offs_d, HEAD_DIM)
    _store_tile(DV, dv, b, hk, sdvb, sdvh, sdvt, offs_n, T, offs_d, HEAD_DIM)


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, EV, KMIN, KMAX,
                 sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdob, sdoh, sdot, sdqb, sdqh, sdqt,
                 T, HQ, n_kv_tiles, qk_scale, sm_scale,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    b, h, q0, q_last, offs_m, offs_d = _query_tile(T, HQ, BLOCK_M, BLOCK_D)
    q = _load_tile(Q, b, h, sqb, sqh, sqt, offs_m, T, offs_d, HEAD_DIM)
    do = _load_tile(DO, b, h, sdob, sdoh, sdot, offs_m, T, offs_d, HEAD_DIM)
    lse = tl.load(LSE + (b * HQ + h) * T + offs_m, mask=offs_m < T, other=0.0)
    delta = tl.load(DELTA + (b * HQ + h) * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for kt in range(0, q_last // BLOCK_N + 1):
        k0 = kt * BLOCK_N
        live, partial = _tile_kind(q0, q_last, k0, BLOCK_N, KMIN, KMAX, b * n_kv_tiles + kt)
        if live:
            s, k, v = _scores(q, K, V, EV, b, h // GROUP, skb, skh, skt, svb, svh, svt,
                              offs_m, k0 + tl.arange(0, BLOCK_N), offs_d, partial, T, qk_scale, HEAD_DIM)
            p = tl.exp2(s - lse[:, None])
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
    _store_tile(DQ, dq * sm_scale, b, h, sdqb, sdqh, sdqt, offs_m, T, offs_d, HEAD_DIM)


def _tile_bounds(evict_at: torch.Tensor, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-KV-tile (min, max) of evict_at, each [B, n_kv_tiles] int32; the ragged last tile
    is padded with 0 so its min forces the element mask."""
    B, T = evict_at.shape
    padded = torch.zeros(B, triton.cdiv(T, block_n) * block_n, dtype=torch.int32, device=evict_at.device)
    padded[:, :T] = evict_at
    tiles = padded.view(B, -1, block_n)
    return tiles.amin(-1).contiguous(), tiles.amax(-1).contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a [B, H, T, D] tensor whose last dim is contiguous."""
    assert x.stride(3) == 1, "head_dim must be contiguous"
    return x.stride(0), x.stride(1), x.stride(2)


class _MementoAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, evict_at, scale, block_m, block_n):
        B, HQ, T, D = q.shape
        HKV = k.shape[1]
        q, k, v = (x if x.stride(3) == 1 else x.contiguous() for x in (q, k, v))
        evict_at = evict_at.to(torch.int32).contiguous()
        kmin, kmax = _tile_bounds(evict_at, block_n)
        out = torch.empty(B, T, HQ, D, dtype=q.dtype, device=q.device).transpose(1, 2)  # [B, HQ, T, D] view
        lse = torch.empty(B, HQ, T, dtype=torch.float32, device=q.device)
        meta = dict(GROUP=HQ // HKV, HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n,
                    BLOCK_D=max(16, triton.next_power_of_2(D)))
        _attn_fwd[(triton.cdiv(T, block_m), B * HQ)](
            q, k, v, out, lse, evict_at, kmin, kmax,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            T, HQ, kmin.shape[1], scale * LOG2E, **meta)
        ctx.save_for_backward(q, k, v, out, lse, evict_at, kmin, kmax)
        ctx.scale, ctx.meta = scale, meta
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, evict_at, kmin, kmax = ctx.saved_tensors
        B, HQ, T, D = q.shape
        HKV = k.shape[1]
        meta = ctx.meta
        grad_out = grad_out if grad_out.stride(3) == 1 else grad_out.contiguous()
        delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # [B, HQ, T] rowsum(dO * O)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
        _attn_bwd_dkdv[(triton.cdiv(T, meta["BLOCK_N"]), B * HKV)](
            q, k, v, grad_out, lse, delta, dk, dv, evict_at, kmin, kmax,
            *common, *_strides(dk), *_strides(dv),
            T, HQ, HKV, kmin.shape[1], ctx.scale * LOG2E, ctx.scale, **meta)
        _attn_bwd_dq[(triton.cdiv(T, meta["BLOCK_M"]), B * HQ)](
            q, k, v, grad_out, lse, delta, dq, evict_at, kmin, kmax,
            *common, *_strides(dq),
            T, HQ, kmin.shape[1], ctx.scale * LOG2E, ctx.scale, **meta)
        return dq, dk, dv, None, None, None, None


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, evict_at: torch.Tensor,
                     scale: float, block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """Memento attention in Triton, differentiable w.r.t. q, k and v.

    Args:
        q: [B, Hq, T, D]; k, v: [B, Hkv, T, D] (Hq a multiple of Hkv), fp16/bf16 on GPU.
        evict_at: [B, T] int, row-local positions (packed sequences capped at their ends).
        scale: softmax scale. block_m, block_n: query / key tile sizes (powers of 2, >= 16).

    Returns:
        [B, Hq, T, D] (a transposed view of a contiguous [B, T, Hq, D] buffer, the layout
        transformers wants after attention).
    """
    return _MementoAttention.apply(q, k, v, evict_at, scale, block_m, block_n)
