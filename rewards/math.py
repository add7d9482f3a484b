"""Math answers: extract the final answer from a response and decide equivalence with the truth.

Pure functions, no timeouts of their own: math-verify and sympy run with their signal-based
timeouts disabled (they raise outside the main thread), so callers must run `score_math` in a
child process with a hard wall-clock kill, as `rewards.pool.VerifierPool` does.

Answer styles (chosen per data source by `rewards.manager`):
- "math":   last \\boxed{...} (balanced braces), else a "Final Answer:" / "answer is" line.
            Plain numbers compare in exact Fraction arithmetic: integers exactly, decimals within
            1e-6 relative (`numbers_match`); LaTeX, sets, intervals, tuples, matrices, units and
            percentages via math-verify (float rounding at 6 digits).
- "number": as "math", plus "#### n" and, last, the last number in the answer (GSM8K, AIME).
- "choice": a multiple-choice letter A-J (GPQA, MMLU-style).

The answer is the text after the last `</think>`; a response that opens `<think>` and never
closes it (truncated reasoning) has no answer.
"""

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from rewards.format import THINK_END, THINK_START

AnswerStyle = Literal["math", "number", "choice"]

MAX_ANSWER_CHARS = 1000  # longer "answers" are wrong without reaching sympy
_BOX = re.compile(r"\\(?:boxed|fbox)")
_FINAL_LINE = re.compile(r"(?:final answer|answer is|answer:)\s*(?:is)?\s*:?\s*([^\n]{1,%d})" % MAX_ANSWER_CHARS,
                         re.IGNORECASE)
_INLINE_MATH = re.compile(r"\$([^$]{1,%d})\$" % MAX_ANSWER_CHARS)
_HASHES = re.compile(r"####\s*([^\n]{1,100})")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,4})?(?:/\d+)?")
_NUMBER_TOKEN = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,4})?")  # exponent capped: no 10**10**9
REL_TOLERANCE, ABS_TOLERANCE = Fraction(1, 10**6), Fraction(1, 10**9)
# A capital letter counts alone; a lowercase one only as "(b)", "b)" or "b." ("the answer is a bit ...").
_CHOICE_LETTER = r"(?:\(\s*([A-Ja-j])\s*\)|([A-J])\)?|([a-j])[).])"
_CHOICE_PHRASE = re.compile(r"(?i:answer\s*(?:is|:)?\s*[:\-]?\s*(?:option\s*)?)\**\s*" + _CHOICE_LETTER + r"(?![\w'-])")
_CHOICE_ALONE = re.compile(r"^\W*(?i:option\s*)?" + _CHOICE_LETTER + r"\W*$")
_PERCENT = re.compile(r"\\?%|\\text\{\s*\\?%\s*\}|\s*percent\b")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", re.DOTALL)

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every call with timeouts off


@dataclass(frozen=True)
class MathResult:
    extracted: str | None  # the answer found in the response; None when there is none
    correct: bool


def answer_section(response: str) -> str | None:
    """Text after the last `</think>`; None for truncated reasoning (`<think>` never closed)."""
    cut = response.rfind(THINK_END)
    if cut >= 0:
        return response[cut + len(THINK_END):]
    return None if THINK_START in response else response


