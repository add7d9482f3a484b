"""Policy losses, loss aggregation, KL estimators and rollout-mismatch correction for the actor update.

Pure torch on padded (B, T) tensors: B sequences (rows), T token positions. Every function takes a
`loss_mask` (B, T) that is 1 only on response tokens the policy chose; prompt tokens, padding and
engine-forced tokens (the block-length cap's `<|block_end|>`) are 0 and contribute neither loss nor
gradient, whatever values the other inputs hold there. Packed micro-batches must be unpacked to one
row per sequence first (GSPO and the seq-mean modes need sequence boundaries).

Semantics follow verl (verl/trainer/ppo/core_algos.py); each function names its verl counterpart
and says where we differ. `actor_loss` is the one entry point the actor calls per micro-batch.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from rl.algo_config import AlgoConfig, KLType, LossAggMode, PolicyLossMode

# verl clamps log-ratios before exp() so a single wild token cannot overflow.
_LOG_RATIO_CLAMP = 20.0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x where mask is set; masked values (even inf or NaN) never leak in."""
    zeroed = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return zeroed.sum() if dim is None else zeroed.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over set mask entries; 0 where nothing is set (instead of NaN)."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def _clamp_count(n: Tensor | float) -> Tensor | float:
    return n.clamp(min=1) if isinstance(n, Tensor) else max(n, 1)


