"""PolicyWorker on one rank (DeepSpeed on gloo, CPU): log-probs, RL and SFT updates, checkpoints."""

import numpy as np
import pytest
import torch

from rl.algo_config import AlgoConfig
from rl.batch import RolloutBatch, make_micro_batches, make_mini_batches
from rl.config import ActorConfig, ModelConfig, OptimConfig
from rl.losses import rollout_rejection_mask
from rollout.layout import MementoConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def layout(tiny_model_dir):
    from transformers import AutoTokenizer
    return MementoConfig.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))


def make_worker(path, trainable=True, port=29611, lr=1e-2, zero_stage=0, algo=None):
    from rl.actor import PolicyWorker
    cfg = ActorConfig(zero_stage=zero_stage, ppo_max_token_len_per_gpu=256, optim=OptimConfig(lr=lr))
    return PolicyWorker(str(path), ModelConfig(path=str(path)), cfg, algo or AlgoConfig(),
                        trainable=trainable, master_port=port)


def scripted_batch(layout):
    bs, be, ss, se = layout.block_start, layout.block_end, layout.summary_start, layout.summary_end
    prompts = [[10, 11, 12], [13, 14]]
    responses = [[bs, 40, 41, 42, be, ss, 50, se, 60, 61], [70, 71, 72, 73]]
    batch = RolloutBatch.from_sequences(prompts, responses)
    batch.compute_layout(layout)
    return batch


def response_logprobs(worker, batch, max_tokens=256):
    from rl.train import scatter_responses
    (mbs,) = make_micro_batches(batch, max_tokens)
    return scatter_responses(batch, mbs, worker.compute_logprobs(mbs, 1.0), False)[0]


def test_logprobs_equal_a_dense_masked_forward(tiny_model_dir, layout):
    """The worker's packed log-probs equal an eager forward of each sequence alone with a float
    mask built from evict_at (the definition of the layout)."""
    from transformers import AutoModelForCausalLM
    worker = make_worker(tiny_model_dir, trainable=False)
    batch = scripted_batch(layout)
    got = response_logprobs(worker, batch)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    for b in range(len(batch)):
        seq = batch.prompt_ids[b] + batch.response_ids[b]
        ev = torch.as_tensor(batch.evict_at[b])
        i, j = torch.arange(len(seq))[:, None], torch.arange(len(seq))[None, :]
        mask = torch.where((j <= i) & (i < ev[None, :]), 0.0, float("-inf"))[None, None]
        with torch.no_grad():
            logits = model(torch.tensor([seq]), attention_mask=mask).logits[0].float()
        p = len(batch.prompt_ids[b])
        want = torch.log_softmax(logits[p - 1:-1], -1).gather(1, torch.tensor(seq[p:])[:, None])[:, 0]
        torch.testing.assert_close(got[b, :len(want)], want, atol=1e-5, rtol=1e-5)
    # and the memento layout really matters: causal attention scores differently
    causal = scripted_batch(layout)
    causal.compute_layout(None)
    causal_logprobs = response_logprobs(worker, causal)
    assert (causal_logprobs[0] - got[0]).abs().max() > 1e-3
    # so the rollout correction must take the ratio under the layout: against a memento engine's
    # log-probs (here the same numbers) a tight band keeps every token, causal scores lose some
    sampler = got.clone()
    keep, _ = rollout_rejection_mask(got, sampler, batch.loss_mask, "token", 1.0001)
    assert torch.equal(keep, batch.loss_mask.bool())
    keep, metrics = rollout_rejection_mask(causal_logprobs, sampler, batch.loss_mask, "token", 1.0001)
    assert metrics["mismatch/rs_masked_frac"] > 0
    assert torch.equal(keep[1], batch.loss_mask[1].bool())  # row 1 has no block: no mismatch


def rl_step_inputs(batch, advantages):
    batch.old_logprobs = torch.zeros(batch.response_mask.shape)
    batch.advantages = advantages[:, None] * batch.loss_mask
    return make_mini_batches(batch, [np.arange(len(batch))], 256, 1)[0]


def test_rl_update_moves_logprobs_with_the_advantage_and_resumes_exactly(tiny_model_dir, layout, tmp_path):
    worker = make_worker(tiny_model_dir, port=29612)
    batch = scripted_batch(layout)
    before = response_logprobs(worker, batch)
    batch.old_logprobs = before
    minis = rl_step_inputs(batch, torch.tensor([1.0, -1.0]))
    for mini in minis:
        for tmb in mini.micro_batches:
            tmb.old_logprobs = before[tmb.packed.indices][:, :tmb.loss_mask.shape[1]]
    metrics, _ = worker.update(minis, 1.0)
    after = response_logprobs(worker, batch)
    assert metrics["grad_norm"] > 0
    mask = batch.loss_mask.bool()
    assert (after - before)[0][mask[0]].sum() > 0  # positive advantage: more likely
    assert (after - before)[1][mask[1]].sum() < 0  # negative advantage: less likely

    # checkpoint, one more step; then reload into a fresh worker and take the same step
    worker.save_checkpoint(str(tmp_path / "ckpt"))
    worker.update(minis, 1.0)
    continued = {n: p.detach().clone() for n, p in worker.model.named_parameters()}
    del worker
    resumed = make_worker(tiny_model_dir, port=29613)
    resumed.load_checkpoint(str(tmp_path / "ckpt"))
    resumed.update(minis, 1.0)
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param.detach(), continued[name], atol=0, rtol=0)