def _brace_pairs(text: str) -> dict[int, int]:
    """Position of each "{" -> position of its matching "}", in one pass (unmatched ones absent)."""
    pairs, stack = {}, []
    for i, c in enumerate(text):
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} (or `\\boxed 5`) in `text`.

    Linear in len(text): a megabyte of unbalanced "\\boxed{" must not cost a quadratic scan."""
    pairs = None
    for box in reversed(list(_BOX.finditer(text))):
        after = box.end()
        rest = text[after:after + 1]
        if rest == "{":
            pairs = _brace_pairs(text) if pairs is None else pairs
            if after in pairs:
                return text[after + 1:pairs[after]]
        elif rest == " ":
            word = text[after + 1:after + 1 + MAX_ANSWER_CHARS].split(maxsplit=1)
            if word:
                return word[0].rstrip(".$")
    return None  # none, or only unbalanced ones


def _clean(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    answer = answer.removesuffix(".").removesuffix("\\]").removeprefix("\\[").strip()
    boxed = last_boxed(answer)
    return boxed.strip() if boxed is not None else answer


def extract_answer(response: str, style: AnswerStyle) -> str | None:
    """The final answer in `response` for an answer style, or None."""
    section = answer_section(response)
    if section is None or not section.strip():
        return None
    if style == "choice":
        return _extract_choice(section)
    boxed = last_boxed(section)
    if boxed is not None:
        return boxed.strip()
    if style == "number":
        hashes = _HASHES.findall(section)
        if hashes:
            return _clean(hashes[-1])
    line = _answer_line(section)
    if line is not None:
        return line
    if style == "number":
        numbers = _NUMBER.findall(section[-10_000:])
        return numbers[-1] if numbers else None
    return None


def _answer_line(section: str) -> str | None:
    """What follows the last "Final Answer:" / "answer is" phrase, e.g. Minerva's
    "Final Answer: The final answer is $x$. I hope it is correct." gives "x"."""
    line = None
    for _ in range(3):  # the phrase may repeat inside its own line
        matches = _FINAL_LINE.findall(section if line is None else line)
        if not matches:
            break
        line = matches[-1]
    if line is None:
        return None
    math_span = _INLINE_MATH.search(line)
    return _clean(math_span.group(1) if math_span else line)


def _extract_choice(section: str) -> str | None:
    boxed = last_boxed(section)
    candidates = [boxed] if boxed is not None else []
    candidates += [m.groups()[_letter_group(m)].upper() for m in _CHOICE_PHRASE.finditer(section[-10_000:])][-1:]
    candidates.append(section.strip()[:50])
    for text in candidates:
        letter = _choice_letter(_TEXT_WRAPPER.sub(r"\1", text.strip()))
        if letter:
            return letter
    return None


def _letter_group(match: re.Match) -> int:
    return next(i for i, group in enumerate(match.groups()) if group is not None)


def _choice_letter(text: str) -> str | None:
    match = _CHOICE_ALONE.match(text)
    return match.groups()[_letter_group(match)].upper() if match else None


@dataclass(frozen=True)
class Number:
    value: Fraction  # exact: no float on the way, so 401-digit answers neither overflow nor round
    integer: bool  # written as an integer (no point, exponent or fraction bar)
    decimal: bool  # written with a decimal point or an exponent


def _number(text: str) -> Number | None:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    decimal = "." in text or "e" in text or "E" in text
    return Number(value, not decimal and "/" not in text, decimal)


def number_token(token: str) -> Number | None:
    """A whitespace-free token of program output read as a number, or None."""
    return _number(token) if _NUMBER_TOKEN.fullmatch(token) else None


def numbers_match(pred: Number, gold: Number) -> bool:
    """Integers exactly; otherwise a decimal on either side within 1e-6 relative (1e-9 absolute)."""
    if pred.value == gold.value:
        return True
    if gold.integer or not (pred.decimal or gold.decimal):
        return False
    return abs(pred.value - gold.value) <= max(REL_TOLERANCE * max(abs(pred.value), abs(gold.value)), ABS_TOLERANCE)


def _as_number(text: str) -> Number | None:
    text = text.replace("\\$", "").replace("$", "").replace("\\!", "").replace("{,}", ",").strip()
    if _THOUSANDS.fullmatch(text):  # "1,000" is a number; "3,2" is a list
        text = text.replace(",", "")
    return _number(text) if _PLAIN_NUMBER.fullmatch(text) else None


def _math_verify_equal(pred: str, gold: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return verify(gold_parsed, pred_parsed, timeout_seconds=None)


def _without_percent(text: str) -> tuple[str, bool]:
    stripped = _PERCENT.sub("", text)
    return stripped.strip(), stripped != text


def math_equal(pred: str, gold: str) -> bool:
    """Whether answer `pred` is equivalent to ground truth `gold` (both answer strings, no boxing)."""
    pred, gold = pred.strip(), gold.strip()
    if not pred or len(pred) > MAX_ANSWER_CHARS:
        return False
    if pred == gold:
        return True
    pred, pred_percent = _without_percent(pred)
    gold, gold_percent = _without_percent(gold)
    pred_num, gold_num = _as_number(pred), _as_number(gold)
    if pred_num is not None and gold_num is not None:
        # "50\\%" as truth accepts 50 and 0.5; 0.5 as truth does not accept "50\\%"
        return numbers_match(pred_num, gold_num) or (gold_percent and not pred_percent and numbers_match(
            Number(pred_num.value * 100, pred_num.integer, pred_num.decimal), gold_num))
    return _math_verify_equal(pred, gold)


def _gold_answers(ground_truth: object, style: AnswerStyle) -> list[str]:
    """Accepted answers: a list means any of them; GSM8K solutions keep only what follows ####."""
    truths = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    answers = []
    for truth in truths:
        if style == "choice" and isinstance(truth, int) and 0 <= truth < 10:
            truth = "ABCDEFGHIJ"[truth]
        text = str(truth)
        hashes = _HASHES.findall(text)
        answers.append(_clean(hashes[-1] if hashes else text))
    return answers


def score_math(response: str, ground_truth: object, style: AnswerStyle) -> MathResult:
    """Extract the answer from `response` and compare it with every accepted `ground_truth`."""
    extracted = extract_answer(response, style)
    if extracted is None:
        return MathResult(None, False)
    golds = _gold_answers(ground_truth, style)
    if style == "choice":
        return MathResult(extracted, any(_choice_letter(_TEXT_WRAPPER.sub(r"\1", g).upper()) == extracted
                                         for g in golds))
    return MathResult(extracted, any(math_equal(extracted, gold) for gold in golds))
