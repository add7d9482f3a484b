"""The memento grammar on text: rendering, and every rule the checker reports."""

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.format import (BLOCK_END, BLOCK_START, MARKERS, MEMENTO_TOKENS, SUMMARY_END, SUMMARY_START,
                            THINK_END, THINK_START, check_format, format_reward, render_memento)
from rollout import layout

DATA = Path(__file__).resolve().parents[1] / "data" / "memento_examples"


def memento(*pairs: tuple[str, str], answer: str = "42", think: bool = True) -> str:
    body = "".join(f"{BLOCK_START}{b}{BLOCK_END}\n{SUMMARY_START}{m}{SUMMARY_END}\n\n" for b, m in pairs)
    return (THINK_START if think else "") + body + THINK_END + answer


def example_response(name: str) -> str:
    """A real MEMENTO trace (tests/data/memento_examples, from microsoft/memento) joined in the grammar."""
    segments = json.loads((DATA / f"{name}.json").read_text())["segments"]
    pairs = [(b["text"], m["text"]) for b, m in zip(segments[0:-1:2], segments[1:-1:2])]
    return memento(*pairs, answer=segments[-1]["text"])


@pytest.mark.parametrize("name", ["example_response", "example_code", "example_science"])
def test_real_memento_traces_are_well_formed_even_in_strict_mode(name):
    report = check_format(example_response(name), require_think_start=True)
    assert report.well_formed, report.problems
    assert report.blocks >= 4 and 0.05 < report.memento_ratio < 0.3


def test_memento_ratio_is_memento_chars_over_block_chars():
    report = check_format(memento(("a" * 100, "b" * 10), ("c" * 300, "d" * 30)))
    assert (report.blocks, report.block_chars, report.memento_chars) == (2, 400, 40)
    assert report.memento_ratio == pytest.approx(0.1)  # 40 / 400


def test_the_delimiters_are_the_layouts():
    """rollout.layout defines the same strings for the token ids (neither package imports the other)."""
    assert MEMENTO_TOKENS == layout.MEMENTO_TOKENS == (layout.BLOCK_START, layout.BLOCK_END,
                                                       layout.SUMMARY_START, layout.SUMMARY_END)
    assert (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END) == MEMENTO_TOKENS == MARKERS[:4]


def test_opening_think_may_be_in_the_prompt_unless_required():
    response = memento(("block", "m"), think=False)
    assert check_format(response).well_formed
    report = check_format(response, require_think_start=True)
    assert report.problems == ("no_think_start",)
    assert report.first_problem.startswith("response must start with <think>")
    assert check_format(" \n" + memento(("block", "m")), require_think_start=True).well_formed


# A block text of at least twice its memento's length keeps the memento ratio under 0.5.
_TEXT = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)),
                min_size=1, max_size=20).filter(str.strip)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=5), _TEXT)
def test_rendered_responses_are_well_formed_in_strict_mode(pairs, answer):
    blocks = [block + memento_text * 2 for block, memento_text in pairs]
    mementos = [memento_text for _, memento_text in pairs]
    report = check_format(render_memento(blocks, mementos, answer), require_think_start=True)
    assert report.well_formed, report.first_problem
    assert report.blocks == len(pairs)
    assert (report.block_chars, report.memento_chars) == (sum(map(len, blocks)), sum(map(len, mementos)))


def test_render_needs_one_memento_per_block():
    with pytest.raises(ValueError, match="2 blocks but 1 mementos"):
        render_memento(["a", "b"], ["m"])


@pytest.mark.parametrize("response,problem", [
    (f"<think>{BLOCK_START}reasoning{THINK_END}42", "unclosed_block"),
    (f"<think>{BLOCK_START}reasoning{BLOCK_END}{BLOCK_START}x{BLOCK_END}{SUMMARY_START}m{SUMMARY_END}{THINK_END}42",
     "block_without_memento"),
    (f"<think>{BLOCK_START}reasoning{BLOCK_END}{SUMMARY_START}memento{THINK_END}42", "unclosed_memento"),
    (f"<think>{BLOCK_START}reasoning{BLOCK_END}{SUMMARY_START} {SUMMARY_END}{THINK_END}42", "empty_memento"),
    (f"<think>{SUMMARY_START}memento{SUMMARY_END}{THINK_END}42", "memento_without_block"),
    (memento(("block", "m")).replace(THINK_END, "stray thought" + THINK_END), "text_outside_blocks"),
    (memento(("block", "m")).replace(SUMMARY_START, "stray" + SUMMARY_START), "text_outside_blocks"),
    (THINK_START + memento(("block", "m")), "misplaced_think_start"),
    (memento(("a block", "m"), ("b block", "n")).replace(f"\n\n{BLOCK_START}b", f"{THINK_START}{BLOCK_START}b"),
     "misplaced_think_start"),
    (memento(("block", "m"), answer=f"42{THINK_END}43"), "no_think_end"),
    (memento(("block", "m")).replace(THINK_END, ""), "no_think_end"),
    (memento(("block", "m"), answer=f"42{BLOCK_START}"), "marker_in_answer"),
    (memento(("block", "m"), answer="  \n"), "no_answer"),
    (f"<think>{THINK_END}42", "no_blocks"),
    (memento(("short", "a much longer memento than its block")), "memento_too_long"),
    ("", "no_think_end"),
])
def test_each_broken_rule_is_reported(response, problem):
    report = check_format(response)
    assert problem in report.problems and not report.well_formed


def test_first_problem_is_the_earliest_in_the_text_in_words():
    response = f"<think>{BLOCK_START}a block{BLOCK_END}{SUMMARY_START} {SUMMARY_END}{SUMMARY_START}m{SUMMARY_END}{THINK_END}"
    report = check_format(response)
    assert report.problems == ("empty_memento", "memento_without_block", "no_answer")  # sorted
    assert report.first_problem == "block 1: empty memento"
    assert check_format(memento(("block", "m"))).first_problem == ""


def test_format_reward_is_bonus_or_penalty():
    assert format_reward(check_format(memento(("block", "m"))), penalty=0.5, bonus=0.1) == 0.1
    assert format_reward(check_format("no markers at all"), penalty=0.5, bonus=0.1) == -0.5


def test_megabyte_response_is_checked_in_well_under_a_second():
    response = memento(*[("x" * 10_000, "y" * 500)] * 100) + "<|block_start|>" * 10_000
    start = time.monotonic()
    report = check_format(response)
    assert report.blocks == 100 and "marker_in_answer" in report.problems
    assert time.monotonic() - start < 10.0  # a quadratic scan takes minutes here
