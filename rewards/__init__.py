"""Verifiers that never break a run: math, code in a sandbox, memento format, and the reward manager."""

from rewards.manager import RewardBatch, RewardConfig, RewardInfo, RewardManager

__all__ = ["RewardBatch", "RewardConfig", "RewardInfo", "RewardManager"]
