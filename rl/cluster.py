"""Ray plumbing for the controller: connect, place worker groups, call them in lockstep.

Single node: the controller starts a local Ray bound to 127.0.0.1. Many nodes: start Ray yourself
(`ray start --head` on one node, `ray start --address=<head>:6379` on the others) and set
`trainer.ray_address=auto` (or host:port); placement groups then spread workers over the nodes.

Each worker group lives in its own placement group, one bundle per rank. With
`trainer.colocate=true` the rollout engines share the actor's bundles (fractional GPU) and sleep
while the actor trains.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl import shutdown


def init_ray(address: str | None, log_to_driver: bool = True) -> None:
    """Connect once; later calls are no-ops, so the first caller's `log_to_driver` (workers'
    output in this console) holds for the run."""
    if ray.is_initialized():
        return
    if address is None:
        # Keep every port on loopback unless the user runs a real cluster. CPUs are scheduling
        # slots here: a laptop must still fit actor + reference + rollout workers, so advertise
        # at least 8 (the OS shares the real cores).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=max(os.cpu_count() or 1, 8), include_dashboard=False,
                 log_to_driver=log_to_driver, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=log_to_driver)
    shutdown.restore_signal_handlers()  # ray.init replaced SIGTERM's with a stack dump


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerGroup:
    """Ray actor handles of one role, rank-ordered."""

    name: str
    handles: list[Any]
    placement: Any = None

    def __len__(self) -> int:
        return len(self.handles)

    def call(self, method: str, *args, **kwargs) -> list:
        """Same arguments to every rank; blocks until all return (errors name the role)."""
        return self.gather([getattr(h, method).remote(*args, **kwargs) for h in self.handles])

    def call_each(self, method: str, per_rank_args: list[tuple]) -> list:
        """Rank r gets per_rank_args[r]."""
        refs = [getattr(h, method).remote(*a) for h, a in zip(self.handles, per_rank_args)]
        return self.gather(refs)

    def gather(self, refs: list) -> list:
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as err:
            raise WorkerFailed(self.name, err) from err

    def kill(self, remove_placement: bool = True) -> None:
        for h in self.handles:
            ray.kill(h, no_restart=True)
        if remove_placement and self.placement is not None:
            ray.util.remove_placement_group(self.placement)


class WorkerFailed(RuntimeError):
    def __init__(self, role: str, cause: Exception):
        super().__init__(f"{role} worker failed: {cause}")
        self.role = role


def make_placement(name: str, bundle: dict[str, float], count: int, strategy: str = "PACK"):
    """A placement group of `count` identical bundles; PACK fills nodes in turn, SPREAD spreads."""
    bundle = {k: v for k, v in bundle.items() if v > 0}  # Ray rejects zero-sized resources
    group = placement_group([bundle] * count, strategy=strategy, name=name)
    ray.get(group.ready(), timeout=600)
    return group


def spawn_group(name: str, cls: type, placement, num_cpus: float, num_gpus: float,
                kwargs_for_rank) -> WorkerGroup:
    """Start one Ray actor of `cls` per bundle of `placement`; rank r gets kwargs_for_rank(r)."""
    remote_cls = ray.remote(cls)
    handles = []
    for rank in range(placement.bundle_count):
        strategy = PlacementGroupSchedulingStrategy(placement_group=placement,
                                                    placement_group_bundle_index=rank)
        handles.append(remote_cls.options(num_cpus=num_cpus, num_gpus=num_gpus,
                                          scheduling_strategy=strategy)
                       .remote(**kwargs_for_rank(rank)))
    return WorkerGroup(name, handles, placement)


def rendezvous(placement) -> tuple[str, int]:
    """(node address, free port) on the node of the group's first bundle: the torch.distributed
    master for ranks that may live on several nodes."""
    probe = ray.remote(lambda: (node_address(), free_port()))
    strategy = PlacementGroupSchedulingStrategy(placement_group=placement,
                                                placement_group_bundle_index=0)
    return ray.get(probe.options(num_cpus=0, scheduling_strategy=strategy).remote())


def spawn_policy_group(name: str, model_path: str, model_cfg, actor_cfg, algo, trainable: bool,
                       device: str, seed: int, strategy: str = "PACK",
                       gpu_share: float = 1.0) -> WorkerGroup:
    """Data-parallel PolicyWorker ranks (actor, reference or SFT) with a torch.distributed
    rendezvous on the first rank's node."""
    from rl.actor import PolicyWorker

    gpu = 1.0 if device == "cuda" else 0.0
    placement = make_placement(name, {"CPU": actor_cfg.cpus_per_worker, "GPU": gpu},
                               actor_cfg.num_workers, strategy)
    master_addr, master_port = rendezvous(placement)
    group = spawn_group(
        name, PolicyWorker, placement, actor_cfg.cpus_per_worker, gpu * gpu_share,
        lambda r: dict(model_path=model_path, model_cfg=model_cfg, actor_cfg=actor_cfg,
                       algo=algo, trainable=trainable, rank=r, world_size=actor_cfg.num_workers,
                       master_addr=master_addr, master_port=master_port, device=device,
                       seed=seed))
    group.call("ping")  # surfaces constructor errors now, naming the role
    return group


def node_address() -> str:
    """This process's node IP as Ray sees it (127.0.0.1 on a loopback-only cluster)."""
    return ray.util.get_node_ip_address()
