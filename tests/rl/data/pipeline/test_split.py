"""Sentence splitter: real traces lose nothing and cut no atomic span; hand cases for each rule."""

import json
import re
from pathlib import Path

import pytest

from rl.data.pipeline.split import protected_spans, split_sentences

EXAMPLES = Path(__file__).resolve().parents[3] / "data" / "memento_examples"


def chars4(text):
    return -(-len(text) // 4)


def reasoning_of(name):
    trace = json.loads((EXAMPLES / f"{name}.json").read_text())
    return "".join(s["text"] for s in trace["segments"] if s["type"] == "block")


def atomic_pieces_whole(sentence):
    """No fence, environment or math delimiter left open inside one sentence."""
    return (sentence.count("```") % 2 == 0 and sentence.count("$$") % 2 == 0
            and sentence.count("\\(") == sentence.count("\\)")
            and sentence.count("\\[") == sentence.count("\\]")
            and len(re.findall(r"\\begin\{", sentence)) == len(re.findall(r"\\end\{", sentence)))


@pytest.mark.parametrize("name", ["example_response", "example_code", "example_science"])
def test_real_traces_split_into_spans_that_keep_every_character(name):
    text = reasoning_of(name)
    sentences = split_sentences(text, chars4)
    assert len(sentences) > 20
    ends = [0]
    for s in sentences:
        assert text[s.start:s.end] == s.text and s.text == s.text.strip() and s.text
        assert s.start >= ends[-1]
        assert text[ends[-1]:s.start].strip() == ""  # only whitespace between sentences
        ends.append(s.end)
        assert atomic_pieces_whole(s.text), s.text
        assert chars4(s.text) >= 5
    assert text[ends[-1]:].strip() == ""


def test_code_fence_with_periods_and_blank_lines_stays_one_sentence():
    code = "```python\nx = 1.  # Set x. Then y.\n\nprint(x)\n```"
    text = f"Here is a first attempt at the code.\n{code}\nIt prints one. That is right."
    texts = [s.text for s in split_sentences(text, chars4, min_tokens=1)]
    assert any(code in t for t in texts)
    assert texts[-1] == "That is right."


def test_latex_environment_and_display_math_are_not_cut():
    env = "\\begin{align}\nx &= 1. \\\\\n\nY &= 2. Then\n\\end{align}"
    text = f"The system gives the values below.\n{env}\nWe also need $$a = b.\nC = d$$ as well."
    texts = [s.text for s in split_sentences(text, chars4, min_tokens=1)]
    assert env in texts
    assert any("$$a = b.\nC = d$$" in t for t in texts)


def test_a_list_is_kept_whole_with_its_continuation_lines():
    items = ("- first item. It has two sentences.\n  and a continuation line.\n\n"
             "- second item (with a. dot)\n1. numbered. Item")
    text = f"Consider the cases one by one now.\n{items}\nNow we compare them all."
    texts = [s.text for s in split_sentences(text, chars4, min_tokens=1)]
    assert texts == ["Consider the cases one by one now.", items, "Now we compare them all."]


def test_parentheses_abbreviations_and_inline_math_hold_no_cut():
    text = ("We try a bound (it holds. Mostly) on each term. See e.g. the lemma. "
            "Set $x = 1. Y$ here. Done with this part.")
    texts = [s.text for s in split_sentences(text, chars4, min_tokens=1)]
    assert texts == ["We try a bound (it holds. Mostly) on each term.", "See e.g. the lemma.",
                     "Set $x = 1. Y$ here.", "Done with this part."]


def test_merges_colon_continuation_and_short_fragments():
    text = ("The plan has two steps:\nFirst we expand the square fully. "
            "Therefore the cross term vanishes. Hmm. Next we take the derivative of it.")
    texts = [s.text for s in split_sentences(text, chars4, min_tokens=3)]
    assert texts == ["The plan has two steps:\nFirst we expand the square fully. "
                     "Therefore the cross term vanishes. Hmm.",
                     "Next we take the derivative of it."]


def test_unclosed_fence_protects_to_the_end_and_blank_text_has_no_sentences():
    text = "Start of it all.\n```\nx = 1. Y = 2.\nZ"
    assert protected_spans(text) == [(17, len(text))]
    assert [s.text for s in split_sentences(text, chars4, 1)] == ["Start of it all.", text[17:]]
    assert split_sentences("  \n ", chars4) == []
