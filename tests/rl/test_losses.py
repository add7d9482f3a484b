"""Policy losses, aggregation, KL, rollout mismatch and the algorithm config.

Hand-computed values carry their arithmetic in a comment; `_verl_*` helpers restate verl's formulas
(core_algos.py) in our own code as slow references on finite inputs.
"""

import math

import pytest
import torch

from rl.algo_config import AlgoConfig
from rl.losses import (
    METRIC_AGGREGATION,
    actor_loss,
    agg_loss,
    combine_micro_batches,
    group_normalisers,
    kl_penalty,
    policy_loss,
    reduce_metrics,
    rollout_mismatch,
    rollout_rejection_mask,
    sft_loss,
)

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "group-mean-token-mean"]
CLIP = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28}


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


def _random_batch(seed: int, b: int = 5, t: int = 7, spread: float = 0.4):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=gen) * 3
    logprobs = (old + spread * torch.randn(b, t, generator=gen)).requires_grad_()
    advantages = torch.randn(b, 1, generator=gen).expand(b, t).contiguous()
    mask = (torch.rand(b, t, generator=gen) > 0.25).float()
    mask[0] = 1.0
    return logprobs, old, advantages, mask


# ---------------------------------------------------------------- aggregation


def test_agg_loss_modes_hand_values():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # row 2 empty, 99s never count
    # token-mean: (1 + 2 + 3 + 4) / 4 tokens = 2.5
    assert agg_loss(loss_mat, mask, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-mean: (6/3 + 4/1) / 2 non-empty sequences = 3
    assert agg_loss(loss_mat, mask, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-mean-token-sum: (6 + 4) / 2 = 5
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum").item() == pytest.approx(5.0)
    # seq-mean-token-sum-norm: (6 + 4) / 2 / 10 = 0.5; default divisor is the width T = 3
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", loss_scale_factor=10).item() == pytest.approx(0.5)
    assert agg_loss(loss_mat, mask, "seq-mean-token-sum-norm").item() == pytest.approx(5.0 / 3)


def test_group_total_normalization_hand_values():
    loss_mat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [6.0, 8.0, 99.0], [99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    group_ids = torch.tensor([0, 0, 1, 2])  # group 2 has no loss token
    group_tokens, num_groups = group_normalisers(mask, group_ids)
    assert group_tokens.tolist() == [4, 4, 2, 0] and num_groups == 2
    # group 0: (1 + 2 + 3 + 4) / 4 = 2.5; group 1: (6 + 8) / 2 = 7; mean over 2 groups = 4.75
    got = agg_loss(loss_mat, mask, "group-mean-token-mean", group_num_tokens=group_tokens, num_groups=num_groups)
    assert got.item() == pytest.approx(4.75)
    # differs from token-mean 24 / 6 = 4 and seq-mean-token-mean (2 + 4 + 7) / 3 = 4.333
    assert agg_loss(loss_mat, mask, "token-mean").item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="group_num_tokens and num_groups"):
        agg_loss(loss_mat, mask, "group-mean-token-mean")


def _group_total_reference(mat, mask, group_ids):
    """Loops: per group, its summed loss over its total loss tokens; then the mean over groups."""
    per_group = {}
    for i, g in enumerate(group_ids.tolist()):
        total, tokens = per_group.get(g, (0.0, 0))
        row = [float(mat[i, t]) for t in range(mat.shape[1]) if mask[i, t]]
        per_group[g] = (total + sum(row), tokens + len(row))
    means = [total / tokens for total, tokens in per_group.values() if tokens]
    return sum(means) / len(means)


@pytest.mark.parametrize("seed", range(3))
def test_group_total_normalization_matches_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    mat = torch.randn(11, 7, generator=gen)
    mask = (torch.rand(11, 7, generator=gen) > 0.4).float()
    mask[seed] = 0
    group_ids = torch.randint(0, 4, (11,), generator=gen)
    group_tokens, num_groups = group_normalisers(mask, group_ids)
    got = agg_loss(mat, mask, "group-mean-token-mean", group_num_tokens=group_tokens, num_groups=num_groups)
    assert got.item() == pytest.approx(_group_total_reference(mat, mask, group_ids), rel=1e-5)


def _group_kwargs(mask, group_ids=None):
    group_ids = torch.arange(mask.shape[0]) // 2 if group_ids is None else group_ids
    group_tokens, num_groups = group_normalisers(mask, group_ids)
    return {"group_num_tokens": group_tokens, "num_groups": num_groups}


@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_all_masked_is_zero_with_finite_grad(mode):
    x = torch.full((2, 3), float("nan"), requires_grad=True)
    loss = agg_loss(x * 2, torch.zeros(2, 3), mode, **_group_kwargs(torch.zeros(2, 3)))
    assert loss.item() == 0.0
    assert torch.equal(_grad(loss, x), torch.zeros(2, 3))


@pytest.mark.parametrize("mode", MODES)
def test_sharded_loss_with_global_normaliser_equals_global_mean(mode):
    # 8 sequences over 2 data-parallel ranks x 2 micro-batches of different widths and lengths
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=gen, requires_grad=True)
    mask = (torch.rand(8, 6, generator=gen) > 0.4).float()
    mask[5] = 0  # an empty sequence
    weight = torch.rand(8, 6, generator=gen)
    # groups of 3, 3 and 2 rows: every group is split across micro-batches, group 1 across ranks
    groups = _group_kwargs(mask, torch.tensor([0, 0, 1, 0, 1, 2, 1, 2]))
    kwargs = {"loss_scale_factor": 6.0}  # a constant, as AlgoConfig requires for -norm
    global_loss = agg_loss(x.square() * weight, mask, mode, **kwargs, **groups)

    n_tokens = mask.sum()
    n_seqs = (mask.sum(-1) > 0).sum()
    shards = [[(0, 3, 6), (3, 4, 4)], [(4, 7, 5), (7, 8, 6)]]  # (row start, row end, padded width)
    rank_losses = []
    for rank in shards:
        micro = [
            agg_loss(
                (x.square() * weight)[a:b, :w],
                mask[a:b, :w] * (mask[a:b, w:].sum() == 0),  # widths only cut padding
                mode,
                dp_size=2,
                batch_num_tokens=n_tokens,
                global_batch_size=n_seqs,
                group_num_tokens=groups["group_num_tokens"][a:b],
                num_groups=groups["num_groups"],
                **kwargs,
            )
            for a, b, w in rank
        ]
        rank_losses.append(sum(micro))  # gradient accumulation sums micro-batch losses
    sharded = torch.stack(rank_losses).mean()  # DDP averages over ranks
    torch.testing.assert_close(sharded, global_loss)
    torch.testing.assert_close(_grad(sharded, x), _grad(global_loss, x))


def test_sharded_token_mean_without_global_count_is_not_the_global_mean():
    x = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    local = (agg_loss(x[:1], mask[:1], "token-mean") + agg_loss(x[1:], mask[1:], "token-mean")) / 2
    # local means (1 + 4) / 2 = 2.5, the global token mean is 7 / 4 = 1.75
    assert local.item() == pytest.approx(2.5)
    assert agg_loss(x, mask, "token-mean").item() == pytest.approx(1.75)


def test_agg_loss_needs_global_counts_when_data_parallel():
    with pytest.raises(ValueError, match="batch_num_tokens"):
        agg_loss(torch.ones(1, 2), torch.ones(1, 2), "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        agg_loss(torch.ones(1, 2), torch.ones(1, 2), "seq-mean-token-mean", dp_size=2)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(torch.ones(1, 2), torch.ones(1, 2), "token-sum")


# ---------------------------------------------------------------- PPO clip


def test_ppo_clip_higher_and_dual_clip_hand_values():
    # (A, ratio) per token; eps_low 0.2, eps_high 0.28, c 3
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 2.0]])
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 5.0, 5.0]])
    logprobs = ratio.log().requires_grad_()
    loss_mat, metrics = policy_loss(
        "ppo", logprobs, torch.zeros(1, 6), advantages, torch.ones(1, 6), **CLIP, clip_ratio_c=3.0
    )
    # t0 max(-1.5, -1.28) = -1.28 (clip)   t1 max(-0.5, -0.8) = -0.5
    # t2 max(1.5, 1.28) = 1.5              t3 max(0.5, 0.8) = 0.8 (clip)
    # t4 max(5, 1.28) = 5 -> dual min(5, 3) = 3     t5 A>0: max(-10, -2.56) = -2.56 (clip, no dual)
    torch.testing.assert_close(loss_mat, torch.tensor([[-1.28, -0.5, 1.5, 0.8, 3.0, -2.56]]))
    assert metrics["pg_clipfrac"] == pytest.approx(3 / 6)
    assert metrics["pg_clipfrac_lower"] == pytest.approx(1 / 6)
    assert metrics["ppo_kl"] == pytest.approx(-sum(math.log(r) for r in [1.5, 0.5, 1.5, 0.5, 5.0, 5.0]) / 6)
    # gradient -A r flows only through unclipped tokens t1 and t2
    torch.testing.assert_close(_grad(loss_mat.sum(), logprobs), torch.tensor([[0.0, -0.5, 1.5, 0.0, 0.0, 0.0]]))


