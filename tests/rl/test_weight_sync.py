"""Weight sync: which transport, bucket-by-bucket gathers under real ZeRO-3, and the trainer's
object-store path end to end (two ZeRO-3 ranks on Ray into a vLLM CPU engine that then samples
the pushed weights). The nccl and ipc transports need GPUs and are not run here."""

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl.config import Config, from_dict
from rl.weight_sync import ENGINE_BACKEND, ActorWeights, choose_backend

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("requested, device, colocate, chosen", [
    ("auto", "cpu", False, "object_store"),
    ("auto", "cpu", True, "object_store"),
    ("auto", "cuda", True, "ipc"),
    ("auto", "cuda", False, "nccl"),
    ("object_store", "cuda", False, "object_store"),
    ("nccl", "cuda", False, "nccl"),
    ("ipc", "cuda", True, "ipc"),
])
def test_auto_picks_ipc_when_colocated_nccl_across_devices_object_store_on_cpu(
        requested, device, colocate, chosen):
    assert choose_backend(requested, device, colocate) == chosen
    assert chosen in ENGINE_BACKEND


@pytest.mark.parametrize("trainer, message", [
    ({"weight_sync": "nccl"}, "trainer.weight_sync=nccl needs device=cuda"),
    ({"weight_sync": "ipc", "device": "cuda"}, "trainer.weight_sync=ipc needs colocate=true"),
    ({"weight_sync": "nccl", "device": "cuda", "colocate": True},
     "trainer.weight_sync=nccl needs colocate=false"),
    ({"weight_sync_bucket_mb": 0}, "trainer.weight_sync_bucket_mb must be >= 1"),
])
def test_config_rejects_a_transport_that_cannot_work(trainer, message):
    with pytest.raises(ValueError, match=message):
        from_dict(Config, {"trainer": trainer})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def zero3_model(tiny_model_dir):
    """The tiny model under real DeepSpeed ZeRO-3 (gloo, one rank), every parameter partitioned
    (persistence threshold 0: DeepSpeed would otherwise keep these small tensors whole)."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        config={"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}})
    return engine.module, full


@pytest.mark.slow
def test_zero3_gathers_each_bucket_alone_in_order_and_releases_it(zero3_model):
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    model, full = zero3_model
    name_of = {id(p): n for n, p in model.named_parameters()}
    events = []

    @contextlib.contextmanager
    def recording_gather(params):
        with deepspeed.zero.GatheredParameters(params):
            events.append(("gather", [name_of[id(p)] for p in params]))
            yield
        events.append(("release", [name_of[id(p)] for p in params]))

    def whole() -> list[str]:
        return [n for n, p in model.named_parameters() if p.ds_status == ZeroParamStatus.AVAILABLE]

    assert whole() == []  # partitioned: no rank holds a whole parameter between syncs
    source = ActorWeights(model, bucket_bytes=20_000, gather=recording_gather)
    assert len(source.buckets) >= 4
    sent = []
    for bucket in source.iter_buckets():
        names = [n for n, _ in bucket]
        assert whole() == names  # only this bucket is whole while it is sent
        for name, tensor in bucket:
            assert torch.equal(tensor, full[name]), name
        sent += names
    assert whole() == []
    assert sent == list(full)  # every parameter once, in named_parameters order
    buckets = [[sent[i] for i in b] for b in source.buckets]
    assert events == [e for b in buckets for e in (("gather", b), ("release", b))]
    assert [m.shape for m in source.metadata()] == [tuple(t.shape) for t in full.values()]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_two_zero3_ranks_push_their_weights_into_a_running_engine_bucket_by_bucket(
        tiny_model_dir, tmp_path):
    """The trainer's path (PolicyWorker.init_weight_sync / send_weights, 16 KiB buckets):
    the engine starts from other weights, and after one sync it generates greedily exactly what
    the actor's weights generate, so every name, dtype and shape arrived intact."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout.engine import Sampling
    from rollout.layout import MementoConfig
    from rollout.reference import reference_generate
    from rollout.tiny_model import build_tiny_model

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_weight_sync import start_actor_and_engine

    prompt = list(b"Weights in buckets.")
    other = build_tiny_model(tmp_path / "other", seed=1)
    actor, rollout = start_actor_and_engine(tiny_model_dir, other, num_workers=2, zero_stage=3,
                                            bucket_bytes=16 << 10)
    try:
        sampling = Sampling(temperature=0.0, max_tokens=24, ignore_eos=True)
        cfg = MementoConfig.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
        want, _ = reference_generate(model.eval(), prompt, 24, cfg)
        [[before]] = rollout.call("generate", [prompt], sampling)
        assert before.response_ids != want  # the engine starts from other weights

        actor.call("send_weights")
        [[after]] = rollout.call("generate", [prompt], sampling)
        assert after.response_ids == want
    finally:
        rollout.call("shutdown")
        rollout.kill()
        actor.kill()


@pytest.mark.slow
def test_object_store_sync_holds_a_few_buckets_where_the_old_path_held_the_model(tmp_path):
    """Peak extra memory (PSS summed over the trainer, actor, engine and Ray's processes) while
    an 11M-parameter model (43 MiB) syncs in 2 MiB buckets: once warm, the bucketed path adds a
    few buckets (one being packed, one in the object store, the engine's layer in progress),
    where the whole-model path it replaced adds copies of the whole model."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_weight_sync.py"), "--hidden", "256",
         "--layers", "16", "--bucket-mb", "2", "--repeats", "3", "--work-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = {line.split()[1]: float(line.split()[2]) for line in out.stdout.splitlines()
               if line.startswith("RESULT")}
    model_mb = results["model_mb"]
    assert 40 < model_mb < 46
    assert results["bucketed_warm_peak_extra_mb"] < 0.4 * model_mb  # measured: ~5 buckets
    assert results["whole_model_cold_peak_extra_mb"] > 1.5 * model_mb
