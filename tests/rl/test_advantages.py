"""Advantage estimators and reward shaping against hand-computed values and verl's formulas."""

import math
from collections import defaultdict

import pytest
import torch

from rl.advantages import (
    batch_whiten,
    compute_advantages,
    filter_zero_variance_groups,
    group_stats,
    kl_in_reward,
    overlong_penalty,
)

EPS = 1e-6


def _ones(b: int, t: int = 3) -> torch.Tensor:
    return torch.ones(b, t)


def _verl_reference(estimator: str, rewards: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor):
    """Slow per-group loop with verl's semantics (compute_grpo/rloo_outcome_advantage), our wording."""
    by_group = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        by_group[g].append(float(rewards[i]))
    out = []
    for i, g in enumerate(group_ids.tolist()):
        scores, r = by_group[g], float(rewards[i])
        n = len(scores)
        mean = sum(scores) / n if n > 1 else 0.0
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else 1.0
        if estimator == "grpo":
            out.append((r - mean) / (std + EPS))
        elif estimator == "dr_grpo":
            out.append(r - mean)
        else:  # rloo: singletons keep the raw score
            out.append(r * n / (n - 1) - mean * n / (n - 1) if n > 1 else r)
    return torch.tensor(out).unsqueeze(-1) * mask


def _two_groups() -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards [1, 0, 0, 1] for prompt 0 and [2, 4] for prompt 1."""
    return torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0]), torch.tensor([0, 0, 0, 0, 1, 1])


def test_grpo_hand_values_two_groups():
    rewards, group_ids = _two_groups()
    adv, metrics = compute_advantages("grpo", rewards, group_ids, _ones(6))
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350 -> +-0.5 / 0.577351 = +-0.866024
    # group 1: mean 3, std sqrt((1 + 1) / 1) = 1.414214 -> -+1 / 1.414215 = -+0.707106
    expected = torch.tensor([0.866024, -0.866024, -0.866024, 0.866024, -0.707106, 0.707106])
    torch.testing.assert_close(adv, expected.unsqueeze(-1).expand(6, 3), atol=2e-6, rtol=0)
    assert metrics["advantages/max"] == pytest.approx(0.866024, abs=2e-6)


def test_dr_grpo_is_mean_centred_without_std():
    rewards, group_ids = _two_groups()
    adv, _ = compute_advantages("dr_grpo", rewards, group_ids, _ones(6))
    # r - mean: group 0 mean 0.5, group 1 mean 3
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, -1.0, 1.0])
    torch.testing.assert_close(adv[:, 0], expected)
    # grpo with norm_adv_by_std_in_grpo=False is the same estimator (verl's spelling of Dr.GRPO)
    same, _ = compute_advantages("grpo", rewards, group_ids, _ones(6), norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(same, adv)


def test_rloo_is_leave_one_out():
    rewards, group_ids = _two_groups()
    adv, _ = compute_advantages("rloo", rewards, group_ids, _ones(6))
    # sample 0: 1 - mean(0, 0, 1) = 2/3; sample 1: 0 - mean(0, 1, 1) = -2/3; group 1: 2 - 4, 4 - 2
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, -2.0, 2.0])
    torch.testing.assert_close(adv[:, 0], expected)


def test_batch_level_normalization_hand_values():
    """reinforce_plus_plus_baseline: centred per group, scaled by the batch's std (not the group's)."""
    rewards, group_ids = _two_groups()
    adv, _ = compute_advantages("reinforce_plus_plus_baseline", rewards, group_ids, _ones(6))
    # centred c = [0.5, -0.5, -0.5, 0.5, -1, 1], 3 tokens each: N = 18, token mean 0,
    # unbiased var = 3 (4 * 0.25 + 2 * 1) / 17 = 9 / 17 = 0.529412, std 0.727607
    # -> A = c / 0.727607 = +-0.687184 (group 0), +-1.374369 (group 1)
    expected = torch.tensor([0.687184, -0.687184, -0.687184, 0.687184, -1.374369, 1.374369])
    torch.testing.assert_close(adv, expected.unsqueeze(-1).expand(6, 3), atol=2e-6, rtol=0)
    # the wider group keeps twice the advantage; grpo's per-group std makes both 0.87 / 0.71
    assert adv[5, 0] / adv[0, 0] == pytest.approx(2.0)


def test_batch_level_normalization_weighs_sequences_by_their_loss_tokens():
    # one group, rewards 1 and 0 over 3 and 1 loss tokens: c = [0.5, -0.5]
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, _ = compute_advantages("reinforce_plus_plus_baseline", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask)
    # token mean m = (3 * 0.5 - 0.5) / 4 = 0.25; var = (3 * 0.25^2 + 0.75^2) / 3 = 0.25, std 0.5
    # A = [(0.5 - 0.25) / 0.5, (-0.5 - 0.25) / 0.5] = [0.5, -1.5] on the loss tokens
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5, 0.5], [-1.5, 0.0, 0.0]]), atol=1e-6, rtol=0)


def _verl_rpp_baseline_reference(rewards, group_ids, mask):
    """verl's REINFORCE++-baseline as loops: group means (singletons 0), broadcast over the
    response mask, then masked_whiten over all masked tokens (unbiased var, 1e-8)."""
    by_group = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        by_group[g].append(float(rewards[i]))
    centred = [float(rewards[i]) - (sum(by_group[g]) / len(by_group[g]) if len(by_group[g]) > 1 else 0.0)
               for i, g in enumerate(group_ids.tolist())]
    tokens = [(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t]]
    values = [centred[i] for i, _ in tokens]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    out = torch.zeros(mask.shape)
    for i, t in tokens:
        out[i, t] = (centred[i] - mean) / math.sqrt(var + 1e-8)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batch_level_normalization_matches_verl_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    b = 11
    rewards = torch.randint(0, 3, (b,), generator=gen).float() + torch.rand(b, generator=gen)
    group_ids = torch.randint(0, 4, (b,), generator=gen)  # singletons and absent ids included
    mask = (torch.rand(b, 9, generator=gen) > 0.35).float()
    mask[seed % b] = 0  # an empty response
    adv, _ = compute_advantages("reinforce_plus_plus_baseline", rewards, group_ids, mask)
    torch.testing.assert_close(adv, _verl_rpp_baseline_reference(rewards, group_ids, mask), atol=1e-5, rtol=1e-5)


def test_batch_whiten_without_two_loss_tokens_is_finite():
    torch.testing.assert_close(batch_whiten(torch.tensor([3.0, 1.0]), torch.zeros(2, 4)), torch.zeros(2))
    one = batch_whiten(torch.tensor([3.0, 1.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert torch.isfinite(one).all() and one[0] == 0  # the only token is its own mean


@pytest.mark.parametrize("estimator,expected", [("grpo", 3.0 / (1 + EPS)), ("dr_grpo", 3.0), ("rloo", 3.0)])
def test_group_of_one_uses_raw_score_like_verl(estimator, expected):
    # verl's loops: singleton mean 0 and std 1, rloo leaves the score unchanged
    adv, _ = compute_advantages(estimator, torch.tensor([3.0]), torch.tensor([5]), _ones(1, 4))
    torch.testing.assert_close(adv, torch.full((1, 4), expected))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1])
def test_all_equal_rewards_give_zero_advantage(estimator, value):
    # 0.1 repeated does not average back to exactly 0.1 in float32: still ~0, never NaN
    adv, _ = compute_advantages(estimator, torch.full((5,), value), torch.zeros(5, dtype=torch.long), _ones(5))
    assert torch.isfinite(adv).all()
    torch.testing.assert_close(adv, torch.zeros(5, 3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_empty_response_gets_zero_but_counts_in_its_group(estimator):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    group_ids = torch.tensor([0, 0, 0, 0])
    mask = _ones(4)
    mask[3] = 0  # sequence 3 has no loss tokens
    adv, _ = compute_advantages(estimator, rewards, group_ids, mask)
    full, _ = compute_advantages(estimator, rewards, group_ids, _ones(4))
    assert (adv[3] == 0).all()
    torch.testing.assert_close(adv[:3], full[:3])  # group statistics unchanged


def test_all_masked_batch_has_no_nan():
    adv, metrics = compute_advantages("grpo", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.zeros(2, 3))
    assert (adv == 0).all()
    assert metrics == {"advantages/mean": 0.0, "advantages/max": 0.0, "advantages/min": 0.0}


def test_ragged_mask_zeroes_prompt_and_forced_tokens():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])  # prompt / forced tokens are 0
    adv, _ = compute_advantages("dr_grpo", torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), mask)
    torch.testing.assert_close(adv, torch.tensor([[0, 0.5, 0.5, 0], [0, 0, -0.5, -0.5]]))


def test_group_ids_order_and_values_do_not_matter():
    rewards = torch.tensor([1.0, 3.0, 0.0, 5.0])
    shuffled, _ = compute_advantages("grpo", rewards, torch.tensor([70, 3, 70, 3]), _ones(4))
    grouped, _ = compute_advantages("grpo", rewards[[0, 2, 1, 3]], torch.tensor([0, 0, 1, 1]), _ones(4))
    torch.testing.assert_close(shuffled[[0, 2, 1, 3]], grouped)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_verl_reference_on_random_batches(estimator, seed):
    gen = torch.Generator().manual_seed(seed)
    b = 13
    rewards = torch.randint(0, 3, (b,), generator=gen).float() + torch.rand(b, generator=gen).round()
    group_ids = torch.randint(0, 5, (b,), generator=gen)  # includes singletons and absent ids
    mask = (torch.rand(b, 7, generator=gen) > 0.3).float()
    adv, _ = compute_advantages(estimator, rewards, group_ids, mask)
    torch.testing.assert_close(adv, _verl_reference(estimator, rewards, group_ids, mask), atol=1e-5, rtol=1e-5)


def test_integer_rewards_are_accepted():
    adv, _ = compute_advantages("dr_grpo", torch.tensor([1, 0]), torch.tensor([0, 0]), _ones(2))
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5, -0.5]))


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="adv_estimator.*'gae'"):
        compute_advantages("gae", torch.tensor([1.0]), torch.tensor([0]), _ones(1))


def test_group_stats_hand_values():
    mean, std, count = group_stats(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([2, 2, 9]))
    # group 2: mean 2, std sqrt((1 + 1) / 1); group 9: one sample, std 0
    torch.testing.assert_close(mean, torch.tensor([2.0, 2.0, 10.0]))
    torch.testing.assert_close(std, torch.tensor([math.sqrt(2), math.sqrt(2), 0.0]))
    assert count.tolist() == [2, 2, 1]


def test_dynamic_sampling_drops_zero_variance_groups_keeps_singletons():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.0, 0.0, 7.0])
    group_ids = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3, 3, 4])
    keep, metrics = filter_zero_variance_groups(rewards, group_ids)
    # group 0 all 1, group 2 all 0.1, group 3 all 0 -> dropped; group 1 mixed, group 4 singleton -> kept
    assert keep.tolist() == [False, False, True, True, False, False, False, False, False, True]
    assert metrics == {"filter_groups/dropped_groups": 3.0, "filter_groups/kept_groups": 2.0}
    int_keep, _ = filter_zero_variance_groups(torch.tensor([1, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert int_keep.tolist() == [False, False, True, True]


def test_overlong_penalty_is_linear_in_the_buffer():
    # L_max 10, buffer 4, factor 1: penalty starts after 6 tokens, -(L - 6) / 4
    penalty, metrics = overlong_penalty(torch.tensor([3, 6, 7, 8, 10]), 10, 4, 1.0)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0]))
    assert metrics["overlong/frac"] == pytest.approx(3 / 5)
    assert metrics["overlong/penalty_mean"] == pytest.approx(-1.75 / 5)
    half, _ = overlong_penalty(torch.tensor([10]), 10, 4, 0.5)
    assert half.item() == pytest.approx(-0.5)


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="overlong_buffer.len"):
        overlong_penalty(torch.tensor([3]), 10, 0, 1.0)


def test_kl_in_reward_subtracts_summed_kl_on_loss_tokens():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # last token of row 0 forced: not penalised
    shaped, metrics = kl_in_reward(torch.tensor([1.0, 0.0]), logprobs, ref, mask, kl_coef=0.1, kl_penalty_type="k1")
    # k1 = logp - ref: row 0 -> 0.5 + 0 = 0.5; row 1 -> 1 + 1 + 1 = 3
    torch.testing.assert_close(shaped, torch.tensor([1.0 - 0.05, 0.0 - 0.3]))
    assert metrics["kl_in_reward/kl_mean"] == pytest.approx(3.5 / 5)
