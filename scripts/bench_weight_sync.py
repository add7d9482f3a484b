"""Weight sync on CPU: the whole-model path it replaced against the bucketed object-store path.

One actor rank (DeepSpeed, gloo) and one rollout engine (vLLM CPU, in-process, as the trainer
starts them) on a local Ray; a random Qwen3-architecture model (~100M parameters by default,
float32). Each sync pushes the actor's weights into the running engine:

- whole model (the trainer's sync before rl/weight_sync.py): the actor gathers every tensor, the
  controller fetches them and puts them in Ray's object store, the replica writes a safetensors
  file in /dev/shm and vLLM reloads from it;
- bucketed (`trainer.weight_sync=object_store`): `PolicyWorker.send_weights`, one packed bucket
  of --bucket-mb at a time through the object store into vLLM's weight-transfer engine.

Peak extra memory is the highest PSS, summed over this process and the processes under it that
take part (Ray's raylet, which holds the object store, the actor, the engine), sampled every
10 ms during a sync, minus the sum just before it. Each path gets a fresh Ray, actor and engine; reported for both, side by side:
the first sync's peak (cold), then the median time of --repeats syncs (run without the memory
sampler) and the least peak of --repeats more (warm).

    python scripts/bench_weight_sync.py                      # ~100M parameters, 64 MiB buckets
    python scripts/bench_weight_sync.py --hidden 256 --layers 4 --bucket-mb 2   # seconds

Prints `RESULT <name> <value> <unit> <note>` lines (scripts/bench_all.py collects them).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Buffers above 64 KiB get their own mapping, returned to the OS when freed (glibc otherwise
# raises this threshold as big buffers come and go and keeps freed ones): PSS then counts what
# a sync holds, not what the allocator kept from earlier ones. Ray workers inherit it.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 << 10))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# Processes a sync runs in: Ray workers (actor, rollout worker), the raylet (it holds the object
# store), vLLM's own processes. Ray's other daemons (GCS, dashboard agents) only add noise.
TAKING_PART = ("ray::", "raylet", "VLLM", "EngineCore")


class PeakMemory:
    """Highest PSS (bytes) summed over this process tree while the block runs, above its start."""

    def __init__(self, interval_s: float = 0.01):
        self.interval_s, self.peak = interval_s, 0
        self._stop = threading.Event()

    @staticmethod
    def total_pss() -> int:
        import psutil

        me = psutil.Process()
        total = me.memory_full_info().pss
        for proc in me.children(recursive=True):
            try:
                if proc.name().startswith(TAKING_PART):
                    total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.total_pss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = self.total_pss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.total_pss())

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.start


def whole_model_sync(actor, rollout) -> None:
    """The sync this project ran before rl/weight_sync.py, step for step."""
    import ray

    weights = actor.call("named_weights")[0]
    ref = ray.put(list(weights.items()))
    del weights
    rollout.gather([h.__ray_call__.remote(load_through_shm_file, ref) for h in rollout.handles])


def load_through_shm_file(worker, named_tensors) -> None:
    """Inside the rollout worker: the whole model to a safetensors file in /dev/shm, reloaded."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in named_tensors}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"))
        del tensors
        worker.engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})


def measure(sync, repeats: int) -> dict[str, float]:
    """Peak extra bytes of the first sync (cold: includes one-time costs such as Ray's object
    store faulting in its pages), then `repeats` warm syncs timed (median) and `repeats` more
    whose peak is sampled (the least: the processes' background threads allocate now and then,
    which lands in single syncs). Timed syncs run without the sampler, whose reads of /proc
    slow the processes it reads."""
    def peak_extra() -> int:
        with PeakMemory() as memory:
            sync()
        return memory.extra_bytes

    cold_extra = peak_extra()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync()
        times.append(time.perf_counter() - start)
    return {"cold_extra": cold_extra, "warm_s": statistics.median(times),
            "warm_extra": min(peak_extra() for _ in range(repeats))}


