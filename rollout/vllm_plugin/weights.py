"""The `host_buckets` weight-transfer engine: new weights arrive as packed host-memory buckets.

vLLM 0.32 runs weight updates through a weight-transfer engine chosen by the engine argument
`weight_transfer_config={"backend": ...}`: `start_weight_update`, one `update_weights` per chunk,
`finish_weight_update` (vLLM's layerwise reload: each layer is re-processed, e.g. repacked for
the CPU kernels, once all its tensors have arrived). Its `nccl` and `ipc` engines receive over
NCCL or CUDA IPC; this one, registered by `register()` in every vLLM process, receives each
bucket inside the `update_weights` call itself (`rollout.weight_buckets` packing), so it works
on CPU and needs no shared device. Only one bucket at a time is in flight; nothing is written
to disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                   WeightTransferUpdateInfo)

from rollout.weight_buckets import unpack_bucket

_RELOAD_NOISE = ("RotaryEmbedding: Failed to load weights",)


class _QuietReload(logging.Filter):
    """Drop a line vLLM prints on every reload, i.e. every RL step: rotary embeddings hold
    computed buffers, not checkpoint weights, so their 'failure' is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_RELOAD_NOISE)


logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_QuietReload())


@dataclass
class HostBucketInitInfo(WeightTransferInitInfo):
    """Nothing to rendezvous: the data rides the control plane."""


@dataclass
class HostBucketUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    buffer: Any  # the bucket's bytes (uint8 array or bytes), `rollout.weight_buckets` layout


class HostBucketWeightTransferEngine(
        WeightTransferEngine[HostBucketInitInfo, HostBucketUpdateInfo]):
    init_info_cls = HostBucketInitInfo
    update_info_cls = HostBucketUpdateInfo

    def init_transfer_engine(self, init_info: HostBucketInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with a device synchronize, which raises on a CPU-only host;
        # loading here is synchronous anyway.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: HostBucketUpdateInfo) -> None:
        info = {"names": update_info.names, "dtype_names": update_info.dtype_names,
                "shapes": update_info.shapes}
        # The layerwise reload may keep these tensors until their layer is complete; they are
        # views of this bucket's own buffer, which nothing reuses.
        self.model.load_weights(unpack_bucket(info, update_info.buffer))

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        pass

