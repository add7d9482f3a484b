"""The algorithm section of the trainer config: advantage estimator, policy loss, KL, entropy, DAPO.

Key names follow verl so a verl user can read our configs; where verl nests a key elsewhere the
field docstring gives verl's path. Validation happens in `__post_init__` and every error names the
offending key. Pure Python: no torch import, so the schema loads before any worker starts.

Unknown keys and wrong types are rejected by the schema loader (`rl.config.from_dict`), which
prefixes messages with the dotted path; `__post_init__` messages therefore start with the bare key.
OmegaConf 2.3 cannot take `Literal` annotations in `OmegaConf.structured`, so the loader builds
these dataclasses from the resolved container instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

AdvEstimator = Literal["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"]
# verl calls "ppo" "vanilla" (actor.policy_loss.loss_mode).
PolicyLossMode = Literal["ppo", "cispo", "gspo"]
LossAggMode = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "group-mean-token-mean"
]
# verl kl_penalty names: k1 == kl, k2 == mse, k3 == low_var_kl.
KLType = Literal["k1", "kl", "k2", "mse", "k3", "low_var_kl"]
# verl algorithm.rollout_correction.rollout_rs: which ratio a rejection band applies to.
RolloutRS = Literal["token", "sequence", "geometric"]

_CHOICES: dict[str, Any] = {
    "adv_estimator": AdvEstimator,
    "loss_mode": PolicyLossMode,
    "loss_agg_mode": LossAggMode,
    "kl_loss_type": KLType,
    "kl_penalty": KLType,
}


@dataclass
class FilterGroupsConfig:
    """DAPO dynamic sampling (verl `algorithm.filter_groups`).

    enable: drop groups whose rewards are all equal and generate more until the batch is full.
    max_num_gen_batches: give up after this many generation rounds per step; <= 0 means no limit.
    """

    enable: bool = False
    max_num_gen_batches: int = 10


@dataclass
class OverlongBufferConfig:
    """DAPO soft overlong punishment (verl `reward_model.overlong_buffer`).

    A response whose length falls in the last `len` tokens before the max response length gets a
    reward penalty growing linearly from 0 to `-penalty_factor` at the max length.
    """

    enable: bool = False
    len: int = 0
    penalty_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.enable and self.len <= 0:
            raise ValueError(f"len must be > 0 when enable is set, got {self.len}")
        if self.penalty_factor < 0:
            raise ValueError(f"penalty_factor must be >= 0, got {self.penalty_factor}")


@dataclass
class AlgoConfig:
    """Advantage estimator, policy loss and regularisers of one GRPO-family run.

    Fields (verl path in brackets where it differs from `algorithm.<name>`):
        adv_estimator: "grpo" (group mean and std), "dr_grpo" (group mean only), "rloo"
            (leave-one-out mean), "reinforce_plus_plus_baseline" (group mean, then whitened by
            the batch's std: the MEMENTO paper's "batch-level advantage normalization"). verl
            spells dr_grpo as grpo + norm_adv_by_std_in_grpo=False.
        norm_adv_by_std_in_grpo: divide by the group std; only read by "grpo".
        loss_mode: "ppo" (clip + dual clip), "cispo", "gspo" [actor.policy_loss.loss_mode;
            verl's "vanilla" is our "ppo"].
        clip_ratio_low, clip_ratio_high: ratio clip band [1 - low, 1 + high]; DAPO clip-higher
            uses high 0.28 [actor.*]. For cispo the band clips the importance weight.
        clip_ratio_c: dual-clip bound for negative advantages, > 1 [actor.clip_ratio_c].
        loss_agg_mode: how the token loss matrix becomes a scalar [actor.loss_agg_mode];
            "group-mean-token-mean" (not in verl) is the paper's "group-total loss normalization".
        loss_scale_factor: the constant divisor of "seq-mean-token-sum-norm" (Dr.GRPO uses the
            max response length); required for that mode [actor.loss_scale_factor].
        entropy_coeff: weight of the entropy bonus (loss -= coeff * entropy) [actor.entropy_coeff].
        use_kl_loss, kl_loss_coef, kl_loss_type: KL to the reference in the loss [actor.*].
        use_kl_in_reward, kl_penalty, kl_coef: KL to the reference subtracted from the reward
            [algorithm.kl_ctrl.kl_coef; fixed controller only].
        tis_imp_ratio_cap: truncated importance sampling between rollout and actor log-probs:
            token weight min(exp(old - rollout), cap); None disables it (verl used -1).
        rollout_rs, rollout_rs_threshold, rollout_rs_threshold_lower: masked importance sampling
            [algorithm.rollout_correction.*]: tokens ("token"), or whole sequences by the product
            ("sequence") or geometric mean ("geometric") of their ratios exp(old - rollout), whose
            ratio leaves [lower, upper] are dropped from the loss; lower defaults to 1 / upper.
            None disables it.
        filter_groups: DAPO dynamic sampling.
        overlong_buffer: DAPO soft overlong punishment.
        overlong_filter: DAPO overlong filtering: responses cut at the max length carry no loss
            (they still count in their group's advantage statistics).
    """

    adv_estimator: AdvEstimator = "grpo"
    norm_adv_by_std_in_grpo: bool = True
    loss_mode: PolicyLossMode = "ppo"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: LossAggMode = "token-mean"
    loss_scale_factor: float | None = None
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: KLType = "low_var_kl"
    use_kl_in_reward: bool = False
    kl_penalty: KLType = "kl"
    kl_coef: float = 0.001
    tis_imp_ratio_cap: float | None = None
    rollout_rs: RolloutRS | None = None
    rollout_rs_threshold: float | None = None
    rollout_rs_threshold_lower: float | None = None
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    overlong_buffer: OverlongBufferConfig = field(default_factory=OverlongBufferConfig)
    overlong_filter: bool = False

    def __post_init__(self) -> None:
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in get_args(choices):
                raise ValueError(f"{key} must be one of {list(get_args(choices))}, got {getattr(self, key)!r}")
        if not 0.0 <= self.clip_ratio_low <= 1.0:
            raise ValueError(f"clip_ratio_low must be in [0, 1], got {self.clip_ratio_low}")
        if self.clip_ratio_high < 0.0:
            raise ValueError(f"clip_ratio_high must be >= 0, got {self.clip_ratio_high}")
        if self.clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (dual-clip bound), got {self.clip_ratio_c}")
        if self.loss_mode == "gspo" and self.loss_agg_mode != "seq-mean-token-mean":
            # GSPO's objective is a mean over sequences; verl forces this mode silently.
            raise ValueError(
                f"loss_agg_mode must be 'seq-mean-token-mean' when loss_mode='gspo', got {self.loss_agg_mode!r}"
            )
        if self.loss_agg_mode == "seq-mean-token-sum-norm" and self.loss_scale_factor is None:
            # verl falls back to the padded width, which changes with micro-batch padding.
            raise ValueError(
                "loss_scale_factor must be set when loss_agg_mode='seq-mean-token-sum-norm' "
                "(e.g. the max response length)"
            )
        if self.loss_scale_factor is not None and self.loss_scale_factor <= 0:
            raise ValueError(f"loss_scale_factor must be > 0, got {self.loss_scale_factor}")
        for key in ("kl_loss_coef", "kl_coef"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.tis_imp_ratio_cap is not None and self.tis_imp_ratio_cap <= 0:
            raise ValueError(f"tis_imp_ratio_cap must be > 0 or null (disabled), got {self.tis_imp_ratio_cap}")
        self._check_rollout_rejection()

    def _check_rollout_rejection(self) -> None:
        upper, lower = self.rollout_rs_threshold, self.rollout_rs_threshold_lower
        if self.rollout_rs is None:
            if upper is not None or lower is not None:
                raise ValueError("rollout_rs_threshold(_lower) is set but rollout_rs is null; "
                                 f"set rollout_rs to one of {list(get_args(RolloutRS))}")
            return
        if self.rollout_rs not in get_args(RolloutRS):
            raise ValueError(f"rollout_rs must be one of {list(get_args(RolloutRS))} or null, got {self.rollout_rs!r}")
        if upper is None or upper <= 0:
            raise ValueError(f"rollout_rs_threshold must be > 0 when rollout_rs is set, got {upper}")
        if lower is not None and not 0 <= lower <= upper:
            raise ValueError(f"rollout_rs_threshold_lower must be in [0, rollout_rs_threshold={upper}], got {lower}")

    @property
    def corrects_rollout(self) -> bool:
        """Whether the update needs the old log-probs against the sampler's before it starts."""
        return self.tis_imp_ratio_cap is not None or self.rollout_rs is not None
