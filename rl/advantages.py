"""Outcome advantages for GRPO-family training, and the reward shaping applied before them.

Pure torch, run on the controller once per step. Each sequence has one scalar reward; sequences
answering the same prompt share a group id (verl's `uid`). An estimator turns rewards into one
scalar per sequence and broadcasts it over the sequence's loss tokens:

    rewards (B,), group_ids (B,), loss_mask (B, T)  ->  advantages (B, T)

Semantics follow verl (verl/trainer/ppo/core_algos.py); differences are noted per function. Reward
shaping helpers (DAPO overlong penalty, KL in the reward) and the DAPO dynamic-sampling filter sit
here because they act on the same per-sequence rewards.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import Tensor

from rl.algo_config import AdvEstimator, KLType
from rl.losses import kl_penalty, masked_sum


def group_stats(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, unbiased std and size of each sample's group, broadcast back to the samples.

    Args:
        values: (B,) per-sequence scalars.
        group_ids: (B,) integer group ids, in any order and not necessarily contiguous.

    Returns:
        mean, std, count: each (B,), the statistics of the group each sample belongs to. std uses
        Bessel's correction like torch.std (verl); it is 0 for a group of one.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)  # inverse (B,)
    values = values.to(torch.float32) if not values.is_floating_point() else values
    counts_f = counts.to(values.dtype)  # (G,)
    sums = torch.zeros_like(counts_f).index_add_(0, inverse, values)
    mean = sums / counts_f  # (G,)
    sq_dev = torch.zeros_like(counts_f).index_add_(0, inverse, (values - mean[inverse]).square())
    std = (sq_dev / (counts_f - 1).clamp(min=1)).sqrt()  # (G,)
    return mean[inverse], std[inverse], counts[inverse]


def batch_whiten(values: Tensor, loss_mask: Tensor) -> Tensor:
    """Per-sequence scalars whitened with the token-weighted mean and unbiased std of the batch.

    Each sequence's value counts once per loss token (verl's masked_whiten over the broadcast
    (B, T) matrix), so this equals whitening that matrix; the variance has Bessel's correction
    over the N loss tokens and 1e-8 inside the square root, as in verl.

    Args:
        values: (B,) one scalar per sequence.
        loss_mask: (B, T) 1 on tokens that carry loss.

    Returns:
        (B,) (v_i - m) / sqrt(var + 1e-8); 0 everywhere when no token carries loss.
    """
    weights = loss_mask.to(values.dtype).sum(-1)  # (B,) loss tokens per sequence
    total = weights.sum()
    mean = (weights * values).sum() / total.clamp(min=1)
    var = (weights * (values - mean).square()).sum() / (total - 1).clamp(min=1)
    return torch.where(total > 0, (values - mean) / (var + 1e-8).sqrt(), 0.0)


def compute_advantages(
    adv_estimator: AdvEstimator,
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    norm_adv_by_std_in_grpo: bool = True,
    epsilon: float = 1e-6,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token advantages from per-sequence outcome rewards.

    With r_i the reward, mu / sigma / n the mean, unbiased std and size of i's group:
        grpo (verl compute_grpo_outcome_advantage): A_i = (r_i - mu) / (sigma + eps), or r_i - mu
            when norm_adv_by_std_in_grpo is False.
        dr_grpo (Dr.GRPO, arXiv 2503.20783; verl: grpo with norm_adv_by_std_in_grpo=False):
            A_i = r_i - mu.
        rloo (verl compute_rloo_outcome_advantage): A_i = r_i - mean of the other n - 1 rewards
            = n / (n - 1) (r_i - mu).
        reinforce_plus_plus_baseline (verl compute_reinforce_plus_plus_baseline_outcome_advantage,
            REINFORCE++-baseline arXiv 2501.03262; the MEMENTO paper's "batch-level advantage
            normalization", A.2.3): c_i = r_i - mu, then whitened over the whole batch's loss
            tokens as verl's masked_whiten does: A_i = (c_i - m) / sqrt(v + 1e-8) with
            m = sum_i n_i c_i / N and v = sum_i n_i (c_i - m)^2 / (N - 1), n_i the loss tokens of
            sequence i and N their total. So the scale is the batch's std, not the group's, and
            longer responses weigh more in m and v (token-level statistics, as in verl). A batch
            with fewer than two loss tokens gets v = 0 (verl raises).
    Groups of one have no baseline: as verl's loop implementations, grpo uses mu = 0, sigma = 1
    (A = r / (1 + eps)), dr_grpo A = r, rloo A = r (verl's rloo_vectorized gives 0 instead),
    reinforce_plus_plus_baseline c = r.
    All-equal rewards give A = 0 (sigma = 0, so the numerator is 0 and eps keeps it finite).
    A sequence with no loss tokens still counts in its group's statistics (as in verl) and gets
    advantage 0 everywhere.

    Args:
        adv_estimator: "grpo", "dr_grpo", "rloo" or "reinforce_plus_plus_baseline".
        rewards: (B,) one scalar reward per sequence (already shaped: overlong, KL in reward).
        group_ids: (B,) integer id of the prompt each sequence answers.
        loss_mask: (B, T) 1 on tokens that carry loss (verl's response_mask; prompt and
            engine-forced tokens 0).
        norm_adv_by_std_in_grpo: grpo only, divide by the group std.
        epsilon: added to the std (verl's default 1e-6).

    Returns:
        advantages: (B, T) float, A_i on sequence i's loss tokens and 0 elsewhere.
        metrics: advantages/mean, /max, /min over loss tokens (0 when there are none).
    """
    rewards = rewards.to(torch.float32) if not rewards.is_floating_point() else rewards
    mean, std, count = group_stats(rewards, group_ids)  # each (B,)
    single = count == 1
    if adv_estimator == "grpo" or adv_estimator == "dr_grpo":
        mean = torch.where(single, 0.0, mean)
        scalar = rewards - mean
        if adv_estimator == "grpo" and norm_adv_by_std_in_grpo:
            scalar = scalar / (torch.where(single, 1.0, std) + epsilon)
    elif adv_estimator == "rloo":
        n = count.to(rewards.dtype)
        scalar = torch.where(single, rewards, n / (n - 1).clamp(min=1) * (rewards - mean))
    elif adv_estimator == "reinforce_plus_plus_baseline":
        scalar = batch_whiten(rewards - torch.where(single, 0.0, mean), loss_mask)
    else:
        raise ValueError(f"adv_estimator must be one of {list(get_args(AdvEstimator))}, got {adv_estimator!r}")

    mask = loss_mask.bool()
    advantages = torch.where(mask, scalar.unsqueeze(-1), 0.0).to(rewards.dtype)  # (B, T)
    valid = advantages[mask]
    metrics = {
        "advantages/mean": valid.mean().item() if valid.numel() else 0.0,
        "advantages/max": valid.max().item() if valid.numel() else 0.0,
        "advantages/min": valid.min().item() if valid.numel() else 0.0,
    }
    return advantages, metrics


