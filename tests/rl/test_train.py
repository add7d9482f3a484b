"""The GRPO trainer end to end on CPU: real Ray (loopback), vLLM engine, DeepSpeed, rewards."""

from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rl.checkpoint import read_json
from rl.cluster import WorkerFailed
from rl.config import Config, from_dict
from rl.train import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
TOY = str(Path(__file__).with_name("toy_reward.py")) + ":digit_share"


def tiny_config(run_dir, model_dir, steps, **sections) -> Config:
    values = {
        "data": {"train_batch_size": 2, "max_prompt_length": 128, "max_response_length": 48},
        "actor_rollout_ref": {
            "model": {"path": str(model_dir)},
            "actor": {"ppo_mini_batch_size": 2, "ppo_max_token_len_per_gpu": 512,
                      "optim": {"lr": 2e-3}},
            "rollout": {"n": 4, "kv_cache_memory_bytes": 64 << 20}},
        "reward": {"custom_function": TOY, "math_workers": 1, "code_workers": 1},
        "trainer": {"total_training_steps": steps, "save_freq": 1, "default_local_dir": str(run_dir),
                    "logger": ["console", "wandb"]},
    }
    for section, patch in sections.items():
        values.setdefault(section, {}).update(patch)
    return from_dict(Config, values)


def run(cfg) -> list[dict]:
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def hf_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(run_dir) / "hf" / "model.safetensors")


def test_two_steps_equal_one_step_then_resume_then_one_step(tiny_model_dir, tmp_path):
    straight = run(tiny_config(tmp_path / "a", tiny_model_dir, steps=2))
    assert len(straight) == 2
    metrics = straight[-1]
    for key in ("reward/mean", "response/length_mean", "kv/peak_ratio_mean", "actor/pg_loss",
                "actor/grad_norm", "mismatch/abs_diff_mean", "time/gen", "perf/tokens_per_second"):
        assert key in metrics, key
    assert metrics["actor/grad_norm"] > 0  # the toy reward gives a learning signal
    assert metrics["mismatch/abs_diff_mean"] < 1e-4  # trainer scores what the engine sampled
    assert "time/old_logprob" not in metrics  # one optimizer step: its forward is the old policy
    assert metrics["actor/entropy_old"] > 0

    run(tiny_config(tmp_path / "b", tiny_model_dir, steps=1))
    resumed = run(tiny_config(tmp_path / "b", tiny_model_dir, steps=2))
    assert len(resumed) == 1  # only step 2 ran after the resume
    # the engine restarted from the initial weights and samples the resumed ones: synced on resume
    assert resumed[0]["mismatch/abs_diff_mean"] < 1e-4
    a, b = hf_weights(tmp_path / "a"), hf_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-000001", "step-000002"]
    assert list((tmp_path / "b" / "wandb").glob("offline-run-*"))
    AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "hf")  # the export loads


def test_two_mini_batches_score_the_old_policy_before_updating(tiny_model_dir, tmp_path):
    [metrics] = run(tiny_config(tmp_path / "minis", tiny_model_dir, steps=1,
                                data={"train_batch_size": 4, "max_prompt_length": 128,
                                      "max_response_length": 24},
                                trainer={"save_freq": 0, "logger": ["console"]}))
    assert metrics["time/old_logprob"] > 0
    assert metrics["mismatch/abs_diff_mean"] < 1e-4
    assert metrics["actor/entropy_old"] > 0


def test_paper_objective_with_masked_importance_sampling(tiny_model_dir, tmp_path):
    """The paper's normalisations with geometric masked IS: the correction needs the old
    log-probs first (own pass, even at one optimizer step), and the engine and the trainer score
    the samples alike under the layout, so even a 0.1% band rejects nothing."""
    [metrics] = run(tiny_config(tmp_path / "paper", tiny_model_dir, steps=1,
                                algorithm={"adv_estimator": "reinforce_plus_plus_baseline",
                                           "loss_agg_mode": "group-mean-token-mean", "loss_mode": "cispo",
                                           "rollout_rs": "geometric", "rollout_rs_threshold": 1.001},
                                trainer={"save_freq": 0, "logger": ["console"]}))
    assert metrics["time/old_logprob"] > 0
    assert metrics["mismatch/rs_masked_frac"] == 0.0
    assert metrics["actor/grad_norm"] > 0 and "actor/pg_clipfrac" in metrics


