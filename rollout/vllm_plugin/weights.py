"""Worker extension (vLLM `worker_extension_cls`): load new weights sent by RPC.

vLLM mixes this class into its worker, so `LLM.collective_rpc("memento_load_weights", ...)` runs
it in every worker process. This is the CPU / single-host path: the engine writes the trainer's
tensors to a RAM-backed safetensors file and passes its path. GPU clusters use vLLM's own NCCL
weight-transfer RPCs instead (see `rollout.engine.MementoEngine.receive_weight_broadcast`).
"""

from __future__ import annotations

import logging

from safetensors.torch import load_file

_RELOAD_NOISE = ("RotaryEmbedding: Failed to load weights", "Reloading and processing weights took")


class _QuietReload(logging.Filter):
    """Drop two lines vLLM prints on every reload, i.e. every RL step: rotary embeddings hold
    computed buffers, not checkpoint weights, so their 'failure' is expected; the timing is ours
    to report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_RELOAD_NOISE)


for _name in ("layerwise", "inplace"):
    logging.getLogger(f"vllm.model_executor.model_loader.reload.{_name}").addFilter(_QuietReload())


class WeightLoaderExtension:
    def memento_load_weights(self, path: str) -> int:
        """Load a safetensors file of Hugging Face-named weights into the running model."""
        tensors = load_file(path)
        # vLLM's in-place reload, not model.load_weights: kernels may have repacked the loaded
        # weights (the CPU backend does), and the reload re-runs that processing.
        self.reload_weights(weights_iterator=iter(tensors.items()))
        return len(tensors)
