"""Weight sync: the actor's weights into every rollout replica, one bucket at a time.

    trainer.weight_sync: auto | object_store | nccl | ipc     # auto: see choose_backend
    trainer.weight_sync_bucket_mb: 1024                        # bytes moved per bucket

One interface, `WeightBroadcast.send()`. `PolicyWorker.init_weight_sync` builds one on every
actor rank (ZeRO-3 gathers are collectives, so every rank takes part), and `Trainer.sync_weights`
calls `PolicyWorker.send_weights` on all of them. Rank 0 alone talks to the replicas, through
vLLM 0.32's weight-transfer control plane (`start_weight_update`, one `update_weights` per
bucket, `finish_weight_update`; vLLM's layerwise reload re-processes each layer once all its
tensors have arrived):

- object_store (CPU, or any single host): rank 0 packs each bucket into one host buffer
  (`rollout.weight_buckets`), puts it in Ray's object store and waits until every replica has
  loaded it (the engine's `host_buckets` transfer engine, `rollout.vllm_plugin.weights`), then
  drops it. Nothing is written to disk.
- nccl (GPUs on other devices or nodes): vLLM's `NCCLTrainerWeightTransferEngine`; rank 0 and
  every replica's tensor-parallel workers form one NCCL group (replica r's workers at ranks
  1 + r*T .. (r+1)*T) and rank 0 broadcasts packed buffers of `bucket_bytes`.
- ipc (actor and engine colocated on the same GPUs): vLLM's `IPCTrainerWeightTransferEngine`
  (packed); each rank shares one GPU buffer by CUDA IPC with the replica on its device.

Under ZeRO-3, `ActorWeights` gathers the parameters of one bucket at a time
(`GatheredParameters` over just that bucket), hands them on and releases them, so no rank ever
holds the whole model; under ZeRO 0-2 every rank holds full weights and only rank 0's are sent.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch

from rollout.weight_buckets import ParamMeta, pack_bucket, plan_buckets

BACKENDS = ("object_store", "nccl", "ipc")
# The rollout engine's vLLM `weight_transfer_config` backend for each of ours.
ENGINE_BACKEND = {"object_store": "host_buckets", "nccl": "nccl", "ipc": "ipc"}


def choose_backend(requested: str, device: str, colocate: bool) -> str:
    """The transport for `trainer.weight_sync`; "auto": ipc when actor and engine share GPUs,
    nccl when they sit on different GPUs, object_store on CPU.

    Raises ValueError for a combination that cannot work, naming the keys of `trainer.`.
    """
    if requested == "auto":
        if device != "cuda":
            return "object_store"
        return "ipc" if colocate else "nccl"
    if requested not in BACKENDS:
        raise ValueError(f"weight_sync must be auto or one of {BACKENDS}, got {requested!r}")
    if requested != "object_store" and device != "cuda":
        raise ValueError(f"weight_sync={requested} needs device=cuda, got {device}")
    if requested == "ipc" and not colocate:
        raise ValueError("weight_sync=ipc needs colocate=true (CUDA IPC shares memory between "
                         "processes on the same GPU)")
    if requested == "nccl" and colocate:
        raise ValueError("weight_sync=nccl needs colocate=false (NCCL refuses two ranks on one "
                         "GPU); use ipc or auto")
    return requested


class ActorWeights:
    """The actor's parameters, bucket by bucket, in `named_parameters()` order.

    Also a vLLM `WeightSource` (`metadata()` and `__iter__`), which vLLM's trainer engines read.

    Args:
        model: the Hugging Face model (DeepSpeed's `engine.module`); its names are the ones vLLM
            loads.
        bucket_bytes: budget of one bucket (`rollout.weight_buckets.plan_buckets`).
        gather: under ZeRO-3, `deepspeed.zero.GatheredParameters`: a context manager over a
            list of parameters that holds them whole inside it. None: parameters are whole.
    """

    def __init__(self, model: torch.nn.Module, bucket_bytes: int,
                 gather: Callable[[list], contextlib.AbstractContextManager] | None = None):
        self.named = list(model.named_parameters())
        self.gather = gather
        self.meta = [ParamMeta(name, p.dtype, tuple(getattr(p, "ds_shape", p.shape)))
                     for name, p in self.named]
        self.buckets = plan_buckets(self.meta, bucket_bytes)

    def metadata(self) -> list[ParamMeta]:
        return self.meta

    @property
    def largest_tensor_bytes(self) -> int:
        return max((m.num_bytes for m in self.meta), default=0)

    def iter_buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Each bucket's (name, full tensor) pairs; the tensors are whole only until the next
        bucket is requested (ZeRO-3 releases them then)."""
        for bucket in self.buckets:
            named = [self.named[i] for i in bucket]
            context = self.gather([p for _, p in named]) if self.gather else contextlib.nullcontext()
            with context:
                if torch.cuda.is_available():
                    # the gather wrote on DeepSpeed's stream; vLLM packs on streams of its own
                    torch.cuda.synchronize()
                yield [(name, p.detach()) for name, p in named]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in self.iter_buckets():
            yield from bucket


class ReplicaClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our rollout replicas (Ray actor handles of
    `rollout.worker.RolloutWorker`): each call goes to every replica and waits for all.

    Args:
        replicas: the handles, replica order.
        ranks_per_replica: processes per replica (its tensor-parallel size): NCCL ranks.
    """

    def __init__(self, replicas: list, ranks_per_replica: int = 1):
        self.replicas, self.ranks_per_replica = list(replicas), ranks_per_replica

    @property
    def num_ranks(self) -> int:
        return len(self.replicas) * self.ranks_per_replica

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        # vLLM's NCCL trainer engine puts the workers at rank_offset 1, as for one replica;
        # replica r's workers come after the r replicas before it.
        per_replica = [dict(init_info) for _ in self.replicas]
        for r, info in enumerate(per_replica):
            if "rank_offset" in info:
                info["rank_offset"] += r * self.ranks_per_replica
        self._wait([h.init_weight_transfer_engine.remote(info)
                    for h, info in zip(self.replicas, per_replica)])

    def start_weight_update(self) -> None:
        self._wait([h.start_weight_update.remote() for h in self.replicas])

    def update_weights(self, update_info: dict, buffer=None) -> None:
        """One bucket; `buffer`: an object ref to its bytes (object_store only)."""
        self._wait([h.update_weights.remote(update_info, buffer) for h in self.replicas])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._wait([h.finish_weight_update.remote() for h in self.replicas])

    @staticmethod
    def _wait(refs: list) -> None:
        import ray

        ray.get(refs)


class WeightBroadcast(ABC):
    """Pushes the actor's current weights to every rollout replica. Built on every actor rank;
    `send()` is called on all of them at once."""

    @abstractmethod
    def send(self) -> None:
        """One full sync; returns when every replica serves the new weights."""

    def shutdown(self) -> None:
        """Release the transport (the NCCL group)."""


class ObjectStoreBroadcast(WeightBroadcast):
    """Rank 0 puts one packed bucket at a time in Ray's object store; every replica loads it
    before the next is packed, so the sync holds one bucket beyond the model at any time."""

    def __init__(self, source: ActorWeights, client: ReplicaClient, rank: int):
        self.source, self.client, self.is_sender = source, client, rank == 0
        if self.is_sender:
            client.init_weight_transfer_engine({})

    def send(self) -> None:
        import ray

        if self.is_sender:
            self.client.start_weight_update()
        for bucket in self.source.iter_buckets():  # every rank: ZeRO-3 gathers are collective
            if not self.is_sender:
                continue
            info, buffer = pack_bucket(bucket)
            ref = ray.put(buffer)
            del buffer
            self.client.update_weights(info, ref)
            del ref  # the object store frees the bucket once no replica holds it either
        if self.is_sender:
            self.client.finish_weight_update()


class VllmTransferBroadcast(WeightBroadcast):
    """nccl or ipc: vLLM's trainer-side weight-transfer engine reading `ActorWeights`, packed
    into buffers of `bucket_bytes` (ipc: at least the largest tensor, which must fit one
    buffer). GPU only; not run by the CPU test suite."""

    def __init__(self, backend: str, source: ActorWeights, client: ReplicaClient, rank: int,
                 bucket_bytes: int):
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        if backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            from rl.cluster import free_port, node_address

            # Only rank 0 joins the NCCL group; it is the rendezvous host for the replicas.
            address, port = (node_address(), free_port()) if rank == 0 else ("", 0)
            info = NCCLTrainerInitInfo(master_address=address, master_port=port,
                                       world_size=1 + client.num_ranks, rank=rank, packed=True,
                                       packed_buffer_size_bytes=bucket_bytes)
        elif backend == "ipc":
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

            info = IPCTrainerInitInfo(rank=rank, packed=True, packed_buffer_size_bytes=max(
                bucket_bytes, source.largest_tensor_bytes))
        else:
            raise ValueError(f"no vLLM trainer engine for weight sync {backend!r}")
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

    def send(self) -> None:
        self.engine.send_weights()

    def shutdown(self) -> None:
        self.engine.shutdown()


def make_broadcast(backend: str, source: ActorWeights, replicas: list, ranks_per_replica: int,
                   rank: int, bucket_bytes: int) -> WeightBroadcast:
    """The `WeightBroadcast` of `backend` (a `choose_backend` result) for actor rank `rank`;
    rank 0 connects to the replicas here (nccl: blocks until they joined its group)."""
    client = ReplicaClient(replicas, ranks_per_replica)
    if backend == "object_store":
        return ObjectStoreBroadcast(source, client, rank)
    return VllmTransferBroadcast(backend, source, client, rank, bucket_bytes)
