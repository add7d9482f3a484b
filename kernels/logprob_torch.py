"""PyTorch log-prob and entropy from hidden states: the CPU path and the reference.

`linear_logprob_entropy_torch` walks the tokens in chunks and never holds more than
chunk x V logits, in the forward and in the backward (a custom autograd Function recomputes each
chunk's logits instead of saving them). `logprob_entropy_reference` is the obviously-correct full
T x V version used by tests and benchmarks.

Shapes: N tokens, H hidden size, V vocabulary. Targets equal to IGNORE_INDEX score 0 (log-prob
and entropy) and pass no gradient. Outputs are always fp32: a bf16 log-prob has ~3 significant
digits, too few for importance ratios.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def logprob_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-logits log-prob and entropy: log_softmax((hidden @ weight.T) / temperature).

    Args:
        hidden: [N, H]; weight: [V, H] (lm_head); targets: [N] long, IGNORE_INDEX to skip.

    Returns:
        (logprobs [N] fp32, entropy [N] fp32), 0 at ignored targets; differentiable.
    """
    logp_all = torch.log_softmax((hidden @ weight.T).float() / temperature, dim=-1)
    valid = targets != IGNORE_INDEX
    logprobs = logp_all.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return torch.where(valid, logprobs, 0.0), torch.where(valid, entropy, 0.0)


def _chunk_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, inv_temp: float,
                       lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmax [C, V] fp32, lse [C]) of one chunk of tokens; `lse` given skips its reduction.
    In place on the fresh logits: a chunk costs one [C, V] buffer, not one per op."""
    logits = (hidden @ weight.T).float().mul_(inv_temp)
    lse = torch.logsumexp(logits, dim=-1) if lse is None else lse
    return logits.sub_(lse[:, None]), lse


def output_grads(targets: torch.Tensor, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Incoming fp32 gradients of (logprobs, entropy), zero at ignored targets (and when None)."""
    valid = targets != IGNORE_INDEX
    zero = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    return tuple(zero if g is None else torch.where(valid, g.float(), 0.0).contiguous()
                 for g in (grad_logprobs, grad_entropy))


class _ChunkedLogprobEntropy(torch.autograd.Function):
    """Chunked over tokens; saves hidden, weight and two [N] vectors, never the logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_tokens):
        inv_temp = 1.0 / temperature
        valid = targets != IGNORE_INDEX
        tgt = targets.clamp(min=0)
        logprobs = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logprobs)
        lse = torch.empty_like(logprobs)
        for c0 in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(c0, c0 + chunk_tokens)
            logp_all, lse[rows] = _chunk_log_softmax(hidden[rows], weight, inv_temp)
            logprobs[rows] = logp_all.gather(1, tgt[rows, None])[:, 0]
            entropy[rows] = -logp_all.exp().mul_(logp_all).sum(-1)
        logprobs = torch.where(valid, logprobs, 0.0)
        entropy = torch.where(valid, entropy, 0.0)
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.inv_temp, ctx.chunk_tokens = inv_temp, chunk_tokens
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        g_lp, g_h = output_grads(targets, grad_logprobs, grad_entropy)
        tgt = targets.clamp(min=0)
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        for c0 in range(0, hidden.shape[0], ctx.chunk_tokens):
            rows = slice(c0, c0 + ctx.chunk_tokens)
            logp_all, _ = _chunk_log_softmax(hidden[rows], weight, ctx.inv_temp, lse[rows])
            p = logp_all.exp()
            # d logp_t / dz_k = 1[k=t] - p_k ;  d H / dz_k = -p_k (log p_k + H); in logp_all's buffer
            dz = logp_all.add_(entropy[rows, None]).mul_(g_h[rows, None]).add_(g_lp[rows, None]).mul_(p).neg_()
            dz.scatter_add_(1, tgt[rows, None], g_lp[rows, None]).mul_(ctx.inv_temp)
            if want_hidden:
                grad_hidden[rows] = dz.to(weight.dtype) @ weight
            if want_weight:
                grad_weight.addmm_(dz.T, hidden[rows].float())
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def linear_logprob_entropy_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                 temperature: float = 1.0, logits_budget: int = 2**25
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target and entropy, in token chunks of at most `logits_budget` logits.

    Args:
        hidden: [N, H]; weight: [V, H]; targets: [N] long in [0, V) or IGNORE_INDEX.
        temperature: logits are divided by it (match the sampler's temperature).
        logits_budget: max elements of one chunk's fp32 logits (2**25 = 128 MB).

    Returns:
        (logprobs [N] fp32, entropy [N] fp32), 0 at ignored targets; differentiable w.r.t.
        hidden and weight (weight's gradient is accumulated in fp32 over chunks).
    """
    chunk_tokens = max(1, logits_budget // weight.shape[0])
    return _ChunkedLogprobEntropy.apply(hidden, weight, targets, temperature, chunk_tokens)
