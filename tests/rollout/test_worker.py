"""The Ray rollout worker on a loopback Ray cluster: generation, and weight sync through the
object store bucket by bucket (the trainer's path: rl.cluster spawns, rl.weight_sync pushes)."""

import pytest
import ray
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl import cluster
from rl.weight_sync import ActorWeights, make_broadcast
from rollout.engine import Sampling, block_script
from rollout.layout import MementoConfig
from rollout.reference import reference_generate
from rollout.tiny_model import build_tiny_model
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.slow

PROMPT = list(b"Weights, then words.")


@pytest.fixture(scope="module", params=[True, False], ids=["in-process", "engine-processes"])
def worker(request, tiny_model_dir):
    ray.init(num_cpus=2, include_dashboard=False)
    placement = cluster.make_placement("rollout", {"CPU": 1}, 1)
    [worker] = cluster.spawn_group("rollout", RolloutWorker, placement, 1, 0, lambda r: dict(
        model_path=str(tiny_model_dir), memento={}, dtype="float32", block_size=32,
        max_model_len=1024, kv_cache_memory_bytes=64 << 20, seed=0,
        in_process=request.param)).handles
    worker.in_process = request.param
    yield worker
    ray.get(worker.shutdown.remote())
    ray.shutdown()


def test_in_process_engine_runs_without_child_processes(worker):
    import psutil
    children = ray.get(worker.__ray_call__.remote(lambda _: len(psutil.Process().children())))
    assert (children == 0) == worker.in_process


def test_update_weights_makes_the_engine_generate_what_the_new_weights_generate(
        worker, tiny_model_dir, tmp_path):
    cfg = MementoConfig.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    script, end = block_script(cfg, [(40, 6), (40, 6)])  # two evictions on the way
    ban = (cfg.block_start, cfg.block_end, cfg.summary_start, cfg.summary_end)
    sampling = Sampling(temperature=0.0, max_tokens=end + 10, script=script, ban_token_ids=ban,
                        ignore_eos=True)

    def greedy(model_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
        ids, _ = reference_generate(model, PROMPT, end + 10, cfg, script=script,
                                    ban_token_ids=ban)
        return model, ids

    _, old_ids = greedy(tiny_model_dir)
    new_model, new_ids = greedy(build_tiny_model(tmp_path / "reseeded", seed=1))
    assert old_ids != new_ids

    before = ray.get(worker.generate.remote([PROMPT], sampling))[0]
    # 4 KiB buckets: every tensor of the tiny model lands in a bucket of its own or shares one
    make_broadcast("object_store", ActorWeights(new_model, 4096), [worker], 1, rank=0,
                   bucket_bytes=4096).send()
    ray.get([worker.sleep.remote(), worker.wake_up.remote()])  # no-ops on CPU, must not break
    after = ray.get(worker.generate.remote([PROMPT], sampling))[0]
    assert before.response_ids == old_ids
    assert after.response_ids == new_ids
    assert after.num_evictions == 2
