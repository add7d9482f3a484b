"""The `memento` attention implementation for transformers, and per-token log-probs of a model.

    import kernels
    kernels.enable_memento_attention(model)          # or: register_memento_attention() and then
                                                     # from_pretrained(..., attn_implementation="memento")
    logprobs, entropy = kernels.compute_logprobs(model, input_ids, position_ids, evict_at, targets)

The model is called with `evict_at=` among its forward kwargs; transformers hands those kwargs to
every attention call, where `memento_attention_forward` reads it. The implementation is registered
only in `AttentionInterface`, not in the mask interface, so transformers builds no mask at all
(its `create_causal_mask` returns None for implementations it has no mask function for) and an
`attention_mask` passed to the model is ignored: padding and packing are expressed through
evict_at. Works for models that use the attention interface (Qwen2/3, Llama, Phi-3, Olmo-3 ...).
Training and prefill only: there is no KV cache path. transformers is imported on first use, so
`import kernels` stays light (transformers' modeling code imports torch._dynamo, hence triton).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kernels.dispatch import linear_logprob_entropy, memento_attention
from kernels.logprob_torch import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ATTN_IMPLEMENTATION = "memento"


def memento_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: torch.Tensor | None,
                              dropout: float = 0.0, scaling: float | None = None,
                              sliding_window: int | None = None, evict_at: torch.Tensor | None = None,
                              **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: query [B, Hq, T, D], key/value [B, Hkv, T, D] ->
    ([B, T, Hq, D], None). Sliding-window layers fold the window into evict_at
    (transformers keeps key j for query i iff i < j + window)."""
    if evict_at is None:
        raise ValueError("memento attention needs the model to be called with evict_at=[B, T]")
    if dropout:
        raise ValueError("memento attention does not implement attention dropout")
    if key.shape[2] != query.shape[2]:
        raise ValueError("memento attention has no KV-cache path: call the model with use_cache=False")
    if sliding_window is not None:
        window_end = torch.arange(evict_at.shape[1], device=evict_at.device) + sliding_window
        evict_at = torch.minimum(evict_at, window_end)
    out = memento_attention(query, key, value, evict_at.to(query.device), scale=scaling)
    return out.transpose(1, 2), None


def register_memento_attention() -> None:
    """Make attn_implementation="memento" available to every transformers model (idempotent)."""
    from transformers import AttentionInterface  # imported here: it pulls in torch._dynamo and triton

    AttentionInterface.register(ATTN_IMPLEMENTATION, memento_attention_forward)


def enable_memento_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Register the implementation and switch `model` (in place) to it; returns the model."""
    register_memento_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def next_token_targets(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Targets for packed rows: the next token of the same sequence, IGNORE_INDEX at each end.

    A sequence ends where the next position id is 0 (position ids restart per sequence).

    Args:
        input_ids, position_ids: [B, T].

    Returns:
        [B, T] long: targets[b, t] = input_ids[b, t + 1] if that token belongs to the same
        sequence, else IGNORE_INDEX.
    """
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    same_sequence = position_ids[:, 1:] != 0
    targets[:, :-1] = torch.where(same_sequence, input_ids[:, 1:], IGNORE_INDEX)
    return targets


def compute_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, position_ids: torch.Tensor,
                     evict_at: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                     backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of a causal LM under the memento layout.

    Runs the decoder with the `memento` attention, then the fused lm_head log-prob: the
    [B, T, V] logits are never materialised. Differentiable w.r.t. the model's parameters.

    Args:
        model: a transformers causal LM switched to the memento attention
            (`enable_memento_attention`), with a bias-free lm_head.
        input_ids: [B, T] long; a packed micro-batch is one row (B = 1).
        position_ids: [B, T] original positions, restarting at 0 for each packed sequence
            (used for RoPE only).
        evict_at: [B, T] int, row-local, capped at each packed sequence's end (as rl.batch.pack builds it).
        targets: [B, T] long, targets[b, t] = the token scored at position t, i.e. the token that
            follows t in its sequence (`next_token_targets`); IGNORE_INDEX (-100) scores nothing.
        temperature: the rollout's sampling temperature.
        backend: "auto" | "triton" | "torch" for both kernels; None reads MEMENTO_KERNELS_BACKEND.

    Returns:
        (logprobs [B, T] fp32, entropy [B, T] fp32), log p(targets[b, t] | tokens visible at t)
        at temperature `temperature` and the entropy of that distribution; 0 at ignored targets.
    """
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(f"compute_logprobs needs attn_implementation={ATTN_IMPLEMENTATION!r} "
                         f"(got {model.config._attn_implementation!r}); call kernels.enable_memento_attention")
    lm_head = model.get_output_embeddings()
    if getattr(lm_head, "bias", None) is not None:
        raise ValueError("compute_logprobs supports bias-free lm_heads only")
    hidden = model.base_model(input_ids=input_ids, position_ids=position_ids, evict_at=evict_at,
                              use_cache=False).last_hidden_state  # [B, T, H]
    B, T, H = hidden.shape
    logprobs, entropy = linear_logprob_entropy(hidden.reshape(B * T, H), lm_head.weight,
                                               targets.reshape(B * T), temperature, backend)
    return logprobs.view(B, T), entropy.view(B, T)
