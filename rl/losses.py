"""Policy losses, loss aggregation, KL estimators and rollout correction for the actor update,
and how each metric they report combines (METRIC_AGGREGATION).

Pure torch on padded (B, T) tensors: B sequences (rows), T token positions. Every function takes a
`loss_mask` (B, T) that is 1 only on response tokens the policy chose; prompt tokens, padding and
engine-forced tokens (the block-length cap's `<|block_end|>`) are 0 and contribute neither loss nor
gradient, whatever values the other inputs hold there. Packed micro-batches must be unpacked to one
row per sequence first (GSPO and the seq-mean modes need sequence boundaries).

Semantics follow verl (verl/trainer/ppo/core_algos.py); each function names its verl counterpart
and says where we differ. `actor_loss` is the one entry point the actor calls per micro-batch.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from rl.algo_config import AlgoConfig, KLType, LossAggMode, PolicyLossMode, RolloutRS

# verl clamps log-ratios before exp() so a single wild token cannot overflow.
_LOG_RATIO_CLAMP = 20.0

# How each metric the update reports combines over micro-batches, optimizer steps and
# data-parallel ranks. Every metric a loss here (or the actor's step) emits must be listed:
#   share:      the micro-batch's share of a global value (agg_loss normalises by global counts):
#               summed over micro-batches, averaged over steps and ranks (a rank with no token
#               counts as 0, its share).
#   token_mean: a rate over this micro-batch's loss tokens: weighted by its share of the
#               mini-batch's tokens (times the rank count, so the mean over ranks is the
#               mini-batch's token mean), averaged over steps and ranks.
#   max:        the largest value anywhere.
#   step:       one value per optimizer step (set once per step): averaged over steps and ranks.
MetricAggregation = Literal["share", "token_mean", "max", "step"]
METRIC_AGGREGATION: dict[str, MetricAggregation] = {
    "pg_loss": "share",
    "entropy": "share",
    "kl_loss": "share",
    "sft_loss": "share",
    "pg_clipfrac": "token_mean",
    "pg_clipfrac_lower": "token_mean",
    "ppo_kl": "token_mean",
    "ppo_ratio_max": "max",
    "grad_norm": "step",
    "lr": "step",
}


def metric_aggregation(key: str) -> MetricAggregation:
    """The declared aggregation of a metric; a clear error for an undeclared one."""
    if key not in METRIC_AGGREGATION:
        raise KeyError(f"metric {key!r} has no declared aggregation: add it to rl.losses.METRIC_AGGREGATION")
    return METRIC_AGGREGATION[key]


def combine_micro_batches(per_micro: list[tuple[dict[str, float], float]], world_size: int) -> dict[str, float]:
    """One optimizer step's metrics on one rank from its micro-batches' (metrics, token share).

    token share = the micro-batch's loss tokens / the whole mini-batch's (all ranks).
    """
    out: dict[str, float] = {}
    for metrics, share in per_micro:
        for key, value in metrics.items():
            how = metric_aggregation(key)
            if how == "max":
                out[key] = max(out.get(key, -math.inf), value)
            elif how == "token_mean":
                out[key] = out.get(key, 0.0) + value * share * world_size
            else:  # share; a step metric is set once per step, so the sum is that value
                out[key] = out.get(key, 0.0) + value
    return out


def reduce_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-step (or per-rank) metric dicts: the max for max metrics, else the mean over
    all parts, a part missing a key counting as 0 (a rank or step with no loss tokens)."""
    keys = dict.fromkeys(key for part in parts for key in part)
    return {key: max(part[key] for part in parts if key in part) if metric_aggregation(key) == "max"
            else sum(part.get(key, 0.0) for part in parts) / len(parts) for key in keys}


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
    group_num_tokens: Tensor | None = None,
    num_groups: Tensor | float | None = None,
) -> Tensor:
    """Aggregate a per-token loss matrix into a scalar (verl `agg_loss`, Aug-2026 semantics).

    Modes (n_i = loss tokens of sequence i, S = sequences with n_i > 0; g(i) = the group (prompt)
    of sequence i, N_g = sum of n_i over group g, G = groups with N_g > 0):
        token-mean:              sum_{i,t} l_it / N,                        N = sum_i n_i
        seq-mean-token-mean:     sum_{i in S} (sum_t l_it / n_i) / |S|      (original GRPO)
        seq-mean-token-sum:      sum_i sum_t l_it / |S|
        seq-mean-token-sum-norm: sum_i sum_t l_it / |S| / loss_scale_factor (Dr.GRPO; verl before
                                 2026 omitted the / |S|)
        group-mean-token-mean:   sum_g (sum_{i in g, t} l_it / N_g) / |G|   (not in verl)

    group-mean-token-mean is how we read the MEMENTO paper's "group-total loss normalization"
    (arXiv 2604.09852, A.2.3), which it names but does not define: each group's summed token loss
    is divided by that group's total loss-token count (a token mean within the group, so long and
    short responses to one prompt weigh by their tokens, as in token-mean), and groups are then
    averaged, so every prompt weighs the same whatever its responses' total length (as
    seq-mean-token-mean does for sequences). It is token-mean when all groups have equal totals.

    Sharding. With the defaults N and |S| are counted in this call, which is right for one
    micro-batch on one rank. To make a mini-batch split into micro-batches (gradient accumulation)
    and data-parallel ranks equal the global mean, pass the global counts over the whole
    mini-batch and all ranks (`batch_num_tokens` = N, `global_batch_size` = |S|, the number of
    sequences with at least one loss token; verl passes the mini-batch size, which differs only
    when some sequence has no loss token; `group_num_tokens` = N_g(i) per row and `num_groups` =
    |G|, from `group_normalisers` over the whole mini-batch) and `dp_size`. A group may then be
    split across micro-batches and ranks. The result is multiplied by dp_size
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
        group_num_tokens: (B,) N_g(i) of each row's group; required by group-mean-token-mean.
        num_groups: |G|; required by group-mean-token-mean.

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

    if loss_agg_mode == "group-mean-token-mean":
        if group_num_tokens is None or num_groups is None:
            raise ValueError("agg_loss: group-mean-token-mean needs group_num_tokens and num_groups "
                             "(rl.losses.group_normalisers over the whole mini-batch)")
        row_loss = masked_sum(loss_mat, mask, dim=-1) / group_num_tokens.to(loss_mat.dtype).clamp(min=1)
        return row_loss.sum() / _clamp_count(num_groups) * dp_size

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


def group_normalisers(loss_mask: Tensor, group_ids: Tensor) -> tuple[Tensor, int]:
    """The counts group-mean-token-mean divides by, over the rows given (a whole mini-batch).

    Args:
        loss_mask: (B, T) 1 where the token carries loss.
        group_ids: (B,) integer group (prompt) id of each row, in any order.

    Returns:
        group_num_tokens: (B,) long, N_g(i): the loss tokens of all rows in row i's group.
        num_groups: |G|, the groups with at least one loss token.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (B,) group index of each row
    tokens = loss_mask.bool().sum(-1)  # (B,)
    per_group = torch.zeros(int(inverse.max()) + 1 if inverse.numel() else 0, dtype=tokens.dtype)
    per_group.index_add_(0, inverse, tokens)
    return per_group[inverse], int((per_group > 0).sum())


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
            ppo_kl (mean old - logp), all over loss tokens of this call; ppo_ratio_max, the
            largest token ratio exp(logp - old) (1 when no token carries loss).
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
        "ppo_ratio_max": log_ratio[mask].max().clamp(max=_LOG_RATIO_CLAMP).exp().item() if mask.any() else 1.0,
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
    group_num_tokens: Tensor | None = None,
    num_groups: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The scalar the actor backpropagates for one micro-batch (verl workers/utils/losses.ppo_loss).

        loss = agg(pg_loss * is_weights) - entropy_coeff * agg(entropy) + kl_loss_coef * agg(kl)

    All three terms use cfg.loss_agg_mode and the same global counts (see agg_loss for how to
    set dp_size / batch_num_tokens / global_batch_size / group_num_tokens / num_groups so
    micro-batches sum to the global mean).
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
        dp_size, batch_num_tokens, global_batch_size, group_num_tokens, num_groups: global
            normalisers for agg_loss.

    Returns:
        loss: () scalar to backpropagate.
        metrics: pg_loss, entropy, kl_loss (this micro-batch's share of the global value) and
            the policy_loss metrics; METRIC_AGGREGATION says how each combines.
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
            group_num_tokens=group_num_tokens,
            num_groups=num_groups,
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


def sft_loss(logprobs: Tensor, loss_mask: Tensor, *, dp_size: int = 1,
             batch_num_tokens: Tensor | float | None = None) -> tuple[Tensor, dict[str, float]]:
    """Token-mean negative log-likelihood of the completion tokens (SFT), with its metric.

    Args:
        logprobs: (B, T) log-probs of the target tokens (grad).
        loss_mask: (B, T) 1 on completion tokens.
        dp_size, batch_num_tokens: global normalisers, as for agg_loss's token-mean.

    Returns:
        loss: () scalar; metrics: sft_loss, this micro-batch's share of the global value.
    """
    loss = agg_loss(-logprobs, loss_mask, "token-mean", dp_size=dp_size, batch_num_tokens=batch_num_tokens)
    return loss, {"sft_loss": loss.item()}


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


def rollout_rejection_mask(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    loss_mask: Tensor,
    rollout_rs: RolloutRS,
    threshold: float,
    threshold_lower: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Masked importance sampling: which loss tokens survive a band on the trainer/sampler ratio.

    With log r_t = old_t - rollout_t over the loss tokens of a sequence (n of them), the statistic
    compared with [lower, upper] is
        token:     r_t per token                      (verl rollout_rs="token"; OpenRLHF icepop)
        sequence:  prod_t r_t = exp(sum_t log r_t)    (verl "sequence"; SkyRL product mask)
        geometric: exp(sum_t log r_t / n)             (verl "geometric"; OpenRLHF seq-mask-tis,
                                                       SkyRL geo_mask)
    and a token (token) or a whole sequence (the other two) outside the band leaves the loss.
    Comparisons are made in log space, so no ratio overflows (verl clamps the log at +-20).
    The caller removes rejected tokens from the loss mask, as verl and SkyRL do, so they count
    in no normaliser either; OpenRLHF instead zeroes their weight and keeps them in the token-mean
    denominator. Under a memento layout `old_logprobs` must be scored under that layout (the
    trainer's are), or the band would reject the attention mismatch the layout removes.

    Args:
        old_logprobs: (B, T) actor log-probs of the sampled tokens under the layout.
        rollout_logprobs: (B, T) the sampler's log-probs of the same tokens.
        loss_mask: (B, T) 1 where the token carries loss.
        rollout_rs: "token", "sequence" or "geometric".
        threshold: the upper bound (> 0).
        threshold_lower: the lower bound; None means 1 / threshold (verl's default).

    Returns:
        keep: (B, T) bool, loss tokens that stay (False wherever loss_mask is 0).
        metrics: mismatch/rs_masked_frac (loss tokens rejected), mismatch/rs_seq_masked_frac
            (sequences with a loss token that lost at least one), mismatch/rs_high_frac and
            mismatch/rs_low_frac (loss tokens whose statistic is above / below the band).
    """
    lower = 1.0 / threshold if threshold_lower is None else threshold_lower
    mask = loss_mask.bool()
    with torch.no_grad():
        log_ratio = torch.where(mask, old_logprobs - rollout_logprobs, torch.zeros((), dtype=old_logprobs.dtype))
        if rollout_rs == "token":
            stat = log_ratio
        elif rollout_rs == "sequence":
            stat = log_ratio.sum(-1, keepdim=True)
        elif rollout_rs == "geometric":
            stat = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        else:
            raise ValueError(f"rollout_rs must be one of {list(get_args(RolloutRS))}, got {rollout_rs!r}")
        stat = stat.expand_as(log_ratio)
        high = stat > math.log(threshold)
        low = stat < (math.log(lower) if lower > 0 else -math.inf)
        keep = mask & ~high & ~low
        has_tokens = mask.any(-1)
        lost_some = (mask & ~keep).any(-1)
        metrics = {
            "mismatch/rs_masked_frac": masked_mean((~keep).float(), mask).item(),
            "mismatch/rs_seq_masked_frac": lost_some.float().sum().item() / max(int(has_tokens.sum()), 1),
            "mismatch/rs_high_frac": masked_mean(high.float(), mask).item(),
            "mismatch/rs_low_frac": masked_mean(low.float(), mask).item(),
        }
    return keep, metrics
