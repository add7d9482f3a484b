"""The block-length cap: when an open block reaches `max_block_tokens`, `<|block_end|>` is forced.

A policy that never closes its block would defeat eviction (the block's KV stays live), so the
engine caps block length. This module holds the rule itself, free of vLLM, so that three places
apply the very same code: the engine's logits processor (rollout/vllm_plugin/logits.py), the
engine wrapper that reports which tokens were forced (the trainer gives them no loss), and the
transformers reference generator.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollout.layout import LayoutTracker, MementoConfig


def block_cap_due(tracker: LayoutTracker, max_block_tokens: int) -> bool:
    """Whether the token at `tracker.position` must be `<|block_end|>`.

    True when the innermost open block already holds `max_block_tokens` content tokens;
    `max_block_tokens <= 0` disables the cap.
    """
    start = tracker.open_block_start
    return max_block_tokens > 0 and start is not None and \
        tracker.position - start - 1 >= max_block_tokens


def forced_mask(prompt_ids: Sequence[int], response_ids: Sequence[int], cfg: MementoConfig,
                max_block_tokens: int) -> np.ndarray:
    """Which response tokens the cap forced (replays the rule over the finished sequence).

    Returns:
        bool (len(response_ids),).
    """
    tracker = LayoutTracker(cfg)
    tracker.feed_many(prompt_ids)
    mask = np.zeros(len(response_ids), dtype=bool)
    for i, token in enumerate(response_ids):
        mask[i] = block_cap_due(tracker, max_block_tokens)
        tracker.feed(int(token))
    return mask