def agg_loss(
    loss_mat: Tensor,
    loss_mask: Tensor,
    loss_agg_mode: LossAggMode,
    *,
    dp_size: int = 1,
    batch_num_tokens: Tensor | float | None = None,
    global_batch_size: Tensor | float | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """Aggregate a per-token loss matrix into a scalar (verl `agg_loss`, Aug-2026 semantics).

    Modes (n_i = loss tokens of sequence i, S = sequences with n_i > 0):
        token-mean:              sum_{i,t} l_it / N,                        N = sum_i n_i
        seq-mean-token-mean:     sum_{i in S} (sum_t l_it / n_i) / |S|      (original GRPO)
        seq-mean-token-sum:      sum_i sum_t l_it / |S|
        seq-mean-token-sum-norm: sum_i sum_t l_it / |S| / loss_scale_factor (Dr.GRPO; verl before
                                 2026 omitted the / |S|)

    Sharding. With the defaults N and |S| are counted in this call, which is right for one
    micro-batch on one rank. To make a mini-batch split into micro-batches (gradient accumulation)
    and data-parallel ranks equal the global mean, pass the global counts over the whole
    mini-batch and all ranks (`batch_num_tokens` = N, `global_batch_size` = |S|, the number of
    sequences with at least one loss token; verl passes the mini-batch size, which differs only
    when some sequence has no loss token) and `dp_size`. The result is multiplied by dp_size
    because DDP/ZeRO average gradients over ranks. Then call backward on each micro-batch loss
    as is (sum over micro-batches, never divide by their number: with DeepSpeed use
    `engine.backward(loss, scale_wrt_gas=False)` or gradient_accumulation_steps=1); the summed
    micro-batch losses averaged over ranks equal the global value, gradients likewise.

    Args:
        loss_mat: (B, T) per-token loss.
        loss_mask: (B, T) 1 where the token carries loss.
        loss_agg_mode: one of the modes above.
        dp_size: data-parallel world size; > 1 requires the global count the mode uses.
        batch_num_tokens: global N for token-mean.
        global_batch_size: global |S| for the seq-mean modes.
        loss_scale_factor: divisor of seq-mean-token-sum-norm; None means T (verl's fallback,
            which depends on padding; AlgoConfig requires a constant).

    Returns:
        () scalar loss; 0 (not NaN) when nothing carries loss.
    """
    mask = loss_mask.bool()
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("agg_loss: batch_num_tokens (global) is required when dp_size > 1")
            batch_num_tokens = mask.sum()
        return masked_sum(loss_mat, mask) / _clamp_count(batch_num_tokens) * dp_size
    if loss_agg_mode not in get_args(LossAggMode):
        raise ValueError(f"loss_agg_mode must be one of {list(get_args(LossAggMode))}, got {loss_agg_mode!r}")

    tokens_per_seq = mask.sum(-1)  # (B,)
    if loss_agg_mode == "seq-mean-token-mean":
        seq_loss = masked_sum(loss_mat, mask, dim=-1) / tokens_per_seq.clamp(min=1)  # (B,)
    else:
        seq_loss = masked_sum(loss_mat, mask, dim=-1)  # (B,)
    if global_batch_size is None:
        if dp_size > 1:
            raise ValueError("agg_loss: global_batch_size (global) is required when dp_size > 1")
        global_batch_size = (tokens_per_seq > 0).sum()
    loss = seq_loss.sum() / _clamp_count(global_batch_size) * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1])
    return loss


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLType) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens (verl `kl_penalty`, Schulman 2020).

    With d = ref_logprobs - logprobs:
        k1 / kl:         -d                   (unbiased, high variance, can be negative)
        k2 / mse:        d^2 / 2
        k3 / low_var_kl: exp(d) - d - 1, with d clamped to [-20, 20] and the result to [-10, 10]
                         as verl does (always >= 0, unbiased before clamping)

    Args:
        logprobs: (B, T) log pi(token) of the current (or old) policy.
        ref_logprobs: (B, T) log pi_ref(token).
        kind: estimator name.

    Returns:
        (B, T) per-token estimate; aggregate with agg_loss or masked_sum.
    """
    log_ratio = logprobs - ref_logprobs
    if kind in ("k1", "kl"):
        return log_ratio
    if kind in ("k2", "mse"):
        return 0.5 * log_ratio.square()
    if kind in ("k3", "low_var_kl"):
        d = (-log_ratio).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
        return (d.exp() - d - 1).clamp(-10.0, 10.0)
    raise ValueError(f"kl type must be one of {list(get_args(KLType))}, got {kind!r}")


def policy_loss(
    loss_mode: PolicyLossMode,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float = 3.0,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token policy-gradient loss of one mode, before aggregation.

    ppo (verl `compute_policy_loss_vanilla`): r = exp(logp - old) with the log-ratio clamped to
        +-20; l = max(-A r, -A clip(r, 1 - low, 1 + high)); for A < 0 additionally
        l = min(l, -A c), the dual clip (Ye et al. 2019, arXiv 1912.09729) that bounds the loss
        when a negative-advantage token's ratio has grown large.
    cispo (verl `compute_policy_loss_cispo`, MiniMax-M1 arXiv 2506.13585): l = -sg(clip(r, 1 - low,
        1 + high)) A logp. The weight is detached, so every token keeps a gradient
        sg(w) A grad(logp); clipping only bounds its size. The loss value itself is not an
        objective estimate (it contains logp), as in verl.
    gspo (verl `compute_policy_loss_gspo`, arXiv 2507.18071): s_i = exp(mean_t(logp - old)) per
        sequence, applied per token as s_it = sg(s_i) exp(logp - sg(logp)) (log clamped at 10);
        l = max(-A s_it, -A clip(s_it, 1 - low, 1 + high)). Aggregate with seq-mean-token-mean
        (AlgoConfig enforces it; verl overrides silently). No dual clip, as in verl.

    Args:
        loss_mode: "ppo", "cispo" or "gspo".
        logprobs: (B, T) log-probs of the sampled tokens under the policy being trained (grad).
        old_logprobs: (B, T) log-probs under the policy that generated the batch (no grad).
        advantages: (B, T) per-token advantages.
        loss_mask: (B, T) 1 where the token carries loss.
        clip_ratio_low, clip_ratio_high: clip band [1 - low, 1 + high].
        clip_ratio_c: dual-clip bound (> 1), ppo only.

    Returns:
        loss_mat: (B, T) per-token loss, 0 where loss_mask is 0.
        metrics: pg_clipfrac (tokens where clipping changed the loss / weight), pg_clipfrac_lower
            (tokens where the dual clip bound is active; 0 for cispo and gspo as in verl) and
            ppo_kl (mean old - logp), all over loss tokens of this call.
    """
    mask = loss_mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Masked positions may hold anything (padding, -inf); zero them so neither loss nor grad sees it.
    logprobs = torch.where(mask, logprobs, zero)
    log_ratio = torch.where(mask, logprobs - old_logprobs, zero)  # (B, T)
    advantages = torch.where(mask, advantages, zero)
    low, high = 1.0 - clip_ratio_low, 1.0 + clip_ratio_high
    clipfrac_lower = zero

    if loss_mode == "ppo":
        ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).exp()
        unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(low, high)
        clip_loss = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        dual_bound = -advantages * clip_ratio_c
        negative = advantages < 0
        loss_mat = torch.where(negative, torch.minimum(clip_loss, dual_bound), clip_loss)
        clipfrac_lower = masked_mean((negative & (clip_loss > dual_bound)).float(), mask)
    elif loss_mode == "cispo":
        ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP).exp()
        weight = ratio.clamp(low, high).detach()
        loss_mat = -weight * advantages * logprobs
        clipfrac = masked_mean(((ratio < low) | (ratio > high)).float(), mask)
    elif loss_mode == "gspo":
        seq_log_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        log_s = (logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=10.0)
        s = log_s.exp()  # (B, T), value s_i on every token of row i
        unclipped, clipped = -advantages * s, -advantages * s.clamp(low, high)
        loss_mat = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    else:
        raise ValueError(f"loss_mode must be one of {list(get_args(PolicyLossMode))}, got {loss_mode!r}")

    metrics = {
        "pg_clipfrac": clipfrac.item(),
        "pg_clipfrac_lower": clipfrac_lower.item(),
        "ppo_kl": masked_mean(-log_ratio, mask).item(),
    }
    return torch.where(mask, loss_mat, zero), metrics