def filter_zero_variance_groups(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, dict[str, float]]:
    """DAPO dynamic sampling: which sequences to keep (verl `algorithm.filter_groups`).

    A group whose rewards are all equal (all solved or all failed) has zero advantage under every
    estimator here and only dilutes the batch; the trainer drops it and generates more. Groups of
    one are kept, as in verl. Equality is exact (max == min), not std == 0, so rewards such as
    0.1 repeated are not kept by a rounding residue.

    Args:
        rewards: (B,) per-sequence rewards (the filter metric; verl can also filter on `acc`).
        group_ids: (B,) integer group ids.

    Returns:
        keep: (B,) bool, False for sequences of zero-variance groups.
        metrics: filter_groups/dropped_groups, filter_groups/kept_groups (counts as floats).
    """
    rewards = rewards.to(torch.float32) if not rewards.is_floating_point() else rewards
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)  # (B,), (G,)
    num_groups = counts.numel()
    group_max = torch.full((num_groups,), -torch.inf, dtype=rewards.dtype).scatter_reduce(
        0, inverse, rewards, reduce="amax"
    )
    group_min = torch.full((num_groups,), torch.inf, dtype=rewards.dtype).scatter_reduce(
        0, inverse, rewards, reduce="amin"
    )
    keep_group = (group_max > group_min) | (counts == 1)  # (G,)
    dropped = int((~keep_group).sum())
    return keep_group[inverse], {
        "filter_groups/dropped_groups": float(dropped),
        "filter_groups/kept_groups": float(num_groups - dropped),
    }


