"""Two-stage SFT end to end: full attention, then the memento layout from the best checkpoint."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.config import ActorConfig, ModelConfig, OptimConfig
from rl.data.arith import ArithConfig, write_arith_datasets
from rl.sft.train import SFTConfig, run_sft

pytestmark = pytest.mark.slow


def test_two_stage_sft_lowers_validation_loss_and_exports_a_loadable_model(ray_local, tiny_model_dir,
                                                                         tmp_path):
    files = write_arith_datasets(tmp_path / "data", n_train=48, n_val=8,
                                 cfg=ArithConfig(max_steps=2))
    common = dict(train_files=[str(files.sft_train)], val_files=[str(files.sft_val)], max_length=384,
                  batch_size=8, eval_every=3,
                  actor=ActorConfig(ppo_max_token_len_per_gpu=1536, optim=OptimConfig(lr=3e-3)))
    stage1 = run_sft(SFTConfig(model=ModelConfig(path=str(tiny_model_dir)), stage="full",
                               output_dir=str(tmp_path / "sft1"), **common), log=lambda *_: None)
    losses = [h["val_loss"] for h in stage1.history if "val_loss" in h]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert {h["lr"] for h in stage1.history} == {3e-3}  # constant by default
    common["actor"] = ActorConfig(ppo_max_token_len_per_gpu=1536, optim=OptimConfig(
        lr=3e-3, lr_scheduler_type="cosine", min_lr_ratio=0.1))
    stage2 = run_sft(SFTConfig(model=ModelConfig(path=str(stage1.best_dir)), stage="memento",
                               output_dir=str(tmp_path / "sft2"), **common), log=lambda *_: None)
    assert stage2.best_val_loss < float("inf")
    lrs = [h["lr"] for h in stage2.history]  # the rate for the next step: cosine over the run
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(3e-4), lrs
    model = AutoModelForCausalLM.from_pretrained(stage2.best_dir)
    tokenizer = AutoTokenizer.from_pretrained(stage2.best_dir)
    assert tokenizer.convert_tokens_to_ids("<|summary_end|>") < model.config.vocab_size
    assert tokenizer.chat_template


def test_a_rank_gets_as_many_torch_threads_as_cpus_it_reserves(ray_local, tiny_model_dir):
    """Ray sizes each rank's thread pool from its CPU reservation (`cpus_per_worker`), so a
    single SFT rank on a laptop can use every core."""
    import ray
    import torch

    from rl import cluster
    from rl.algo_config import AlgoConfig

    group = cluster.spawn_policy_group("threads", str(tiny_model_dir), ModelConfig(path="x"),
                                       ActorConfig(cpus_per_worker=2), AlgoConfig(), True, "cpu", 0)
    try:
        threads = ray.get(group.handles[0].__ray_call__.remote(lambda worker: torch.get_num_threads()))
        assert threads == 2
    finally:
        group.kill()