def test_on_policy_update_scores_its_own_forward_as_the_old_policy(tiny_model_dir, layout):
    """With old_logprobs_from_forward (the trainer's one-step shortcut) the update equals one
    given the separately computed old log-probs, and returns those log-probs and the entropy;
    across several micro-batches and with an empty response."""
    from rl.train import scatter_responses
    bs, be, ss, se = layout.block_start, layout.block_end, layout.summary_start, layout.summary_end
    batch = RolloutBatch.from_sequences(
        [[10, 11, 12], [13, 14], [15, 16, 17]],
        [[bs, 40, 41, 42, be, ss, 50, se, 60, 61], [], [70, 71, 72, 73]])
    batch.compute_layout(layout)
    batch.advantages = torch.tensor([1.0, 0.5, -1.0])[:, None] * batch.loss_mask
    given, shortcut = (make_worker(tiny_model_dir, port=port) for port in (29615, 29616))
    before = response_logprobs(given, batch, max_tokens=16)

    batch.old_logprobs = before
    (minis,) = make_mini_batches(batch, [np.arange(len(batch))], 16, 1)
    assert len(minis[0].micro_batches) >= 2
    with pytest.raises(ValueError, match="old_logprobs_from_forward"):
        given.update(minis, 1.0, old_logprobs_from_forward=True)  # they carry old log-probs
    want, none = given.update(minis, 1.0)
    assert none == []
    batch.old_logprobs = None
    (minis,) = make_mini_batches(batch, [np.arange(len(batch))], 16, 1)
    with pytest.raises(ValueError, match="old_logprobs_from_forward"):
        shortcut.update(minis, 1.0)  # no old log-probs and no flag: refused, not guessed
    with pytest.raises(ValueError, match="one optimizer step"):
        shortcut.update(minis * 2, 1.0, old_logprobs_from_forward=True)
    got, scored = shortcut.update(minis, 1.0, old_logprobs_from_forward=True)

    assert got["pg_loss"] == pytest.approx(want["pg_loss"], abs=1e-6)
    mbs = [tmb.packed for tmb in minis[0].micro_batches]
    logprobs, entropy = scatter_responses(batch, mbs, scored, with_entropy=True)
    torch.testing.assert_close(logprobs, before, atol=1e-5, rtol=0)
    assert (entropy[batch.loss_mask.bool()] > 0).all()
    for (name, p), q in zip(shortcut.model.named_parameters(), given.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_group_total_loss_is_the_same_whatever_the_micro_batching(tiny_model_dir, layout):
    """group-mean-token-mean through DeepSpeed's gradient accumulation: micro-batches that split a
    group give the same pg_loss and gradient norm as one micro-batch holding the whole mini-batch
    (the normalisers are the mini-batch's, not the micro-batch's)."""
    bs, be, ss, se = layout.block_start, layout.block_end, layout.summary_start, layout.summary_end
    batch = RolloutBatch.from_sequences(
        [[10, 11, 12], [13, 14], [15, 16, 17], [18, 19]],
        [[bs, 40, 41, 42, be, ss, 50, se, 60, 61], [70, 71], [72, 73, 74, 75, 76], [77]],
        group_ids=[0, 0, 1, 1])
    batch.compute_layout(layout)
    batch.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * batch.loss_mask
    algo = AlgoConfig(loss_mode="cispo", loss_agg_mode="group-mean-token-mean")
    # lr 1e-30: the first update leaves the float32 weights as they were, so one worker scores both
    worker = make_worker(tiny_model_dir, port=29617, lr=1e-30, algo=algo)
    batch.old_logprobs = response_logprobs(worker, batch)
    (whole,) = make_mini_batches(batch, [np.arange(len(batch))], 256, 1)
    (pieces,) = make_mini_batches(batch, [np.arange(len(batch))], 12, 1)
    assert len(whole[0].micro_batches) == 1 and len(pieces[0].micro_batches) >= 3
    want, _ = worker.update(whole, 1.0)
    got, _ = worker.update(pieces, 1.0)
    assert want["grad_norm"] > 0
    assert got["pg_loss"] == pytest.approx(want["pg_loss"], abs=1e-6)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4)


def test_sft_update_lowers_the_completion_loss(tiny_model_dir, layout):
    worker = make_worker(tiny_model_dir, port=29614, lr=3e-3)
    batch = scripted_batch(layout)
    minis = make_mini_batches(batch, [np.arange(len(batch))], 256, 1)[0]
    first = worker.sft_update(minis)["sft_loss"]
    for _ in range(5):
        last = worker.sft_update(minis)["sft_loss"]
    assert last < first


def test_lr_schedule_warms_up_then_holds_or_decays_to_the_floor():
    from rl.actor import lr_factor
    cosine = OptimConfig(lr=1.0, warmup_steps=4, lr_scheduler_type="cosine", min_lr_ratio=0.1,
                         total_steps=14)
    got = [lr_factor(cosine, step) for step in range(16)]
    assert got[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert got[9] == pytest.approx(0.55)  # half way down: (1 + 0.1) / 2
    assert got[14:] == pytest.approx([0.1, 0.1])  # the floor from total_steps on
    assert all(a > b for a, b in zip(got[4:15], got[5:15]))
    constant = OptimConfig(lr=1.0, warmup_steps=2, total_steps=14)
    assert [lr_factor(constant, step) for step in range(5)] == pytest.approx([0.5, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="min_lr_ratio"):
        OptimConfig(min_lr_ratio=1.5)

