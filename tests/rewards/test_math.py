"""Answer extraction and equivalence, run in-process (the pool tests cover the child processes)."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.math import answer_section, extract_answer, last_boxed, math_equal, score_math

# (prediction, ground truth) pairs that must be judged equivalent, grouped by answer kind
EQUIVALENT = {
    "integer": [("504", "504"), ("504.0", "504"), ("1,000", "1000"), ("10^{10}", "10000000000"), ("-3", "-3"),
                ("1e3", "1000"), ("7" * 401, "7" * 401)],
    "fraction": [("\\frac{1}{2}", "1/2"), ("\\dfrac{3}{4}", "\\frac34"), ("0.5", "\\frac{1}{2}"), ("2/4", "1/2")],
    "decimal": [("0.75", "\\frac{3}{4}"), ("0.50", "0.5"), ("0.333333", "\\frac{1}{3}"), ("6.283185", "2\\pi"),
                ("0.3333333", "0.333333"), ("2.5e-3", "0.0025")],
    "latex": [("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("(x+1)^2", "x^2+2x+1"), ("\\infty", "\\infty"),
              ("\\text{(C)}", "C"), ("x=3", "3")],
    "set": [("\\{2,1\\}", "\\{1,2\\}"), ("3,2", "2,3"), ("\\{1,2\\}", "1 \\text{ and } 2")],
    "interval": [("[1,2)", "[1,2)"), ("(-\\infty,3]", "(-\\infty, 3]"), ("\\left[1,2\\right)", "[1,2)")],
    "tuple": [("(1,2,3)", "(1,2,3)"), ("(1, 2)", "(1,2)")],
    "unit": [("5", "5\\text{ cm}"), ("18", "\\$18"), ("90", "90^\\circ"), ("18", "18 \\text{ dollars}")],
    "percentage": [("50\\%", "50\\%"), ("50", "50\\%"), ("0.5", "50\\%"), ("50%", "50")],
}
NEAR_MISSES = {
    "integer": [("503", "504"), ("3", "-3"), ("5040", "504"), ("1000001", "1000000"), ("123456700", "123456789"),
                ("1000000.5", "1000000"), ("7" * 400 + "8", "7" * 401)],
    "fraction": [("\\frac{1}{3}", "\\frac{1}{2}"), ("\\frac{2}{1}", "\\frac{1}{2}")],
    "decimal": [("0.33", "\\frac{1}{3}"), ("0.76", "\\frac{3}{4}")],
    "latex": [("2\\pi r", "2\\pi"), ("(x-1)^2", "x^2+2x+1"), ("-\\infty", "\\infty")],
    "set": [("\\{1,2,3\\}", "\\{1,2\\}"), ("\\{1\\}", "\\{1,2\\}")],
    "interval": [("[1,2]", "[1,2)"), ("(-\\infty,3)", "(-\\infty,3]")],
    "tuple": [("(2,1)", "(1,2)"), ("(1,2)", "(1,2,3)")],
    "unit": [("6\\text{ cm}", "5\\text{ cm}")],
    "percentage": [("5", "50\\%"), ("50\\%", "0.5"), ("0.05", "50\\%")],
}


def _cases(table):
    return [pytest.param(pred, gold, id=f"{kind}:{pred}~{gold}") for kind, rows in table.items() for pred, gold in rows]


@pytest.mark.parametrize("pred,gold", _cases(EQUIVALENT))
def test_equivalent_answers_are_correct(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize("pred,gold", _cases(NEAR_MISSES))
def test_near_misses_are_wrong(pred, gold):
    assert not math_equal(pred, gold)


@pytest.mark.parametrize("response,style,expected", [
    ("<think>\\boxed{1}</think>so \\boxed{\\frac{1}{2}}", "math", "\\frac{1}{2}"),
    ("</think>\\boxed{\\frac{a}{\\sqrt{b}}} then \\boxed{7}", "math", "7"),
    ("</think>\\fbox{12}", "math", "12"),
    ("</think>so \\boxed 5.", "math", "5"),
    ("</think>\\boxed{3} and an unbalanced \\boxed{4", "math", "3"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "math", "\\frac{3}{4}"),
    ("so the answer is 12.", "math", "12"),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "number", "72"),
    ("She earns $1,250 per week, so 1,250.", "number", "1,250"),
    ("</think>so 3 apples and then 7 pears.", "number", "7"),
    ("</think>so 3 apples and then 7 pears.", "math", None),
    ("</think>**Answer: C) similar polarities**", "choice", "C"),
    ("</think>The answer is (b).", "choice", "B"),
    ("</think>\\boxed{\\text{D}}", "choice", "D"),
    ("</think>  (A)  ", "choice", "A"),
    ("</think>A or B, hard to say", "choice", None),
    ("</think>\\boxed{CD}", "choice", None),
    ("</think>the answer is a bit unclear; maybe B", "choice", None),  # "a" is an article, not option A
    ("</think>The answer is b.", "choice", "B"),
    ("</think>b", "choice", None),
])
def test_extract_answer(response, style, expected):
    assert extract_answer(response, style) == expected


def test_truncated_reasoning_has_no_answer():
    assert answer_section("<think>long reasoning \\boxed{5} cut off") is None
    assert score_math("<think>long reasoning \\boxed{5} cut off", "5", "math").extracted is None


def test_answer_is_taken_after_the_last_think_close_only():
    assert score_math("<think>\\boxed{5}</think>I give up.", "5", "math").correct is False


@pytest.mark.parametrize("truth,style,response", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "number", "</think>\\boxed{72}"),
    (["1/2", "0.5"], "math", "</think>\\boxed{0.5}"),
    (2, "choice", "</think>Answer: C"),
    ("\\boxed{\\frac{1}{2}}", "math", "</think>\\boxed{0.5}"),
])
def test_ground_truth_forms(truth, style, response):
    assert score_math(response, truth, style).correct


@pytest.mark.parametrize("response", [
    "",
    "</think>",
    "\\boxed{" * 5000,                          # unbalanced braces
    "}" * 5000 + "\\boxed{}",
    "</think>\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 800 + "}",  # deeply nested LaTeX
    "</think>\\boxed{" + "x" * 5000 + "}",       # longer than any answer
    "</think>\\boxed{١٢٣} 答案是 \\boxed{😀} \udcff",  # unicode digits, CJK, emoji, lone surrogate
    "\x00\x01</think>\\boxed{\x00}",
])
def test_bad_input_scores_zero_without_raising(response):
    assert score_math(response, "5", "math").correct is False


def test_megabyte_output_is_scored_in_well_under_a_second():
    response = "<think>" + "reasoning 12 " * 80_000 + "</think>" + "blah 3 " * 80_000 + "\\boxed{5}"
    start = time.monotonic()
    result = score_math(response, "5", "number")
    assert result.correct and time.monotonic() - start < 10.0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("{}\\boxed $#:0123456789abc</think>-.,%")), max_size=200))
def test_extraction_never_raises_on_arbitrary_text(text):
    for style in ("math", "number", "choice"):
        extract_answer(text, style)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="{}ab", max_size=40))
def test_last_boxed_content_has_balanced_braces(body):
    content = last_boxed("\\boxed{" + body)
    if content is not None:
        depth = 0
        for c in content:
            depth += {"{": 1, "}": -1}.get(c, 0)
            assert depth >= 0
        assert depth == 0


def test_megabyte_of_unbalanced_boxes_is_extracted_in_linear_time():
    response = "\\boxed{" * (1 << 17) + "\\boxed{7}" + "\\boxed{" * (1 << 17)
    start = time.monotonic()
    assert extract_answer(response, "math") == "7"
    assert time.monotonic() - start < 10.0  # a quadratic scan takes minutes here


def test_a_401_digit_answer_is_scored_without_overflow():
    gold = "9" * 401
    assert score_math(f"</think>\\boxed{{{gold}}}", gold, "math").correct
    assert not score_math(f"</think>\\boxed{{{gold[:-1]}8}}", gold, "number").correct
