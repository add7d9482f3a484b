"""Memento well-formedness on response text."""

import json
import time
from pathlib import Path

import pytest

from rewards.format import (BLOCK_END, BLOCK_START, SUMMARY_END, SUMMARY_START, THINK_CLOSE, check_format,
                            format_reward)

DATA = Path(__file__).with_name("data")


def memento(*pairs: tuple[str, str], answer: str = "42", think: bool = True) -> str:
    body = "".join(f"{BLOCK_START}{b}{BLOCK_END}\n{SUMMARY_START}{m}{SUMMARY_END}\n\n" for b, m in pairs)
    return ("<think>" if think else "") + body + THINK_CLOSE + answer


def example_response(name: str) -> str:
    """A real MEMENTO trace (tests/rewards/data, from microsoft/memento) joined in the grammar."""
    segments = json.loads((DATA / f"{name}.json").read_text())["segments"]
    pairs = [(b["text"], m["text"]) for b, m in zip(segments[0:-1:2], segments[1:-1:2])]
    return memento(*pairs, answer=segments[-1]["text"])


@pytest.mark.parametrize("name", ["example_response", "example_code", "example_science"])
def test_real_memento_traces_are_well_formed(name):
    report = check_format(example_response(name))
    assert report.well_formed, report.problems
    assert report.blocks >= 4 and 0.05 < report.memento_ratio < 0.3


def test_memento_ratio_is_memento_chars_over_block_chars():
    report = check_format(memento(("a" * 100, "b" * 10), ("c" * 300, "d" * 30)))
    assert (report.blocks, report.block_chars, report.memento_chars) == (2, 400, 40)
    assert report.memento_ratio == pytest.approx(0.1)  # 40 / 400


def test_opening_think_may_be_in_the_prompt():
    assert check_format(memento(("block", "m"), think=False)).well_formed


@pytest.mark.parametrize("response,problem", [
    (f"<think>{BLOCK_START}reasoning{THINK_CLOSE}42", "unclosed_block"),
    (f"<think>{BLOCK_START}reasoning{BLOCK_END}{BLOCK_START}x{BLOCK_END}{SUMMARY_START}m{SUMMARY_END}{THINK_CLOSE}42",
     "block_without_memento"),
    (f"<think>{BLOCK_START}reasoning{BLOCK_END}{SUMMARY_START}memento{THINK_CLOSE}42", "unclosed_memento"),
    (f"<think>{BLOCK_START}reasoning{BLOCK_END}{SUMMARY_START} {SUMMARY_END}{THINK_CLOSE}42", "empty_memento"),
    (f"<think>{SUMMARY_START}memento{SUMMARY_END}{THINK_CLOSE}42", "memento_without_block"),
    (memento(("block", "m")).replace(THINK_CLOSE, "stray thought" + THINK_CLOSE), "text_outside_blocks"),
    (memento(("block", "m")).replace(THINK_CLOSE, ""), "no_think_end"),
    (memento(("block", "m"), answer=f"42{BLOCK_START}"), "marker_in_answer"),
    (memento(("block", "m"), answer="  \n"), "no_answer"),
    (f"<think>{THINK_CLOSE}42", "no_blocks"),
    (memento(("short", "a much longer memento than its block")), "memento_too_long"),
    ("", "no_think_end"),
])
def test_each_broken_rule_is_reported(response, problem):
    report = check_format(response)
    assert problem in report.problems and not report.well_formed


def test_format_reward_is_bonus_or_penalty():
    assert format_reward(check_format(memento(("block", "m"))), penalty=0.5, bonus=0.1) == 0.1
    assert format_reward(check_format("no markers at all"), penalty=0.5, bonus=0.1) == -0.5


def test_megabyte_response_is_checked_in_well_under_a_second():
    response = memento(*[("x" * 10_000, "y" * 500)] * 100) + "<|block_start|>" * 10_000
    start = time.monotonic()
    report = check_format(response)
    assert report.blocks == 100 and "marker_in_answer" in report.problems
    assert time.monotonic() - start < 10.0  # a quadratic scan takes minutes here
