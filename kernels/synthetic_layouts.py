"""Synthetic evict_at layouts for kernel tests, the GPU check and the benchmarks.

They follow the memento rule of DESIGN.md section 1 (a block's content is evicted at its
memento's last token, the `<|summary_end|>`; packed sequences are capped at their own end) without
a tokenizer: kernels/ imports none of the other packages, so the real layout code in rollout/ is
not reachable from here. Pure torch (no numpy): the GPU check runs where only torch and triton
are installed.
"""

from __future__ import annotations

import random

import torch


def packed_layout(seq_lens: list[int], evict: bool = True, seed: int = 0,
                  block_len: tuple[int, int] = (3, 14)) -> torch.Tensor:
    """evict_at [T] for sequences packed back to back, each a prompt then memento blocks.

    Per sequence: a prompt, then repeated (block, memento); the block's content (between its
    delimiters) is evicted at the last token of its memento. Every key is capped at the end of
    its own sequence. Block lengths are drawn from [block_len[0], block_len[1]) with `seed`; long
    blocks make whole tiles evicted (skipped) and whole tiles visible (full). evict=False gives
    plain causal attention inside each sequence.
    """
    rng = random.Random(seed)
    evict_at, start = [], 0
    for length in seq_lens:
        end = start + length
        ev = torch.full((length,), end, dtype=torch.long)
        pos = rng.randrange(1, max(2, length // 4))  # prompt
        while evict and pos < length:
            block = rng.randrange(*block_len)
            memento = rng.randrange(2, 6)
            summary_end = pos + block + memento - 1
            if summary_end >= length:
                break
            ev[pos + 1:pos + block - 1] = start + summary_end
            pos = summary_end + 1
        evict_at.append(ev)
        start = end
    return torch.cat(evict_at)


def memento_evict_at(T: int, prompt: int = 512, block: int = 1150, memento: int = 194) -> torch.Tensor:
    """evict_at [T] of one long sequence: a prompt, then (block, memento) pairs of fixed size (the
    paper's typical 1150-token blocks with 194-token mementos); tokens after the last whole pair
    are never evicted."""
    evict_at = torch.full((T,), T, dtype=torch.long)
    start = prompt
    while start + block + memento <= T:
        summary_end = start + block + memento - 1
        evict_at[start + 1:start + block - 1] = summary_end
        start = summary_end + 1
    return evict_at


def visible_pairs(evict_at: torch.Tensor) -> int:
    """Visible (query, key) pairs of one row: key j is seen by queries j .. evict_at[j] - 1."""
    return int((evict_at - torch.arange(len(evict_at), device=evict_at.device)).sum())


def visible_fraction(evict_at: torch.Tensor) -> float:
    """Visible pairs over the T (T + 1) / 2 pairs of causal attention."""
    T = len(evict_at)
    return visible_pairs(evict_at) / (T * (T + 1) / 2)
