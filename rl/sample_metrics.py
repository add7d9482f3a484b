"""Per-sample KV and memento statistics: the trainer's batch metrics and evaluation's records.

Both replay the memento layout over a sample's tokens (`rollout.layout`), so a training step's
`kv/*` and `memento/*` metrics and an evaluation's per-response numbers are one quantity.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollout.layout import MementoConfig, evict_at, kv_stats, memento_stats


def sample_stats(prompt_ids: Sequence[int], response_ids: Sequence[int],
                 layout: MementoConfig | None, evict: np.ndarray | None = None) -> dict[str, float]:
    """KV accounting of one response and, under a layout, its memento statistics.

    Args:
        layout: the memento layout; None (no memento tokens) evicts nothing, and the result then
            has no memento keys.
        evict: (T,) the sequence's evict_at when already computed (the trainer's batch has it).
    Returns:
        `kv_stats` (peak_tokens, area_tokens and their full-attention twins, over the response)
        and, with a layout, `memento_stats` (blocks, block_tokens, memento_tokens, compression).
    """
    ids = [*prompt_ids, *response_ids]
    if evict is None:
        evict = evict_at(ids, layout) if layout is not None else np.full(len(ids), len(ids))
    stats: dict[str, float] = dict(kv_stats(evict, len(prompt_ids)))
    if layout is not None:
        stats.update(memento_stats(ids, layout, start=len(prompt_ids)))
    return stats
