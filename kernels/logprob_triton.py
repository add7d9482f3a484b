"""Triton fused log-prob and entropy from hidden states and the lm_head weight.

Forward: the grid is (token tiles, vocab splits), token tiles fastest so one split of W stays in L2
while every token tile passes over it. Each program computes logits tile by tile with tl.dot
(fp32 accumulation), scales by 1/temperature, sets columns past V to -inf *before* the running max
(zero-padded columns otherwise add exp(0) each to the partition function: verl #2899), and keeps
online fp32 (max m, sum e^(z-m), sum e^(z-m)(z-m), target logit) per row. A small deterministic
torch epilogue merges the splits into log-prob, log-sum-exp and entropy. Never T x V.

Backward: for each vocab chunk, a kernel recomputes the logits and writes the logit gradient
dz = g_lp (1[k=t] - p) - g_H p (log p + H) divided by temperature into an [N, chunk] buffer; two
GEMMs then give dX (accumulated over chunks in fp32) and that chunk's rows of dW (complete in one
GEMM, so no cross-chunk accumulation). No atomics: deterministic.

This module imports triton; `kernels.dispatch` imports it only when the Triton path is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.logprob_torch import IGNORE_INDEX, output_grads


@triton.jit
def _logits_tile(X, W, offs_m, offs_v, N, V, H, sxn, swv, inv_temp,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_M, BLOCK_N] fp32 logits / temperature; -inf in columns >= V."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + offs_m[:, None] * sxn + offs_k[None, :],
                    mask=(offs_m < N)[:, None] & (offs_k < H)[None, :], other=0.0)
        w = tl.load(W + offs_v[:, None] * swv + offs_k[None, :],
                    mask=(offs_v < V)[:, None] & (offs_k < H)[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    return tl.where((offs_v < V)[None, :], acc * inv_temp, float("-inf"))


@triton.jit
def _logprob_fwd(X, W, TGT, PART_M, PART_S, PART_W, PART_ZT, N, V, H, sxn, swv, inv_temp,
                 SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_s = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tgt = tl.load(TGT + offs_m, mask=offs_m < N, other=-1)
    m = tl.full([BLOCK_M], -1e30, tl.float32)  # finite: exp(m_old - m_new) never sees -inf - -inf
    s = tl.zeros([BLOCK_M], tl.float32)  # sum e^(z-m)
    w = tl.zeros([BLOCK_M], tl.float32)  # sum e^(z-m) (z-m)
    zt = tl.zeros([BLOCK_M], tl.float32)  # target logit, if in this split
    v_end = tl.minimum((pid_s + 1) * SPLIT, V)
    for v0 in range(pid_s * SPLIT, v_end, BLOCK_N):
        offs_v = v0 + tl.arange(0, BLOCK_N)
        z = _logits_tile(X, W, offs_m, offs_v, N, V, H, sxn, swv, inv_temp, BLOCK_M, BLOCK_N, BLOCK_K)
        m_new = tl.maximum(m, tl.max(z, 1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        zr = tl.where((offs_v < V)[None, :], z - m_new[:, None], 0.0)  # avoid 0 * -inf
        # Re-centre sum e^(z-m)(z-m) on the new max: e^(m-m') (w + s (m - m')).
        w = alpha * (w + s * (m - m_new)) + tl.sum(e * zr, 1)
        s = alpha * s + tl.sum(e, 1)
        zt += tl.sum(tl.where(offs_v[None, :] == tgt[:, None], z, 0.0), 1)
        m = m_new
    out = pid_s * N + offs_m
    row_ok = offs_m < N
    tl.store(PART_M + out, m, mask=row_ok)
    tl.store(PART_S + out, s, mask=row_ok)
    tl.store(PART_W + out, w, mask=row_ok)
    tl.store(PART_ZT + out, zt, mask=row_ok)


@triton.jit
def _logprob_bwd_dz(X, W, TGT, LSE, ENT, G_LP, G_H, DZ, N, V, H, sxn, swv, sdz, v_start, v_stop, inv_temp,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_v = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = v_start + pid_v * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < N
    z = _logits_tile(X, W, offs_m, offs_v, N, V, H, sxn, swv, inv_temp, BLOCK_M, BLOCK_N, BLOCK_K)
    tgt = tl.load(TGT + offs_m, mask=row_ok, other=-1)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
    ent = tl.load(ENT + offs_m, mask=row_ok, other=0.0)
    g_lp = tl.load(G_LP + offs_m, mask=row_ok, other=0.0)
    g_h = tl.load(G_H + offs_m, mask=row_ok, other=0.0)
    logp = z - lse[:, None]
    p = tl.exp(logp)  # 0 in columns >= V
    logp = tl.where((offs_v < V)[None, :], logp, 0.0)
    # d logp_t / dz_k = 1[k=t] - p_k ;  d H / dz_k = -p_k (log p_k + H)
    dz = -(g_lp[:, None] + g_h[:, None] * (logp + ent[:, None])) * p
    dz += tl.where(offs_v[None, :] == tgt[:, None], g_lp[:, None], 0.0)
    tl.store(DZ + offs_m[:, None] * sdz + (offs_v - v_start)[None, :], (dz * inv_temp).to(DZ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_v < v_stop)[None, :])


def _merge_splits(parts: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """parts [4, S, N] (m, s, w, zt) per split -> logprobs, entropy, lse, each [N] fp32."""
    m, s, w, zt = parts
    top = m.amax(0)
    scale = torch.exp(m - top)
    total = (s * scale).sum(0)
    # sum over all columns of e^(z-top) (z-top), from each split's version centred on its own max
    centred = (scale * (w + s * (m - top))).sum(0)
    lse = top + torch.log(total)
    logprobs = torch.where(valid, zt.sum(0) - lse, 0.0)
    entropy = torch.where(valid, torch.log(total) - centred / total, 0.0)
    return logprobs, entropy, lse


class _FusedLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, cfg):
        N, H = hidden.shape
        V = weight.shape[0]
        hidden, weight = hidden.contiguous(), weight.contiguous()
        targets = targets.to(torch.int32).contiguous()
        n_splits = triton.cdiv(V, cfg["split"])
        parts = torch.empty(4, n_splits, N, dtype=torch.float32, device=hidden.device)
        _logprob_fwd[(triton.cdiv(N, cfg["block_m"]), n_splits)](
            hidden, weight, targets, parts[0], parts[1], parts[2], parts[3], N, V, H,
            hidden.stride(0), weight.stride(0), 1.0 / temperature,
            SPLIT=cfg["split"], BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"])
        valid = targets != IGNORE_INDEX
        logprobs, entropy, lse = _merge_splits(parts, valid)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.temperature, ctx.cfg = temperature, cfg
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        cfg = ctx.cfg
        N, H = hidden.shape
        V = weight.shape[0]
        g_lp, g_h = output_grads(targets, grad_logprobs, grad_entropy)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.zeros(N, H, dtype=torch.float32, device=hidden.device) if want_hidden else None
        grad_weight = torch.empty_like(weight) if want_weight else None
        # Vocab chunk: a multiple of block_n with N x chunk <= dlogits_budget elements.
        chunk = max(cfg["block_n"], cfg["dlogits_budget"] // max(N, 1) // cfg["block_n"] * cfg["block_n"])
        dz = torch.empty(N, min(chunk, V), dtype=hidden.dtype, device=hidden.device)
        for v0 in range(0, V, chunk):
            v1 = min(v0 + chunk, V)
            _logprob_bwd_dz[(triton.cdiv(N, cfg["block_m"]), triton.cdiv(v1 - v0, cfg["block_n"]))](
                hidden, weight, targets, lse, entropy, g_lp, g_h, dz, N, V, H,
                hidden.stride(0), weight.stride(0), dz.stride(0), v0, v1, 1.0 / ctx.temperature,
                BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"])
            dz_chunk = dz[:, :v1 - v0]
            if want_hidden:
                grad_hidden += (dz_chunk @ weight[v0:v1]).float()
            if want_weight:
                grad_weight[v0:v1] = dz_chunk.T @ hidden
        if want_hidden:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_logprob_entropy_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                  temperature: float = 1.0, block_m: int = 64, block_n: int = 128,
                                  block_k: int = 64, split: int = 4096, dlogits_budget: int = 2**28
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused log-prob of each target and entropy, never materialising N x V logits.

    Args:
        hidden: [N, H]; weight: [V, H] (lm_head), same dtype (fp16/bf16 on GPU; fp32/fp16 in
            the interpreter); targets: [N] long in [0, V) or IGNORE_INDEX.
        temperature: logits are divided by it.
        block_m, block_n, block_k: token / vocab / hidden tile sizes (powers of 2, >= 16).
        split: vocab columns per forward program (a multiple of block_n).
        dlogits_budget: max elements of the backward's [N, vocab chunk] logit-gradient buffer.

    Returns:
        (logprobs [N] fp32, entropy [N] fp32), 0 at ignored targets; differentiable.
    """
    assert split % block_n == 0, "split must be a multiple of block_n"
    cfg = dict(block_m=block_m, block_n=block_n, block_k=block_k, split=split, dlogits_budget=dlogits_budget)
    return _FusedLogprobEntropy.apply(hidden, weight, targets, temperature, cfg)