def test_rejected_tokens_leave_the_loss_before_the_advantages():
    """Trainer.correct_rollout drops the tokens outside the band from the loss mask only."""
    from types import SimpleNamespace

    from rl.algo_config import AlgoConfig
    from rl.batch import RolloutBatch

    batch = RolloutBatch.from_sequences([[1], [2]], [[3, 4, 5], [6, 7]])
    batch.forced_mask[0, 2] = True  # an engine-forced token: no loss either way
    batch.old_logprobs = torch.tensor([[0.0, -1.0, -9.0], [-0.1, 0.0, 0.0]])  # r = [1, 1/e, ~], [0.9, 1]
    trainer = SimpleNamespace(cfg=SimpleNamespace(algorithm=AlgoConfig(rollout_rs="token", rollout_rs_threshold=1.5)))
    _, metrics = Trainer.correct_rollout(trainer, batch)
    # band [2/3, 1.5]: only r = 1/e leaves; the padding slot and the forced token keep their marks
    assert batch.loss_mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert batch.response_mask.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    assert metrics["mismatch/rs_masked_frac"] == pytest.approx(1 / 4)
    assert "mismatch/abs_diff_mean" in metrics


def test_colocated_engine_sleeps_through_the_update_and_samples_the_new_weights(tiny_model_dir,
                                                                               tmp_path):
    history = run(tiny_config(tmp_path / "colocate", tiny_model_dir, steps=2,
                              trainer={"colocate": True, "save_freq": 0, "logger": ["console"]}))
    # step 2's samples come from the weights step 1 pushed into the woken engine
    assert [h["mismatch/abs_diff_mean"] < 1e-4 for h in history] == [True, True], history
    assert history[-1]["actor/grad_norm"] > 0


def test_reward_rises_on_a_learnable_toy_reward(tiny_model_dir, tmp_path):
    """The paper's algorithm: CISPO with a KL loss to a reference worker."""
    cfg = tiny_config(tmp_path / "toy", tiny_model_dir, steps=8,
                      data={"train_batch_size": 4, "max_prompt_length": 128,
                            "max_response_length": 32},
                      algorithm={"loss_mode": "cispo", "use_kl_loss": True, "kl_loss_coef": 0.001},
                      trainer={"save_freq": 0, "logger": ["console"]})
    history = run(cfg)
    assert all("actor/kl_loss" in h for h in history)
    rewards = [h["reward/mean"] for h in history]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.05, rewards


def test_dead_worker_is_reported_and_the_last_checkpoint_survives(tiny_model_dir, tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "dead", tiny_model_dir, steps=3))
    try:
        trainer.step()
        saved = trainer.save()
        ray.kill(trainer.actor.handles[0])
        with pytest.raises(WorkerFailed, match="actor worker failed"):
            trainer.step()
        assert trainer.checkpoints.latest() == saved
        assert (saved / "trainer_state.json").exists() and (saved / "actor").is_dir()
    finally:
        trainer.close()


# trainer.overlap_rollout: step k+1 is generated during step k's update, one step off-policy.

OVERLAP_STEPS = 3


@pytest.fixture(scope="module")
def overlapped_run(tiny_model_dir, tmp_path_factory):
    """(history, run dir) of a 3-step overlapped run with dynamic sampling, a checkpoint a step."""
    run_dir = tmp_path_factory.mktemp("overlap")
    cfg = tiny_config(run_dir, tiny_model_dir, steps=OVERLAP_STEPS,
                      data={"train_batch_size": 2, "max_prompt_length": 128,
                            "max_response_length": 24},
                      algorithm={"filter_groups": {"enable": True}},
                      trainer={"overlap_rollout": True, "max_checkpoints_to_keep": OVERLAP_STEPS,
                               "logger": ["console"]})
    return run(cfg), run_dir


def test_next_batch_is_sampled_by_the_weights_before_the_update(overlapped_run):
    history, _ = overlapped_run
    assert len(history) == OVERLAP_STEPS
    gaps = [h["mismatch/abs_diff_mean"] for h in history]
    assert gaps[0] < 1e-4, gaps  # the first batch is generated in the step, by the current weights
    assert min(gaps[1:]) > 1e-3, gaps  # later ones by the weights one update older
    assert "time/gen_background" not in history[0]
    for h in history[1:]:
        assert h["time/gen_background"] > 0 and "time/sync_weights" in h


def test_checkpoints_resume_before_the_prompts_of_the_batch_in_flight(overlapped_run):
    """Checkpoint k's loader state is where step k drew its first prompts (gen/rounds batches a
    step): the batch in flight is not saved, and a resume draws its prompts again."""
    history, run_dir = overlapped_run
    for k in range(1, OVERLAP_STEPS + 1):
        loader = read_json(run_dir / "checkpoints" / f"step-{k:06d}" / "trainer_state.json")["loader"]
        drawn = sum(int(h["gen/rounds"]) for h in history[:k])
        assert (loader["epoch"], loader["batch_in_epoch"]) == (0, drawn), (k, loader)
