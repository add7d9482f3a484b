"""SFT data validation, the RL format reward and the built-in task share one memento grammar.

SFT data must never teach what the format reward punishes: whatever `check_memento_response`
accepts, the reward (with its default `RewardConfig`) scores as well formed.
"""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.format import (BLOCK_END, BLOCK_START, MARKERS, SUMMARY_END, SUMMARY_START, THINK_END, THINK_START,
                            check_format)
from rewards.manager import RewardConfig
from rl.data.arith import ArithConfig, generate_problems, sft_row
from rl.data.sft_dataset import check_memento_response

BS, BE, SS, SE = BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END
GOOD = f"<think>\n{BS}a long enough block{BE}\n{SS}memento{SE}\n</think>\n42"


def reward_accepts(response: str) -> bool:
    """The format reward's verdict, called as rewards.manager calls it, with the default config."""
    config = RewardConfig()
    return check_format(response, config.format_min_blocks, config.format_max_memento_ratio).well_formed


def sft_accepts(response: str) -> bool:
    try:
        check_memento_response(response)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("response, sft, reward", [
    (GOOD, True, True),
    ("  \n" + GOOD, True, True),
    (GOOD.replace(f"\n{BS}", f"\nLet me think.\n{BS}"), False, False),  # text between blocks
    (GOOD.replace(f"{BE}\n{SS}", f"{BE} so {SS}"), False, False),  # text between block and memento
    (GOOD.replace("memento", " "), False, False),  # empty memento
    (GOOD.removeprefix(THINK_START), False, True),  # <think> in the prompt: RL only
    (GOOD.replace("memento", "a memento longer than half its block"), False, False),
    (GOOD.removesuffix("42"), False, False),  # no answer
    (THINK_START + GOOD, False, False),  # <think> twice
    (GOOD + THINK_END, False, False),  # </think> twice
    (GOOD.replace(THINK_END, ""), False, False),  # truncated
    (GOOD + BS, False, False),  # marker in the answer
    (f"<think>{BS}a long enough block{BE}{BS}b{BE}{SS}m{SE}</think>42", False, False),
    (f"<think>{SS}m{SE}</think>42", False, False),  # memento without a block
    ("<think>plain reasoning</think>42", False, False),
    ("", False, False),
])
def test_sft_validation_and_format_reward_agree_on_hand_cases(response, sft, reward):
    assert (sft_accepts(response), reward_accepts(response)) == (sft, reward)


# Responses near the grammar: well-formed units with at most one insertion (a broken unit, a stray
# marker, text), under each kind of opening and ending.
_GOOD_UNIT = f"{BS}a long enough block{BE}\n{SS}memento{SE}\n"
_INSERTS = [f"{BS}block{BE}{SS} {SE}", f"{BS}b{BE}{SS}a long memento{SE}", *MARKERS, " ", "\n", "text"]


@st.composite
def _responses(draw) -> str:
    units = [_GOOD_UNIT] * draw(st.integers(0, 3))
    if draw(st.booleans()):
        units.insert(draw(st.integers(0, len(units))), draw(st.sampled_from(_INSERTS)))
    head = draw(st.sampled_from([THINK_START, "\n" + THINK_START, "", "x" + THINK_START]))
    tail = draw(st.sampled_from([f"{THINK_END}\n42"] * 3 + [THINK_END, "", f"{THINK_END} {BS}"]))
    return head + "".join(units) + tail


@settings(max_examples=300, deadline=None)
@given(_responses())
def test_whatever_sft_accepts_the_format_reward_accepts(response):
    if sft_accepts(response):
        assert reward_accepts(response)


@pytest.mark.parametrize("steps_per_block", [1, 2])
def test_every_task_trace_lossy_or_not_passes_both_checks(steps_per_block):
    cfg = ArithConfig(steps_per_block=steps_per_block, lossy_memento_rate=0.5, max_steps=6)
    rng = random.Random(0)
    responses = [sft_row(p, cfg, rng)["response"] for p in generate_problems(300, seed=1, cfg=cfg)]
    assert any("done." in r for r in responses) and any("After step" in r for r in responses)
    for response in responses:
        assert check_memento_response(response) >= 1 and reward_accepts(response), response
