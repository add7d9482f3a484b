"""Memento KV eviction for vLLM 0.32 (v1 engine, V1 model runner), as a general plugin.

vLLM runs `register()` in every process it starts (front end, EngineCore, workers) through the
`vllm.general_plugins` entry point; `rollout.engine` also calls it before building the engine. It
wraps a few methods of vLLM classes and edits no installed file. The wrappers do nothing unless
the engine's `additional_config` carries a "memento" entry (built by `plugin_config`), so plain
vLLM in the same environment is unaffected.

- `scheduler.py` (EngineCore process): feeds every request's tokens to the layout tracker,
  compacts the request's KV when an eviction is due, frees whole pages, caps prefill chunks at
  eviction points so recompute replays the same compactions, and counts live KV per request.
- `runner.py` (worker process): moves the surviving KV slots, truncates block tables, and feeds
  attention physical slot positions and sequence lengths while RoPE keeps logical positions.
- `logits.py` (worker process): the block-length cap and the scripted-token test hook.
- `weights.py` (worker process): the `host_buckets` weight-transfer engine (CPU weight sync).

See shared/research/vllm032.md (beside the repository) for the map of vLLM internals this follows.
"""

from __future__ import annotations

import dataclasses
import functools
import os

_installed = False


def register() -> None:
    """Install the wrappers once per process (the `vllm.general_plugins` entry point)."""
    global _installed
    if _installed:
        return
    # Only the V1 runner is patched; the V2 runner (CUDA default) would silently ignore
    # evictions. The scheduler wrapper refuses to run memento mode if V2 is still selected.
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    from rollout.vllm_plugin import runner, scheduler

    for cls, name, factory in scheduler.PATCHES + runner.PATCHES:
        original = getattr(cls, name)
        setattr(cls, name, functools.wraps(original)(factory(original)))
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    # weight_transfer_config={"backend": "host_buckets"}: see weights.py
    WeightTransferEngineFactory.register_engine("host_buckets", "rollout.vllm_plugin.weights",
                                                "HostBucketWeightTransferEngine")
    _installed = True


def plugin_config(layout, evict: bool, restart_mode: bool = False) -> dict:
    """The `additional_config` entry that switches the wrappers on.

    Args:
        layout: a `rollout.layout.MementoConfig`, or None when the tokenizer has no memento
            tokens (then only KV accounting runs).
        evict: apply the layout's evictions to the KV cache (False: plain attention, counted).
        restart_mode: the paper's ablation, memento KV recomputed without its block.
    """
    if evict and layout is None:
        raise ValueError("memento eviction needs the memento token ids (layout=None)")
    if restart_mode and not evict:
        raise ValueError("restart_mode needs memento eviction on")
    if restart_mode and (layout.keep_last_n_blocks != 0 or layout.keep_last_block_for_answer):
        raise ValueError("restart_mode supports keep_last_n_blocks=0 without "
                         "keep_last_block_for_answer only")
    return {"memento": {"layout": dataclasses.asdict(layout) if layout is not None else None,
                        "evict": evict, "restart_mode": restart_mode}}


def read_config(vllm_config) -> dict | None:
    """The "memento" entry of a VllmConfig's additional_config, or None (plugin inactive)."""
    extra = vllm_config.additional_config
    return extra.get("memento") if isinstance(extra, dict) else None
