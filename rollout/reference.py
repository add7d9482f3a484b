"""Reference generator in plain transformers: what the engine must produce, computed the slow way.

Every step recomputes the whole sequence with original position ids (0..L-1) and a dense additive
float mask built from the layout, so no KV cache, compaction or slot arithmetic is involved: key j
is visible to query i iff `j <= i < evict_at[j]`. The mask is float (0 / -inf) on purpose: eager
attention in transformers silently mishandles a boolean 4D mask; sdpa and eager are exact with a
float one. Greedy only, since its purpose is token-for-token parity with the engine.

The same logits rules as the engine apply: a script of forced tokens and banned ids (the test and
benchmark hooks of `rollout.engine.Sampling`) and the block-length cap (`rollout.block_cap`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from rollout.block_cap import block_cap_due
from rollout.layout import LayoutTracker, MementoConfig, evict_at

Layout = Callable[[Sequence[int]], np.ndarray]


def restart_evict_at(token_ids: Sequence[int], cfg: MementoConfig) -> np.ndarray:
    """Layout of the restart ablation: each closed block, delimiters included, is hidden from its
    own `<|summary_start|>` on, i.e. memento KV as a fresh prefill of prompt + mementos computes it.

    Applied to the sequence so far at every step, this also covers the engine's timing: while a
    memento is being written its block is visible, and once `<|summary_end|>` is sampled the
    memento's KV is recomputed without it.
    """
    tracker = LayoutTracker(cfg)
    out = np.full(len(token_ids), len(token_ids), dtype=np.int64)
    for ev in tracker.feed_many(int(t) for t in token_ids):
        out[ev.block_start:ev.block_end + 1] = np.minimum(out[ev.block_start:ev.block_end + 1],
                                                          ev.summary_start)
    return out


def layout_mask(evict: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask (1, 1, L, L): 0 where `j <= i < evict[j]`, -inf elsewhere."""
    L = len(evict)
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    visible = (j <= i) & (i < torch.as_tensor(evict)[None, :])
    mask = torch.zeros(L, L, dtype=dtype).masked_fill(~visible, float("-inf"))
    return mask[None, None]


def reference_generate(model, prompt_ids: Sequence[int], max_tokens: int,
                       cfg: MementoConfig | None = None, layout: Layout | None = None,
                       script: dict[int, int] | None = None, ban_token_ids: Sequence[int] = (),
                       max_block_tokens: int = 0, threads: int | None = 1
                       ) -> tuple[list[int], list[float]]:
    """Greedy decode of `max_tokens` tokens under a layout.

    Args:
        model: a transformers causal LM (eval mode, attn_implementation "sdpa" or "eager").
        cfg: memento tokens and options; needed by the default layout and by the block cap.
        layout: token ids (L,) -> evict_at (L,). Default: `evict_at(.., cfg)` when cfg is given,
            else full causal attention.
        script: response index -> token id forced there; other steps never pick `ban_token_ids`.
        max_block_tokens: block-length cap (0: off).
        threads: torch threads while generating (restored after); None keeps the setting. One
            suits small models: with a loaded CPU, two OpenMP threads made the tiny test model's
            hundreds of short forwards ~30x slower.

    Returns:
        response token ids (max_tokens,) and the log-prob of each under the processed logits.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or saved)
    try:
        return _greedy(model, prompt_ids, max_tokens, cfg, layout, script or {}, ban_token_ids,
                       max_block_tokens)
    finally:
        torch.set_num_threads(saved)


@torch.no_grad()
def _greedy(model, prompt_ids, max_tokens, cfg, layout, script, ban_token_ids, max_block_tokens):
    if layout is None:
        layout = (lambda seq: evict_at(seq, cfg)) if cfg is not None else \
            (lambda seq: np.full(len(seq), len(seq), dtype=np.int64))
    tracker = LayoutTracker(cfg) if cfg is not None else None
    if tracker is not None:
        tracker.feed_many(prompt_ids)
    dtype = next(model.parameters()).dtype
    seq = [int(t) for t in prompt_ids]
    response, logprobs = [], []
    for step in range(max_tokens):
        ids = torch.tensor([seq])
        positions = torch.arange(len(seq))[None]
        logits = model(input_ids=ids, position_ids=positions,
                       attention_mask=layout_mask(layout(seq), dtype)).logits[0, -1].float()
        forced = script.get(step)
        if tracker is not None and block_cap_due(tracker, max_block_tokens):
            forced = cfg.block_end
        if forced is not None:
            logits = torch.full_like(logits, float("-inf"))
            logits[forced] = 0.0
        elif ban_token_ids:
            logits[list(ban_token_ids)] = float("-inf")
        token = int(logits.argmax())
        logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        response.append(token)
        seq.append(token)
        if tracker is not None:
            tracker.feed(token)
    return response, logprobs