def start_actor_and_engine(trained: Path, served: Path, num_workers: int, zero_stage: int,
                           bucket_bytes: int):
    """Actor ranks (DeepSpeed on gloo) holding `trained` and one in-process vLLM CPU engine
    serving `served`, connected for object-store weight sync (Ray must be initialised); also
    used by tests/rl/test_weight_sync.py."""
    from rl import cluster
    from rl.algo_config import AlgoConfig
    from rl.config import ActorConfig, ModelConfig
    from rl.weight_sync import ENGINE_BACKEND
    from rollout.worker import RolloutWorker

    actor = cluster.spawn_policy_group(
        "actor", str(trained), ModelConfig(path=str(trained)),
        ActorConfig(num_workers=num_workers, zero_stage=zero_stage, ppo_max_token_len_per_gpu=256),
        AlgoConfig(), True, "cpu", 0)
    placement = cluster.make_placement("rollout", {"CPU": 1}, 1)
    rollout = cluster.spawn_group("rollout", RolloutWorker, placement, 1, 0, lambda r: dict(
        model_path=str(served), dtype="float32", block_size=32, max_model_len=256,
        kv_cache_memory_bytes=32 << 20, seed=0, in_process=True,
        weight_transfer_backend=ENGINE_BACKEND["object_store"]))
    actor.call("init_weight_sync", "object_store", rollout.handles, 1, bucket_bytes)
    return actor, rollout


def run_path(path: str, trained: Path, served: Path, bucket_bytes: int, repeats: int
             ) -> tuple[dict[str, float], int]:
    """A fresh local Ray, one actor rank and one engine (serving other weights), then the
    syncs of `path` ("bucketed" or "whole"); returns the measurements and the parameter count."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    try:
        actor, rollout = start_actor_and_engine(trained, served, 1, 0, bucket_bytes)
        num_params = ray.get(actor.handles[0].__ray_call__.remote(
            lambda w: sum(p.numel() for p in w.model.parameters())))
        sync = ((lambda: actor.call("send_weights")) if path == "bucketed"
                else (lambda: whole_model_sync(actor, rollout)))
        result = measure(sync, repeats)
        rollout.call("shutdown")
    finally:
        ray.shutdown()
    return result, num_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3,
                        help="warm syncs timed, and as many more sampled for memory")
    parser.add_argument("--work-dir", default=None, help="where the models go (default: a temp dir)")
    args = parser.parse_args()

    from rollout.tiny_model import build_tiny_model

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_weight_sync_"))
    shape = dict(hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                 num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                 num_key_value_heads=max(args.hidden // 256, 1), head_dim=64,
                 max_position_embeddings=512, initializer_range=0.02)
    trained = build_tiny_model(work / "trained", seed=0, **shape)
    served = build_tiny_model(work / "served", seed=1, **shape)
    # Each path in its own fresh Ray, actor and engine: memory one path frees stays with the
    # processes and would flatter the other.
    bucketed, num_params = run_path("bucketed", trained, served, args.bucket_mb << 20, args.repeats)
    whole, _ = run_path("whole", trained, served, args.bucket_mb << 20, args.repeats)

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mb = 2**20
    print(f"RESULT model_params_m {num_params / 1e6:.1f} M fp32, {args.bucket_mb} MiB buckets, "
          f"{os.cpu_count()} cores {cpu}")
    print(f"RESULT model_mb {num_params * 4 / mb:.1f} MiB fp32 weights")
    print(f"RESULT whole_model_warm_sync_s {whole['warm_s']:.3f} s median of {args.repeats}")
    print(f"RESULT bucketed_warm_sync_s {bucketed['warm_s']:.3f} s median of {args.repeats}")
    print(f"RESULT warm_sync_time_ratio {whole['warm_s'] / bucketed['warm_s']:.2f} "
          f"x whole-model / bucketed")
    for phase, what in (("cold", "first sync"), ("warm", f"least of {args.repeats} syncs")):
        print(f"RESULT whole_model_{phase}_peak_extra_mb {whole[phase + '_extra'] / mb:.1f} MiB "
              f"PSS over the processes, {what}")
        print(f"RESULT bucketed_{phase}_peak_extra_mb {bucketed[phase + '_extra'] / mb:.1f} MiB "
              f"PSS over the processes, {what}")
        print(f"RESULT {phase}_peak_extra_ratio "
              f"{whole[phase + '_extra'] / max(bucketed[phase + '_extra'], 1):.2f} x whole-model / bucketed")


if __name__ == "__main__":
    main()