def overlong_penalty(
    response_lengths: Tensor,
    max_response_length: int,
    overlong_buffer_len: int,
    penalty_factor: float,
) -> tuple[Tensor, dict[str, float]]:
    """DAPO soft overlong punishment (verl reward_manager/dapo.py), to add to the rewards.

    penalty = min(0, -(L - (L_max - L_buf)) / L_buf * penalty_factor): 0 up to L_max - L_buf
    tokens, then falling linearly to -penalty_factor at L_max.

    Args:
        response_lengths: (B,) generated tokens per response (engine-forced tokens included).
        max_response_length: L_max.
        overlong_buffer_len: L_buf, 0 < L_buf <= L_max.
        penalty_factor: the penalty at L_max.

    Returns:
        penalty: (B,) float, <= 0.
        metrics: overlong/frac (responses penalised), overlong/penalty_mean.
    """
    if not 0 < overlong_buffer_len <= max_response_length:
        raise ValueError(
            f"overlong_buffer.len must be in (0, max_response_length={max_response_length}], "
            f"got {overlong_buffer_len}"
        )
    exceed = response_lengths.to(torch.float32) - (max_response_length - overlong_buffer_len)
    penalty = (-exceed / overlong_buffer_len * penalty_factor).clamp(max=0.0)  # (B,)
    return penalty, {
        "overlong/frac": (penalty < 0).float().mean().item() if penalty.numel() else 0.0,
        "overlong/penalty_mean": penalty.mean().item() if penalty.numel() else 0.0,
    }


def kl_in_reward(
    rewards: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    loss_mask: Tensor,
    kl_coef: float,
    kl_penalty_type: KLType = "kl",
) -> tuple[Tensor, dict[str, float]]:
    """Subtract the KL to the reference from the reward (verl `algorithm.use_kl_in_reward`).

    verl shapes token rewards, r_t = score 1[t = last] - beta kl_t, and outcome estimators sum
    them, so the sequence reward becomes score - beta sum_t kl_t; this computes that sum directly.
    Differs from verl: kl_t counts only loss tokens (verl uses every response token), so
    engine-forced tokens, which the policy did not choose, are not penalised.

    Args:
        rewards: (B,) per-sequence scores.
        logprobs: (B, T) old-policy log-probs of the sampled tokens.
        ref_logprobs: (B, T) reference log-probs.
        loss_mask: (B, T) 1 on tokens that carry loss.
        kl_coef: beta (verl algorithm.kl_ctrl.kl_coef, fixed controller).
        kl_penalty_type: estimator name (verl algorithm.kl_penalty).

    Returns:
        shaped: (B,) rewards - kl_coef * per-sequence KL sum.
        metrics: kl_in_reward/kl_mean (per-token mean over loss tokens), kl_in_reward/coef.
    """
    mask = loss_mask.bool()
    with torch.no_grad():
        kl = kl_penalty(logprobs, ref_logprobs, kl_penalty_type)  # (B, T)
        seq_kl = masked_sum(kl, mask, dim=-1)  # (B,)
        token_mean = (seq_kl.sum() / mask.sum().clamp(min=1)).item()
    return rewards - kl_coef * seq_kl, {"kl_in_reward/kl_mean": token_mean, "kl_in_reward/coef": kl_coef}
