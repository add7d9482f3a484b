"""Ray orchestration on loopback: a two-node test cluster, data-parallel ranks across nodes,
and a dead worker reported with its role."""

import numpy as np
import pytest
import ray
import torch

from rl import cluster
from rl.algo_config import AlgoConfig
from rl.batch import RolloutBatch, make_mini_batches
from rl.config import ActorConfig, ModelConfig, OptimConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    test_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    test_cluster.add_node(num_cpus=1)
    test_cluster.wait_for_nodes()
    ray.init(address=test_cluster.address)
    yield test_cluster
    ray.shutdown()
    test_cluster.shutdown()


class NodeProbe:
    def node(self):
        return ray.get_runtime_context().get_node_id()


def test_spread_group_lands_on_both_nodes(two_node_cluster):
    placement = cluster.make_placement("probe", {"CPU": 1}, 2, "SPREAD")
    group = cluster.spawn_group("probe", NodeProbe, placement, 1, 0, lambda r: {})
    assert len(set(group.call("node"))) == 2
    group.kill()


def test_data_parallel_actor_ranks_on_two_nodes_stay_in_sync(two_node_cluster, tiny_model_dir):
    actor_cfg = ActorConfig(num_workers=2, zero_stage=2, ppo_max_token_len_per_gpu=256,
                            optim=OptimConfig(lr=1e-2))
    group = cluster.spawn_policy_group("actor", str(tiny_model_dir), ModelConfig(path="x"),
                                       actor_cfg, AlgoConfig(), True, "cpu", 0, strategy="SPREAD")
    try:
        batch = RolloutBatch.from_sequences([[10, 11], [12], [13, 14, 15], [16]],
                                            [[20, 21, 22], [23, 24], [25], [26, 27, 28, 29]])
        batch.compute_layout(None)
        per_rank = make_mini_batches(batch, [np.arange(4)], 8, num_ranks=2)
        # each rank trains on different sequences; ZeRO-2 reduces gradients across the nodes
        assert {i for mb in per_rank[0][0].micro_batches for i in mb.packed.indices} != \
               {i for mb in per_rank[1][0].micro_batches for i in mb.packed.indices}
        metrics = group.call_each("sft_update", [(m,) for m in per_rank])
        assert all(m["grad_norm"] > 0 for m in metrics)
        weights = group.call_each("weights_checksum", [(), ()])
        assert weights[0] == pytest.approx(weights[1], abs=0, rel=1e-7)
    finally:
        group.kill()


def test_dead_worker_is_reported_with_its_role(two_node_cluster):
    placement = cluster.make_placement("doomed", {"CPU": 1}, 1)
    group = cluster.spawn_group("rollout", NodeProbe, placement, 1, 0, lambda r: {})
    ray.kill(group.handles[0])
    with pytest.raises(cluster.WorkerFailed, match="rollout worker failed"):
        group.call("node")
    ray.util.remove_placement_group(placement)