def test_dual_clip_applies_only_to_negative_advantages():
    ratio = torch.tensor([[10.0, 10.0]])
    loss_mat, metrics = policy_loss(
        "ppo", ratio.log(), torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2), **CLIP
    )
    # A=-1: min(max(10, 1.28), 3) = 3; A=+1: max(-10, -1.28) = -1.28, never lowered to -3
    torch.testing.assert_close(loss_mat, torch.tensor([[3.0, -1.28]]))
    assert metrics["pg_clipfrac_lower"] == pytest.approx(0.5)


def _verl_vanilla(logprobs, old, advantages, low, high, c):
    log_ratio = torch.clamp(logprobs - old, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    first = -advantages * ratio
    second = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    clipped = torch.maximum(first, second)
    return torch.where(advantages < 0, torch.minimum(-advantages * c, clipped), clipped)


def _verl_gspo(logprobs, old, advantages, mask, low, high):
    seq = ((logprobs - old) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    log_s = torch.clamp(logprobs - logprobs.detach() + seq.detach().unsqueeze(-1), max=10.0)
    s = torch.exp(log_s)
    return torch.maximum(-advantages * s, -advantages * torch.clamp(s, 1 - low, 1 + high))


def _verl_cispo(logprobs, old, advantages, low, high):
    ratio = torch.exp(torch.clamp(logprobs - old, -20.0, 20.0))
    return -torch.clamp(ratio, 1 - low, 1 + high).detach() * advantages * logprobs


def _verl_agg(mat, mask, mode):
    # verl agg_loss on one rank: masked sums divided by local counts
    if mode == "token-mean":
        return (mat * mask).sum() / mask.sum()
    seq_tokens = mask.sum(-1)
    nonempty = (seq_tokens > 0).float()
    per_seq = (mat * mask).sum(-1) / (seq_tokens + 1e-8) if mode == "seq-mean-token-mean" else (mat * mask).sum(-1)
    return (per_seq * nonempty).sum() / nonempty.sum()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "mode,agg",
    [("ppo", "token-mean"), ("ppo", "seq-mean-token-sum"), ("cispo", "token-mean"), ("gspo", "seq-mean-token-mean")],
)
def test_policy_losses_match_verl_reference(seed, mode, agg):
    logprobs, old, advantages, mask = _random_batch(seed)
    loss_mat, _ = policy_loss(mode, logprobs, old, advantages, mask, **CLIP, clip_ratio_c=3.0)
    ours = agg_loss(loss_mat, mask, agg)
    if mode == "ppo":
        ref_mat = _verl_vanilla(logprobs, old, advantages, 0.2, 0.28, 3.0)
    elif mode == "cispo":
        ref_mat = _verl_cispo(logprobs, old, advantages, 0.2, 0.28)
    else:
        ref_mat = _verl_gspo(logprobs, old, advantages, mask, 0.2, 0.28)
    ref = _verl_agg(ref_mat, mask, agg)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(_grad(ours, logprobs), _grad(ref, logprobs))


# ---------------------------------------------------------------- CISPO


def test_cispo_gradient_is_clipped_weight_times_advantage_times_grad_logp():
    logprobs, old, advantages, mask = _random_batch(1, spread=0.6)
    loss_mat, metrics = policy_loss("cispo", logprobs, old, advantages, mask, **CLIP)
    loss = agg_loss(loss_mat, mask, "token-mean")
    ratio = (logprobs.detach() - old).exp()
    weight = ratio.clamp(0.8, 1.28)
    # d/dlogp of -sg(w) A logp / N
    expected = -weight * advantages * mask / mask.sum()
    torch.testing.assert_close(_grad(loss, logprobs), expected)
    clipped = ((ratio < 0.8) | (ratio > 1.28)).float()
    assert clipped[mask.bool()].sum() > 0  # clipped tokens exist and still receive gradient
    assert metrics["pg_clipfrac"] == pytest.approx((clipped * mask).sum().item() / mask.sum().item())
    assert metrics["pg_clipfrac_lower"] == 0.0


# ---------------------------------------------------------------- GSPO


def test_gspo_on_single_token_sequences_equals_ppo_without_dual_clip():
    logprobs, old, advantages, _ = _random_batch(2, b=6, t=1, spread=0.5)
    mask = torch.ones(6, 1)
    gspo, _ = policy_loss("gspo", logprobs, old, advantages, mask, **CLIP)
    ppo, _ = policy_loss("ppo", logprobs, old, advantages, mask, **CLIP, clip_ratio_c=1e9)
    torch.testing.assert_close(gspo, ppo)
    torch.testing.assert_close(_grad(gspo.sum(), logprobs), _grad(ppo.sum(), logprobs))


def test_gspo_gradient_is_sequence_ratio_times_mean_token_gradient():
    # row 0: mean log-ratio 0.05 (s inside the band); row 1: mean 0.5, A > 0 -> clipped at 1.28
    old = torch.zeros(2, 4)
    logprobs = torch.tensor([[0.1, 0.0, 0.1, 0.0], [0.5, 0.5, 0.5, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    advantages = torch.tensor([[2.0], [1.0]]).expand(2, 4)
    loss_mat, metrics = policy_loss("gspo", logprobs, old, advantages, mask, **CLIP)
    loss = agg_loss(loss_mat, mask, "seq-mean-token-mean")
    # loss = mean_i mean_t -A_i s_i: row 0 -2 e^0.05, row 1 -1.28 -> (-2.102542 - 1.28) / 2
    assert loss.item() == pytest.approx((-2 * math.exp(0.05) - 1.28) / 2, rel=1e-6)
    # grad row 0: -A s / |y| / |S| = -2 e^0.05 / 4 / 2 on each token; row 1 clipped -> 0
    expected = torch.tensor([[-2 * math.exp(0.05) / 8] * 4, [0.0] * 4])
    torch.testing.assert_close(_grad(loss, logprobs), expected)
    assert metrics["pg_clipfrac"] == pytest.approx(3 / 7)


# ---------------------------------------------------------------- shared invariants


def test_on_policy_all_losses_give_the_reinforce_gradient():
    # logp == old: ratio 1, nothing clipped; each mode's gradient is -A grad(logp) under its aggregation
    _, old, advantages, mask = _random_batch(3)
    grads = {}
    for mode, agg in [("ppo", "token-mean"), ("cispo", "token-mean"), ("gspo", "seq-mean-token-mean")]:
        logprobs = old.clone().requires_grad_()
        loss_mat, _ = policy_loss(mode, logprobs, old, advantages, mask, **CLIP)
        grads[mode] = _grad(agg_loss(loss_mat, mask, agg), logprobs)
    torch.testing.assert_close(grads["ppo"], -advantages * mask / mask.sum())
    torch.testing.assert_close(grads["cispo"], grads["ppo"])
    n_seq = (mask.sum(-1) > 0).sum()
    torch.testing.assert_close(grads["gspo"], -advantages * mask / mask.sum(-1, keepdim=True).clamp(min=1) / n_seq)


@pytest.mark.parametrize("mode", ["ppo", "cispo", "gspo"])
def test_masked_tokens_carry_no_loss_even_with_garbage_values(mode):
    # prompt / padding / engine-forced positions may hold -inf, nan or huge values
    logprobs, old, advantages, mask = _random_batch(4)
    mask[1, 2] = 0
    mask[2, :] = 0
    bad = ~mask.bool()
    dirty_lp = torch.where(bad, torch.tensor(float("-inf")), logprobs.detach()).requires_grad_()
    dirty_old = torch.where(bad, torch.tensor(float("nan")), old)
    dirty_adv = torch.where(bad, torch.tensor(1e30), advantages)
    cfg = AlgoConfig(
        loss_mode=mode,
        loss_agg_mode="seq-mean-token-mean",
        use_kl_loss=True,
        kl_loss_type="k3",
        entropy_coeff=0.01,
    )
    ref = torch.where(bad, torch.tensor(float("nan")), old - 0.1)
    entropy = torch.where(bad, torch.tensor(float("nan")), torch.ones_like(old))
    dirty, _ = actor_loss(cfg, dirty_lp, dirty_old, dirty_adv, mask, ref_logprobs=ref, entropy=entropy)
    clean_lp = logprobs.detach().clone().requires_grad_()
    clean, _ = actor_loss(cfg, clean_lp, old, advantages, mask, ref_logprobs=old - 0.1, entropy=torch.ones_like(old))
    torch.testing.assert_close(dirty, clean)
    grad = _grad(dirty, dirty_lp)
    assert torch.isfinite(grad).all() and (grad[bad] == 0).all()
    torch.testing.assert_close(grad, _grad(clean, clean_lp))


def test_policy_loss_all_masked_is_finite():
    logprobs, old, advantages, _ = _random_batch(5)
    for mode in ["ppo", "cispo", "gspo"]:
        loss_mat, metrics = policy_loss(mode, logprobs, old, advantages, torch.zeros(5, 7), **CLIP)
        assert (loss_mat == 0).all()
        assert all(math.isfinite(v) for v in metrics.values())


def test_unknown_loss_mode_is_named():
    with pytest.raises(ValueError, match="loss_mode.*'vanilla'"):
        policy_loss("vanilla", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), **CLIP)


# ---------------------------------------------------------------- KL, entropy, actor loss


def test_kl_estimators_hand_values_and_verl_aliases():
    logprobs = torch.tensor([-1.0, -2.0, -30.0])
    ref = torch.tensor([-2.0, -1.0, 0.0])
    # k1 = logp - ref; k2 = (logp - ref)^2 / 2
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([1.0, -1.0, -30.0]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([0.5, 0.5, 450.0]))
    # k3 with d = ref - logp: d=-1 -> e^-1 + 1 - 1 = 0.367879; d=1 -> e - 2 = 0.718282;
    # d=30 -> clamped to 20 -> e^20 - 21, then clamped to 10
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), torch.tensor([math.exp(-1), math.e - 2, 10.0]))
    for ours, verl in [("k1", "kl"), ("k2", "mse"), ("k3", "low_var_kl")]:
        torch.testing.assert_close(kl_penalty(logprobs, ref, ours), kl_penalty(logprobs, ref, verl))
    with pytest.raises(ValueError, match="'full'"):
        kl_penalty(logprobs, ref, "full")


def test_actor_loss_combines_terms_and_tis_weights_only_the_policy_term():
    old = torch.full((2, 3), -1.0)
    logprobs = old.clone().requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    cfg = AlgoConfig(entropy_coeff=0.01, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k1")
    kwargs = {"ref_logprobs": old - 0.5, "entropy": torch.full((2, 3), 2.0)}
    loss, metrics = actor_loss(cfg, logprobs, old, torch.ones(2, 3), mask, **kwargs)
    # on-policy ppo with A=1: pg -1 per token; entropy 2; k1 = 0.5 -> -1 - 0.01 * 2 + 0.1 * 0.5 = -0.97
    assert loss.item() == pytest.approx(-0.97)
    assert metrics["pg_loss"] == pytest.approx(-1.0)
    assert metrics["entropy"] == pytest.approx(2.0)
    assert metrics["kl_loss"] == pytest.approx(0.5)
    weighted, _ = actor_loss(cfg, logprobs, old, torch.ones(2, 3), mask, is_weights=torch.full((2, 3), 2.0), **kwargs)
    # only the policy term doubles: -2 - 0.02 + 0.05 = -1.97
    assert weighted.item() == pytest.approx(-1.97)


def test_actor_loss_requires_reference_and_entropy_when_configured():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logprobs"):
        actor_loss(AlgoConfig(use_kl_loss=True), x, x, x, torch.ones(1, 2))
    with pytest.raises(ValueError, match="entropy"):
        actor_loss(AlgoConfig(entropy_coeff=0.01), x, x, x, torch.ones(1, 2))


# ---------------------------------------------------------------- rollout mismatch / TIS


def test_truncated_importance_weights_and_mismatch_metrics():
    old = torch.zeros(1, 4)
    rollout = torch.tensor([[0.0, -1.0, math.log(2.0), -50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # last token forced: ignored
    rollout.requires_grad_()
    weights, metrics = rollout_mismatch(old, rollout, mask, tis_imp_ratio_cap=2.0)
    # r = exp(old - rollout) = [1, e, 0.5]; capped at 2 -> [1, 2, 0.5]; masked token -> 1
    torch.testing.assert_close(weights, torch.tensor([[1.0, 2.0, 0.5, 1.0]]))
    assert not weights.requires_grad
    assert metrics["mismatch/abs_diff_mean"] == pytest.approx((0 + 1 + math.log(2)) / 3)
    assert metrics["mismatch/abs_diff_max"] == pytest.approx(1.0)
    # k1 = mean(rollout - old) = (0 - 1 + log 2) / 3; k3 = mean(r - 1 - log r)
    assert metrics["mismatch/k1"] == pytest.approx((-1 + math.log(2)) / 3)
    assert metrics["mismatch/k3"] == pytest.approx((0 + (math.e - 2) + (0.5 - 1 + math.log(2))) / 3)
    assert metrics["mismatch/ratio_max"] == pytest.approx(math.e)
    assert metrics["mismatch/ratio_min"] == pytest.approx(0.5)
    assert metrics["mismatch/tis_capped_frac"] == pytest.approx(1 / 3)
    none, only_metrics = rollout_mismatch(old, rollout, mask)
    assert none is None and "mismatch/tis_capped_frac" not in only_metrics


def test_mismatch_metrics_with_no_loss_tokens_are_finite():
    _, metrics = rollout_mismatch(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), 2.0)
    assert all(math.isfinite(v) for v in metrics.values())


# ---------------------------------------------------------------- config


def test_config_defaults_and_paper_preset_are_valid():
    AlgoConfig()
    # the MEMENTO RL setting: CISPO eps 0.2 / 0.2, KL 0.001
    AlgoConfig(loss_mode="cispo", clip_ratio_low=0.2, clip_ratio_high=0.2, use_kl_loss=True, kl_loss_coef=0.001)
    AlgoConfig(loss_mode="gspo", loss_agg_mode="seq-mean-token-mean")
    AlgoConfig(loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=4096, adv_estimator="dr_grpo")
    AlgoConfig(tis_imp_ratio_cap=2.0, clip_ratio_high=0.28, kl_loss_type="k3", kl_penalty="k1")
    paper = AlgoConfig(adv_estimator="reinforce_plus_plus_baseline", loss_agg_mode="group-mean-token-mean",
                       rollout_rs="geometric", rollout_rs_threshold=1.01, rollout_rs_threshold_lower=0.99)
    assert paper.corrects_rollout and not AlgoConfig().corrects_rollout
    assert AlgoConfig(rollout_rs="token", rollout_rs_threshold=2.0).corrects_rollout


@pytest.mark.parametrize(
    "values,match",
    [
        ({"adv_estimator": "gae"}, "adv_estimator must be one of"),
        ({"loss_mode": "vanilla"}, "loss_mode must be one of"),
        ({"loss_agg_mode": "token-sum"}, "loss_agg_mode must be one of"),
        ({"kl_penalty": "full"}, "kl_penalty must be one of"),
        ({"clip_ratio_low": 1.5}, "clip_ratio_low must be in"),
        ({"clip_ratio_high": -0.1}, "clip_ratio_high must be >= 0"),
        ({"clip_ratio_c": 1.0}, "clip_ratio_c must be > 1"),
        ({"loss_mode": "gspo"}, "loss_agg_mode must be 'seq-mean-token-mean'"),
        ({"loss_agg_mode": "seq-mean-token-sum-norm"}, "loss_scale_factor must be set"),
        ({"kl_loss_coef": -0.1}, "kl_loss_coef must be >= 0"),
        ({"tis_imp_ratio_cap": -1.0}, "tis_imp_ratio_cap must be > 0"),
        ({"rollout_rs": "seq-mask-tis", "rollout_rs_threshold": 2.0}, "rollout_rs must be one of"),
        ({"rollout_rs": "token"}, "rollout_rs_threshold must be > 0"),
        ({"rollout_rs": "token", "rollout_rs_threshold": 0.0}, "rollout_rs_threshold must be > 0"),
        ({"rollout_rs_threshold": 2.0}, "rollout_rs is null"),
        ({"rollout_rs": "geometric", "rollout_rs_threshold": 1.1, "rollout_rs_threshold_lower": 1.2},
         "rollout_rs_threshold_lower must be in"),
    ],
)
def test_config_rejects_bad_values_naming_the_key(values, match):
    with pytest.raises(ValueError, match=match):
        AlgoConfig(**values)


# ---------------------------------------------------------------- masked importance sampling


def _rejection_batch():
    # log r = old - rollout; row 0: r = [1, e^0.5 = 1.65, e^-1 = 0.37, (forced) 2.5]; row 1: r = 1.3 x 3
    log_r = torch.tensor([[0.0, 0.5, -1.0, math.log(2.5)], [math.log(1.3)] * 3 + [0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    return log_r, torch.zeros(2, 4), mask


def test_token_rejection_hand_values():
    old, rollout, mask = _rejection_batch()
    keep, metrics = rollout_rejection_mask(old, rollout, mask, "token", 2.0)
    # band [1/2, 2]: only r = 0.37 falls out; the forced token is never kept
    assert keep.tolist() == [[True, True, False, False], [True, True, True, False]]
    assert metrics["mismatch/rs_masked_frac"] == pytest.approx(1 / 6)
    assert metrics["mismatch/rs_seq_masked_frac"] == pytest.approx(1 / 2)
    assert metrics["mismatch/rs_low_frac"] == pytest.approx(1 / 6)
    assert metrics["mismatch/rs_high_frac"] == 0.0


def test_sequence_rejection_uses_the_product_of_ratios():
    old, rollout, mask = _rejection_batch()
    keep, metrics = rollout_rejection_mask(old, rollout, mask, "sequence", 2.0)
    # row 0: exp(0 + 0.5 - 1) = 0.61 in [0.5, 2]; row 1: 1.3^3 = 2.197 > 2 -> whole row out
    assert keep.tolist() == [[True, True, True, False], [False, False, False, False]]
    assert metrics["mismatch/rs_masked_frac"] == pytest.approx(3 / 6)
    assert metrics["mismatch/rs_high_frac"] == pytest.approx(3 / 6)


def test_geometric_rejection_uses_the_mean_log_ratio():
    old, rollout, mask = _rejection_batch()
    keep, metrics = rollout_rejection_mask(old, rollout, mask, "geometric", 2.0)
    # row 0: exp(-0.5 / 3) = 0.846; row 1: 1.3 -> both inside [0.5, 2]
    assert keep.tolist() == [[True, True, True, False], [True, True, True, False]]
    assert metrics["mismatch/rs_masked_frac"] == 0.0
    keep, metrics = rollout_rejection_mask(old, rollout, mask, "geometric", 2.0, threshold_lower=0.9)
    # lower bound 0.9 > 0.846 drops row 0
    assert keep.tolist() == [[False, False, False, False], [True, True, True, False]]
    assert metrics["mismatch/rs_low_frac"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="rollout_rs must be one of"):
        rollout_rejection_mask(old, rollout, mask, "product", 2.0)


def test_rejection_with_no_loss_tokens_keeps_nothing_and_is_finite():
    keep, metrics = rollout_rejection_mask(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3), "geometric", 2.0)
    assert not keep.any() and all(math.isfinite(v) for v in metrics.values())


def _verl_rejection(log_ratio, mask, mode, upper, lower):
    # verl compute_rollout_rejection_mask: clamp the log to +-20, exp, compare the weight
    mask = mask.float()
    if mode == "token":
        w = torch.exp(log_ratio.clamp(-20, 20))
    elif mode == "sequence":
        w = torch.exp((log_ratio * mask).sum(-1, keepdim=True).clamp(-20, 20)).expand_as(log_ratio)
    else:
        mean = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
        w = torch.exp(mean.clamp(-20, 20)).expand_as(log_ratio)
    return mask * ((w >= lower) & (w <= upper)).float()


def _skyrl_rejection(log_ratio, mask, mode, upper, lower):
    # SkyRL compute_token_mask / compute_sequence_mask (geometric, product), times the loss mask
    mask = mask.float()
    if mode == "token":
        r = torch.exp(log_ratio.clamp(-20, 20))
        return mask * ((r >= lower) & (r <= upper)).float()
    total = (log_ratio * mask).sum(-1, keepdim=True)
    stat = total / mask.sum(-1, keepdim=True).clamp(min=1) if mode == "geometric" else total
    r = torch.exp(stat.clamp(-20, 20))
    return mask * (~(r > upper) & ~(r < lower)).float()


@pytest.mark.parametrize("mode", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("seed", range(3))
def test_rejection_matches_verl_and_skyrl(mode, seed):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(6, 9, generator=gen) * 2
    rollout = old + 0.25 * torch.randn(6, 9, generator=gen)
    mask = (torch.rand(6, 9, generator=gen) > 0.2).float()
    mask[:, 0] = 1  # verl's metrics need a token per row
    upper, lower = {"token": (1.3, 0.8), "sequence": (1.5, 0.6), "geometric": (1.06, 0.94)}[mode]
    keep, _ = rollout_rejection_mask(old, rollout, mask, mode, upper, lower)
    assert 0 < keep.sum() < mask.sum()  # the band bites on these batches
    log_ratio = old - rollout
    assert torch.equal(keep.float(), _verl_rejection(log_ratio, mask, mode, upper, lower))
    assert torch.equal(keep.float(), _skyrl_rejection(log_ratio, mask, mode, upper, lower))


@pytest.mark.parametrize("openrlhf_type", ["icepop", "seq-mask-tis"])
def test_rejection_with_tis_matches_openrlhf_up_to_its_denominator(openrlhf_type):
    """OpenRLHF zeroes the weight of rejected tokens but keeps them in the token-mean denominator;
    we drop them from the loss mask. The two losses differ exactly by N_kept / N."""
    logprobs, old, advantages, mask = _random_batch(7, b=6, t=8)
    rollout = old + 0.3 * torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    low, high = 0.8, 1.25
    log_ratio = old - rollout
    ppo_mat, _ = policy_loss("ppo", logprobs, old, advantages, mask, **CLIP, clip_ratio_c=1e9)
    if openrlhf_type == "icepop":  # token band; weight r inside it
        r = torch.exp(log_ratio)
        theirs_w = r * ((r >= low) & (r <= high))
        keep, _ = rollout_rejection_mask(old, rollout, mask, "token", high, low)
        weights, _ = rollout_mismatch(old, rollout, mask, tis_imp_ratio_cap=high)  # r <= high where kept
    else:  # geometric-mean band per sequence; raw token weight r inside it
        geo = torch.exp((log_ratio * mask).sum(-1) / mask.sum(-1))
        theirs_w = ((geo >= low) & (geo <= high)).unsqueeze(-1) * torch.exp(log_ratio)
        keep, _ = rollout_rejection_mask(old, rollout, mask, "geometric", high, low)
        weights, _ = rollout_mismatch(old, rollout, mask, tis_imp_ratio_cap=1e9)  # uncapped
    theirs = (ppo_mat * theirs_w * mask).sum() / mask.sum()
    ours = agg_loss(ppo_mat * weights, keep, "token-mean")
    assert 0 < keep.sum() < mask.sum()
    torch.testing.assert_close(ours * keep.sum() / mask.sum(), theirs)


# ---------------------------------------------------------------- metric aggregation


@pytest.mark.parametrize("mode,agg", [("ppo", "token-mean"), ("cispo", "group-mean-token-mean"),
                                      ("gspo", "seq-mean-token-mean")])
def test_every_metric_the_losses_emit_has_a_declared_aggregation(mode, agg):
    logprobs, old, advantages, mask = _random_batch(0)
    cfg = AlgoConfig(loss_mode=mode, loss_agg_mode=agg, use_kl_loss=True, entropy_coeff=0.01)
    _, metrics = actor_loss(cfg, logprobs, old, advantages, mask, ref_logprobs=old - 0.1,
                            entropy=torch.ones_like(old), **_group_kwargs(mask))
    _, sft_metrics = sft_loss(logprobs, mask)
    emitted = {*metrics, *sft_metrics, "grad_norm", "lr"}  # the last two: the actor's own per step
    assert emitted <= set(METRIC_AGGREGATION), emitted - set(METRIC_AGGREGATION)


def test_an_undeclared_metric_is_refused_by_name():
    with pytest.raises(KeyError, match="'pg_loss_v2' has no declared aggregation"):
        combine_micro_batches([({"pg_loss_v2": 1.0}, 1.0)], world_size=1)
    with pytest.raises(KeyError, match="'pg_loss_v2'"):
        reduce_metrics([{"pg_loss_v2": 1.0}])


def test_metric_aggregation_hand_values():
    # one rank of two; its two micro-batches hold a quarter of the mini-batch's tokens each
    rank0 = combine_micro_batches([({"pg_loss": 1.0, "pg_clipfrac": 0.4, "ppo_ratio_max": 1.5}, 0.25),
                                   ({"pg_loss": 2.0, "pg_clipfrac": 0.8, "ppo_ratio_max": 1.2}, 0.25)], world_size=2)
    # share: 1 + 2 = 3; token_mean: (0.4 * 0.25 + 0.8 * 0.25) * 2 ranks = 0.6; max: 1.5
    assert rank0 == pytest.approx({"pg_loss": 3.0, "pg_clipfrac": 0.6, "ppo_ratio_max": 1.5})
    rank1 = {"pg_loss": 1.0, "pg_clipfrac": 0.2, "ppo_ratio_max": 2.0}
    # over ranks: means (3 + 1) / 2, (0.6 + 0.2) / 2; the max of maxima
    assert reduce_metrics([rank0, rank1]) == pytest.approx({"pg_loss": 2.0, "pg_clipfrac": 0.4, "ppo_ratio_max": 2.0})
    # a rank with no loss token reports nothing: it counts as 0 in the means, not in the max
    assert reduce_metrics([rank1, {}]) == pytest.approx({"pg_loss": 0.5, "pg_clipfrac": 0.1, "ppo_ratio_max": 2.0})


@pytest.mark.parametrize("mode", ["ppo", "cispo"])
def test_micro_batched_metrics_equal_the_global_batch_metrics(mode):
    """Split over 2 ranks x 2 micro-batches, the combined metrics equal one call on the batch."""
    logprobs, old, advantages, mask = _random_batch(8, b=8, t=6, spread=0.5)
    cfg = AlgoConfig(loss_mode=mode, use_kl_loss=True, entropy_coeff=0.01)
    extra = {"ref_logprobs": old - 0.2, "entropy": torch.rand(8, 6, generator=torch.Generator().manual_seed(2))}
    _, want = actor_loss(cfg, logprobs, old, advantages, mask, **extra)
    n = mask.sum()
    ranks = []
    for rows in ([slice(0, 3), slice(3, 4)], [slice(4, 7), slice(7, 8)]):
        per_micro = []
        for r in rows:
            _, metrics = actor_loss(cfg, logprobs[r], old[r], advantages[r], mask[r], dp_size=2, batch_num_tokens=n,
                                    ref_logprobs=extra["ref_logprobs"][r], entropy=extra["entropy"][r])
            per_micro.append((metrics, (mask[r].sum() / n).item()))
        ranks.append(combine_micro_batches(per_micro, world_size=2))
    assert reduce_metrics(ranks) == pytest.approx(want, rel=1e-5, abs=1e-6)
