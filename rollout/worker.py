"""Ray rollout worker: one MementoEngine replica per actor, driven by the trainer's controller.

The controller starts replicas with `rl.cluster.spawn_group(..., RolloutWorker, ...)` and calls
`generate`; actor rank 0 pushes new weights through the four weight-transfer verbs (vLLM's
control plane: `init_weight_transfer_engine` once, then `start_weight_update`, one
`update_weights` per bucket, `finish_weight_update`), as `rl.weight_sync` drives them over
object store, NCCL or CUDA IPC.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rollout.engine import Sample, Sampling


class RolloutWorker:
    """A Ray actor holding one engine. Verbs: generate, the weight-transfer verbs, sleep, wake_up."""

    def __init__(self, model_path: str, memento=None, in_process: bool = False, **engine_kwargs):
        """in_process: vLLM's engine core runs in this actor's process (one replica = one
        process), without the EngineCore and worker processes exchanging every decode step."""
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine is built
            engine_kwargs["distributed_executor_backend"] = "uni"
        from rollout.engine import MementoEngine  # vLLM loads in the worker, not where it is named

        self.engine = MementoEngine(model_path, memento, **engine_kwargs)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling,
                 memento: dict | None = None) -> list[Sample]:
        return self.engine.generate(prompt_token_ids, sampling, memento)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.engine.init_weight_transfer_engine(init_info)

    def start_weight_update(self) -> None:
        self.engine.start_weight_update()

    def update_weights(self, update_info: dict, buffer: bytes | None = None) -> None:
        """One bucket. `buffer`: its bytes for the host_buckets engine, passed to this call as an
        object ref that Ray resolves here (a ref nested in `update_info` would not be)."""
        if buffer is not None:
            update_info = {**update_info, "buffer": buffer}
        self.engine.update_weights(update_info)

    def finish_weight_update(self) -> None:
        self.engine.finish_weight_update()

    def sleep(self, level: int = 1) -> None:
        self.engine.sleep(level)

    def wake_up(self) -> None:
        self.engine.wake_up()

    def shutdown(self) -> None:
        self.engine.shutdown()

