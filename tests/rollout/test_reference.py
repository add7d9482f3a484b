"""The transformers reference generator and the block-cap rule (no vLLM)."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rollout.block_cap import forced_mask
from rollout.layout import MementoConfig, evict_at
from rollout.reference import layout_mask, reference_generate, restart_evict_at

CFG = MementoConfig(block_start=261, block_end=262, summary_start=263, summary_end=264)
BS, BE, SS, SE = 261, 262, 263, 264
# positions:  0   1   2   3   4   5   6   7   8
SEQ = [7, BS, 20, 21, BE, SS, 30, SE, 40]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


def test_layout_mask_is_causal_and_hides_keys_from_their_eviction_on():
    mask = layout_mask(np.array([3, 1, 3]), torch.float32)[0, 0]
    visible = (mask == 0).int().tolist()
    # key 1 is evicted at query 1 (never seen, not even by itself); key 0 and 2 stay.
    assert visible == [[1, 0, 0],
                       [1, 0, 0],
                       [1, 0, 1]]


def test_restart_layout_hides_the_whole_block_from_its_summary_start():
    # Memento layout: content 2..3 evicted at the summary_end (7); restart: 1..4 at 5.
    assert evict_at(SEQ, CFG).tolist() == [9, 9, 7, 7, 9, 9, 9, 9, 9]
    assert restart_evict_at(SEQ, CFG).tolist() == [9, 5, 5, 5, 5, 9, 9, 9, 9]
    # A block whose memento is still open is visible to everything.
    assert restart_evict_at(SEQ[:7], CFG).tolist() == [7] * 7


def test_forced_mask_flags_the_capped_block_end():
    # Cap 2: after BS and two content tokens the next token must be block_end.
    response = [BS, 20, 21, BE, 22, BS, 23]
    assert forced_mask([7], response, CFG, 2).tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert not forced_mask([7], response, CFG, 0).any()


def test_plain_reference_equals_transformers_cached_greedy_decoding(model):
    prompt = list(b"Reference check")
    ids, logprobs = reference_generate(model, prompt, 24)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                             output_scores=True, return_dict_in_generate=True,
                             eos_token_id=None, pad_token_id=0)
    assert ids == out.sequences[0, len(prompt):].tolist()
    expected = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, ids)]
    np.testing.assert_allclose(logprobs, expected, atol=1e-5)


def test_script_forces_tokens_and_banned_ids_never_appear_elsewhere(model):
    script = {0: BS, 5: BE, 6: SS, 9: SE}
    ids, logprobs = reference_generate(model, list(b"abc"), 14, CFG, script=script,
                                       ban_token_ids=(BS, BE, SS, SE))
    assert [ids[i] for i in script] == list(script.values())
    assert all(t not in (BS, BE, SS, SE) for i, t in enumerate(ids) if i not in script)
    assert all(logprobs[i] == 0.0 for i in script)


def test_evicted_block_changes_what_follows(model):
    """The layout is live: after the summary_end, memento and plain attention diverge."""
    script = {0: BS, 30: BE, 31: SS, 36: SE}
    ban = (BS, BE, SS, SE)
    plain, _ = reference_generate(model, list(b"abc"), 50, CFG.replace(keep_last_n_blocks=-1),
                                  script=script, ban_token_ids=ban)
    memento, _ = reference_generate(model, list(b"abc"), 50, CFG, script=script,
                                    ban_token_ids=ban)
    assert plain[:37] == memento[:37]  # identical up to and including the summary_end
    assert plain[37:] != memento[37:]
