"""rl.sample_metrics against hand-counted layouts (one block of 3 content tokens, memento of 2)."""

import numpy as np

from rl.sample_metrics import sample_stats
from rollout.layout import MementoConfig

BS, BE, SS, SE = 100, 101, 102, 103  # stand-in delimiter ids
LAYOUT = MementoConfig(BS, BE, SS, SE)
PROMPT = [1, 2]
# response: <bs> a b c <be> <ss> m m <se> x  (10 tokens; positions 2..11 of the sequence)
RESPONSE = [BS, 5, 6, 7, BE, SS, 8, 9, SE, 4]


def test_one_block_is_evicted_at_its_summary_end():
    stats = sample_stats(PROMPT, RESPONSE, LAYOUT)
    # Full attention holds t + 1 keys at step t = 2..11: peak 12, area 3 + ... + 12 = 75.
    assert (stats["full_peak_tokens"], stats["full_area_tokens"]) == (12, 75)
    # The 3 content tokens (positions 3..5) leave at the <|summary_end|> (position 10): steps
    # 10 and 11 hold 11 - 3 = 8 and 12 - 3 = 9 keys; the peak is 10 keys at step 9.
    assert stats["peak_tokens"] == 10 and stats["area_tokens"] == 75 - 3 - 3
    assert (stats["blocks"], stats["block_tokens"], stats["memento_tokens"]) == (1, 3.0, 2.0)
    assert stats["compression"] == 1.5


def test_a_given_evict_at_is_used_and_no_layout_gives_no_memento_keys():
    never = np.full(12, 12)
    assert sample_stats(PROMPT, RESPONSE, LAYOUT, never)["peak_tokens"] == 12
    plain = sample_stats(PROMPT, RESPONSE, None)
    assert plain["peak_tokens"] == plain["full_peak_tokens"] == 12
    assert "blocks" not in plain and "compression" not in plain
