"""Recompute after preemption replays the compactions: same tokens as with an ample KV pool.

The engine here gets 16 pages of 32 tokens (one max-length sequence; vLLM keeps one page back) and small prefill chunks,
then eight memento requests at once: vLLM must preempt some, free their KV and later recompute
prompt + outputs, chunk by chunk, compacting at every memento it passes. The reference is the
transformers generator (which the ample-pool engine matches, see test_engine.py).
"""

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.engine import MementoEngine, Sampling, block_script
from rollout.layout import MementoConfig
from rollout.reference import reference_generate

pytestmark = pytest.mark.slow

PAGE = 32


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = MementoConfig.from_tokenizer(tokenizer)
    ban = (cfg.block_start, cfg.block_end, cfg.summary_start, cfg.summary_end,
           tokenizer.eos_token_id)
    engine = MementoEngine(tiny_model_dir, memento={}, dtype="float32", block_size=PAGE,
                           max_model_len=15 * PAGE, kv_cache_memory_bytes=64 << 20,
                           num_gpu_blocks_override=16,
                           max_num_batched_tokens=64, seed=0)
    yield engine, cfg, ban
    engine.shutdown()


def test_small_kv_pool_preempts_and_reproduces_the_same_tokens(setup, tiny_model_dir):
    engine, cfg, ban = setup
    script, end = block_script(cfg, [(70, 10), (60, 8), (80, 12)])
    sampling = Sampling(temperature=0.0, max_tokens=end + 20, script=script, ban_token_ids=ban,
                        ignore_eos=True)
    # Half the prompts already hold a closed block, so recompute also crosses prompt evictions.
    closed, closed_end = block_script(cfg, [(40, 6)])
    with_block = [closed.get(i, 100 + i % 50) for i in range(closed_end)]
    prompts = [list(b"Prompt %d: go." % k) + (with_block if k % 2 else []) for k in range(8)]
    samples = engine.generate(prompts, sampling)
    assert sum(s.num_preemptions for s in samples) > 0
    hf_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir,
                                                    attn_implementation="sdpa").eval()
    for prompt, sample in zip(prompts, samples):
        ref_ids, ref_logprobs = reference_generate(hf_model, prompt, end + 20, cfg,
                                                   script=script, ban_token_ids=ban)
        assert sample.response_ids == ref_ids
        np.testing.assert_allclose(sample.sampler_logprobs, ref_logprobs, atol=1e-4)


def test_seeded_sampling_is_unchanged_by_preemption_and_prompt_segments(setup):
    """Sample k gets seed 11 + k whether it runs alone (never preempted) or among eight (some
    preempted and recomputed); discarded segment-end samples must not consume its randomness."""
    engine, cfg, ban = setup
    script, end = block_script(cfg, [(60, 8), (60, 8), (60, 8)])
    closed, closed_end = block_script(cfg, [(40, 6)])
    prompts = [list(b"Seeded %d." % k) + [closed.get(i, 100 + i) for i in range(closed_end)]
               for k in range(8)]

    def sampling(seed):
        return Sampling(temperature=1.0, seed=seed, max_tokens=end + 10, script=script,
                        ban_token_ids=ban, ignore_eos=True)

    together = engine.generate(prompts, sampling(11))
    assert sum(s.num_preemptions for s in together) > 0
    for k, prompt in enumerate(prompts):
        alone = engine.generate([prompt], sampling(11 + k))[0]
        assert alone.num_preemptions == 0
        assert alone.response_ids == together[k].response_ids
