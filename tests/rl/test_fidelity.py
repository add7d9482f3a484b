"""Train/inference fidelity: the actor re-scores what the memento engine sampled, under the
engine's own layout, to within float noise; plain causal attention would be far off."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from rl.algo_config import AlgoConfig
from rl.batch import RolloutBatch, make_micro_batches, pad_right
from rl.config import ActorConfig, ModelConfig
from rollout.layout import MementoConfig

pytestmark = pytest.mark.slow
BLOCKS = [(40, 8), (56, 6), (32, 10), (48, 7)]  # (block, memento) tokens: four evictions


@pytest.fixture(scope="module")
def engine_batch(tiny_model_dir):
    from rollout.engine import MementoEngine, Sampling, block_script

    layout = MementoConfig.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    script, end = block_script(layout, BLOCKS)
    engine = MementoEngine(tiny_model_dir, memento={}, dtype="float32", block_size=32,
                           max_model_len=512, kv_cache_memory_bytes=64 << 20, seed=0)
    try:
        prompts = [list(b"Solve it in blocks, please."), list(b"Another prompt")]
        samples = engine.generate(prompts, Sampling(n=2, temperature=1.0, max_tokens=end + 20,
                                                    seed=7, script=script, ignore_eos=True))
    finally:
        engine.shutdown()
    batch = RolloutBatch.from_sequences([s.prompt_ids for s in samples],
                                        [s.response_ids for s in samples])
    batch.sampler_logprobs = pad_right([s.sampler_logprobs for s in samples], 0.0, torch.float32)
    batch.forced_mask = pad_right([s.forced_mask for s in samples], False, torch.bool)
    assert all(s.num_evictions >= len(BLOCKS) for s in samples)
    return batch, layout


def actor_logprobs(model_dir, batch):
    from rl.actor import PolicyWorker

    worker = PolicyWorker(str(model_dir), ModelConfig(path=str(model_dir)),
                          ActorConfig(ppo_max_token_len_per_gpu=2048), AlgoConfig(), trainable=False)
    (mbs,) = make_micro_batches(batch, 2048)
    out = torch.zeros(batch.response_mask.shape)
    for mb, (lp, _) in zip(mbs, worker.compute_logprobs(mbs, temperature=1.0)):
        for m, row in enumerate(mb.indices):
            out[row, :mb.response_lengths[m]] = lp[m, :mb.response_lengths[m]]
    return out


def test_actor_logprobs_match_the_engine_sampler_under_its_layout(engine_batch, tiny_model_dir):
    batch, layout = engine_batch
    mask = batch.loss_mask.bool()  # sampled tokens only; scripted delimiters are forced
    batch.compute_layout(layout)
    memento_gap = (actor_logprobs(tiny_model_dir, batch) - batch.sampler_logprobs)[mask].abs().mean()
    batch.compute_layout(None)
    causal_gap = (actor_logprobs(tiny_model_dir, batch) - batch.sampler_logprobs)[mask].abs().mean()
    print(f"mean |actor - sampler| log-prob gap: memento layout {memento_gap:.2e}, "
          f"causal {causal_gap:.2e}")
    assert memento_gap <= 1e-4
    assert causal_gap > 100 * memento_gap and causal_gap > 1e-2