def actor_loss(
    cfg: AlgoConfig,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    is_weights: Tensor | None = None,
    dp_size: int = 1,
    batch_num_tokens: Tensor | float | None = None,
    global_batch_size: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The scalar the actor backpropagates for one micro-batch (verl workers/utils/losses.ppo_loss).

        loss = agg(pg_loss * is_weights) - entropy_coeff * agg(entropy) + kl_loss_coef * agg(kl)

    All three terms use cfg.loss_agg_mode and the same global counts (see agg_loss for how to
    set dp_size / batch_num_tokens / global_batch_size so micro-batches sum to the global mean).
    The TIS weights multiply only the policy-gradient term, as in verl.

    Args:
        cfg: the algorithm config.
        logprobs: (B, T) log-probs under the policy being trained (grad).
        old_logprobs: (B, T) log-probs under the policy that generated the batch.
        advantages: (B, T) from rl.advantages.compute_advantages.
        loss_mask: (B, T) 1 on response tokens the policy chose.
        ref_logprobs: (B, T) reference log-probs; required when cfg.use_kl_loss.
        entropy: (B, T) per-token policy entropy (grad); required when cfg.entropy_coeff != 0.
        is_weights: (B, T) detached truncated-IS weights from rollout_mismatch, or None.
        dp_size, batch_num_tokens, global_batch_size: global normalisers for agg_loss.

    Returns:
        loss: () scalar to backpropagate.
        metrics: pg_loss, entropy, kl_loss (this micro-batch's share of the global value: sum
            them over micro-batches, average over ranks) and the policy_loss metrics.
    """
    if cfg.use_kl_loss and ref_logprobs is None:
        raise ValueError("actor_loss: ref_logprobs is required when use_kl_loss is set")
    if cfg.entropy_coeff != 0 and entropy is None:
        raise ValueError("actor_loss: entropy is required when entropy_coeff != 0")

    def agg(loss_mat: Tensor) -> Tensor:
        return agg_loss(
            loss_mat,
            loss_mask,
            cfg.loss_agg_mode,
            dp_size=dp_size,
            batch_num_tokens=batch_num_tokens,
            global_batch_size=global_batch_size,
            loss_scale_factor=cfg.loss_scale_factor,
        )

    pg_mat, metrics = policy_loss(
        cfg.loss_mode,
        logprobs,
        old_logprobs,
        advantages,
        loss_mask,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c,
    )
    if is_weights is not None:
        pg_mat = pg_mat * is_weights.detach()
    loss = agg(pg_mat)
    metrics["pg_loss"] = loss.item()

    if entropy is not None:
        entropy_agg = agg(entropy)
        metrics["entropy"] = entropy_agg.item()
        if cfg.entropy_coeff != 0:
            loss = loss - cfg.entropy_coeff * entropy_agg
    if cfg.use_kl_loss:
        mask = loss_mask.bool()
        kl = kl_penalty(torch.where(mask, logprobs, 0.0), torch.where(mask, ref_logprobs, 0.0), cfg.kl_loss_type)
        kl_agg = agg(kl)
        metrics["kl_loss"] = kl_agg.item()
        loss = loss + cfg.kl_loss_coef * kl_agg
    return loss, metrics


def rollout_mismatch(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    loss_mask: Tensor,
    tis_imp_ratio_cap: float | None = None,
) -> tuple[Tensor | None, dict[str, float]]:
    """Rollout-vs-actor log-prob gap metrics and the optional truncated importance-sampling weight.

    The sampler's log-probs (rollout engine) and the actor's recomputed old log-probs should be
    equal; numerics and kernels make them differ. TIS (Yao et al. 2025; verl's token-level
    `tis_imp_ratio_cap`, now `rollout_correction.rollout_is="token"`) reweights each token by
    w = min(exp(old - rollout), cap), detached, correcting for sampling from the rollout policy.

    Args:
        old_logprobs: (B, T) actor log-probs of the sampled tokens at the sampling temperature.
        rollout_logprobs: (B, T) the sampler's log-probs of the same tokens.
        loss_mask: (B, T) 1 where the token carries loss.
        tis_imp_ratio_cap: the cap C; None computes metrics only.

    Returns:
        weights: (B, T) detached weights (meaningless where loss_mask is 0), or None without a cap.
        metrics over loss tokens (0 when there are none):
            mismatch/abs_diff_mean, mismatch/abs_diff_max: |old - rollout|;
            mismatch/k1, mismatch/k3: KL(rollout || old) estimates (k1 = mean(rollout - old),
                k3 = mean(r - 1 - log r) with r = old / rollout prob);
            mismatch/ratio_mean, ratio_min, ratio_max: r = exp(old - rollout);
            mismatch/tis_capped_frac: tokens with r > cap (only when a cap is given).
    """
    mask = loss_mask.bool()
    with torch.no_grad():
        zero = torch.zeros((), dtype=old_logprobs.dtype, device=old_logprobs.device)
        log_ratio = torch.where(mask, old_logprobs - rollout_logprobs, zero).clamp(
            -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP
        )
        ratio = log_ratio.exp()  # (B, T), 1 at masked positions
        any_token = bool(mask.any())
        metrics = {
            "mismatch/abs_diff_mean": masked_mean(log_ratio.abs(), mask).item(),
            "mismatch/abs_diff_max": log_ratio.abs().max().item() if any_token else 0.0,
            "mismatch/k1": masked_mean(-log_ratio, mask).item(),
            "mismatch/k3": masked_mean(ratio - 1 - log_ratio, mask).item(),
            "mismatch/ratio_mean": masked_mean(ratio, mask).item(),
            "mismatch/ratio_min": ratio[mask].min().item() if any_token else 1.0,
            "mismatch/ratio_max": ratio[mask].max().item() if any_token else 1.0,
        }
        if tis_imp_ratio_cap is None:
            return None, metrics
        metrics["mismatch/tis_capped_frac"] = masked_mean((ratio > tis_imp_ratio_cap).float(), mask).item()
        return ratio.clamp(max=tis_imp_ratio_cap), metrics
