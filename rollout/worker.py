"""Ray rollout worker: one MementoEngine replica per actor, driven by the trainer's controller.

    workers = create_rollout_workers(2, model_path, memento={}, num_gpus_per_replica=1,
                                     tensor_parallel_size=1, enforce_eager=False)
    samples = ray.get([w.generate.remote(chunk, sampling) for w, chunk in zip(workers, chunks)])
    push_weights_via_object_store(workers, actor_model.state_dict().items())   # CPU / one host

Weight sync has two paths:
- object store (CPU and single-host runs): the actor puts its tensors in Ray's object store once
  and every replica loads them (`update_weights`);
- NCCL broadcast (GPU clusters): each replica joins the trainer's process group through vLLM's
  weight-transfer engine (`init_weight_broadcast`), then receives tensors the trainer broadcasts
  from rank 0 (`receive_weight_broadcast`). The engines must be built with
  `weight_transfer_config={"backend": "nccl"}`; replica r of R with tensor parallel size T sits at
  ranks 1 + r*T .. (r+1)*T in a group of size 1 + R*T.
"""

from __future__ import annotations

import os

import ray

from rollout.engine import MementoEngine, Sample, Sampling


class RolloutWorker:
    """A Ray actor holding one engine. Verbs: generate, update_weights, sleep, wake_up."""

    def __init__(self, model_path: str, memento=None, in_process: bool = False, **engine_kwargs):
        """in_process: vLLM's engine core runs in this actor's process (one replica = one
        process), without the EngineCore and worker processes exchanging every decode step."""
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine is built
            engine_kwargs["distributed_executor_backend"] = "uni"
        self.engine = MementoEngine(model_path, memento, **engine_kwargs)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling,
                 memento: dict | None = None) -> list[Sample]:
        return self.engine.generate(prompt_token_ids, sampling, memento)

    def update_weights(self, named_tensors: list) -> None:
        self.engine.update_weights(named_tensors)

    def init_weight_broadcast(self, master_address: str, master_port: int, rank_offset: int,
                              world_size: int) -> None:
        self.engine.init_weight_broadcast(master_address, master_port, rank_offset, world_size)

    def receive_weight_broadcast(self, names: list[str], dtype_names: list[str],
                                 shapes: list[list[int]]) -> None:
        self.engine.receive_weight_broadcast(names, dtype_names, shapes)

    def sleep(self, level: int = 1) -> None:
        self.engine.sleep(level)

    def wake_up(self) -> None:
        self.engine.wake_up()

    def shutdown(self) -> None:
        self.engine.shutdown()


def create_rollout_workers(num_replicas: int, model_path: str, memento=None, *,
                           num_cpus_per_replica: float = 1, num_gpus_per_replica: float = 0,
                           tensor_parallel_size: int = 1, **engine_kwargs) -> list:
    """Start `num_replicas` RolloutWorker actors (Ray must be initialised).

    On GPU each replica needs `tensor_parallel_size` GPUs (`num_gpus_per_replica` defaults to
    it); vLLM then spreads its tensor-parallel workers over the actor's GPUs.
    """
    if tensor_parallel_size > 1:
        engine_kwargs["tensor_parallel_size"] = tensor_parallel_size
        num_gpus_per_replica = num_gpus_per_replica or tensor_parallel_size
    actor = ray.remote(num_cpus=num_cpus_per_replica, num_gpus=num_gpus_per_replica)(RolloutWorker)
    return [actor.remote(model_path, memento, **engine_kwargs) for _ in range(num_replicas)]


def push_weights_via_object_store(workers: list, named_tensors) -> None:
    """Put the tensors in the object store once; every replica loads them. Blocks until done."""
    ref = ray.put([(name, tensor.detach().cpu()) for name, tensor in named_tensors])
    ray.get([worker.update_weights.remote(ref) for worker in workers])
