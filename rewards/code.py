"""Code answers: run the response's program against the problem's tests in the sandbox.

Test formats understood (`parse_tests`), as the public datasets ship them:
- APPS / TACO: {"inputs": [...], "outputs": [...], "fn_name": optional}, often a JSON string.
- CodeContests: {"public_tests" | "private_tests" | "generated_tests": {"input": [...], "output": [...]}}.
- LiveCodeBench: [{"input": str, "output": str, "testtype": "stdin" | "functional"}, ...]; the
  function name comes from extra_info["func_name"] (functional inputs are one JSON value a line).
Stdin/stdout tests compare whitespace-separated tokens (an expected integer exactly, an expected
decimal within 1e-6, `rewards.math.numbers_match`); function-call tests call `Solution().<fn>` or a
top-level `<fn>` and compare JSON values the same way. One sandbox run per test. Failure messages
(logged, shown in RewardInfo) name what went wrong, never the program's output or the expected one.
"""

import json
import re
import secrets
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from rewards.math import Number, answer_section, number_token, numbers_match
from rewards.sandbox import SandboxLimits, run_python

_ERROR_NAME = re.compile(r"([A-Za-z_][\w.]{0,80})(?::|$)")  # "ZeroDivisionError: ..." -> the class
_LANGUAGE_LINE = re.compile(r"[ \t]*(?:python3?|py)?[ \t]*", re.IGNORECASE)
# LeetCode-style solutions use List, Optional, deque, ... without importing them (LiveCodeBench
# prepends the same kind of header).
_CALL_PRELUDE = "from typing import *\nfrom collections import *\nimport math, heapq, bisect, itertools, functools\n"
CodeVerdict = Literal["correct", "partial", "wrong", "timeout", "no_answer"]


@dataclass(frozen=True)
class CodeTest:
    input: str | tuple  # stdin text, or the call's positional arguments
    expected: object  # stdout text, or the call's return value


@dataclass(frozen=True)
class CodeTests:
    fn_name: str | None  # None: stdin/stdout tests
    cases: tuple[CodeTest, ...]


@dataclass(frozen=True)
class CodeResult:
    verdict: CodeVerdict
    passed: int
    total: int
    program: str | None
    first_failure: str  # what the first failing test did, for logs


def extract_program(response: str) -> str | None:
    """The last fenced code block after `</think>` (```python, ```py or a bare ```)."""
    section = answer_section(response)
    if not section:
        return None
    parts = section.split("```")  # odd parts are inside fences; split keeps this linear
    complete = (len(parts) - 1) // 2
    if not complete:
        return None
    header, newline, body = parts[2 * complete - 1].partition("\n")
    if not newline or not _LANGUAGE_LINE.fullmatch(header) or not body.strip():
        return None
    return body


def _as_text(value: object) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _lcb_args(text: str) -> tuple:
    return tuple(json.loads(line) for line in text.split("\n") if line.strip())


def parse_tests(ground_truth: object, extra_info: dict | None) -> CodeTests:
    """Normalise a dataset's tests; raises ValueError when there are none or the format is unknown."""
    data = json.loads(ground_truth) if isinstance(ground_truth, str) else ground_truth
    extra = extra_info or {}
    fn_name = extra.get("fn_name") or extra.get("func_name")
    if isinstance(data, dict) and "inputs" in data:  # APPS / TACO
        fn_name = data.get("fn_name") or fn_name
        if fn_name:
            cases = [CodeTest(tuple(i) if isinstance(i, list) else (i,), o)
                     for i, o in zip(data["inputs"], data["outputs"], strict=True)]
        else:
            cases = [CodeTest(_as_text(i), _as_text(o)) for i, o in zip(data["inputs"], data["outputs"], strict=True)]
    elif isinstance(data, dict) and any(k.endswith("_tests") for k in data):  # CodeContests
        fn_name = None
        cases = [CodeTest(i, o) for key in ("public_tests", "private_tests", "generated_tests")
                 for i, o in zip((data.get(key) or {}).get("input", []), (data.get(key) or {}).get("output", []),
                                 strict=True)]
    elif isinstance(data, list) and data and all(isinstance(t, dict) and "input" in t for t in data):  # LCB
        functional = data[0].get("testtype") == "functional"
        if functional and not fn_name:
            raise ValueError("functional tests need extra_info['func_name']")
        fn_name = fn_name if functional else None
        cases = [CodeTest(_lcb_args(t["input"]), json.loads(t["output"])) if functional
                 else CodeTest(t["input"], t["output"]) for t in data]
    else:
        raise ValueError(f"unrecognised test format: {type(data).__name__}")
    if not cases:
        raise ValueError("no test cases")
    return CodeTests(fn_name, tuple(cases))


def first_mismatch(actual: str, expected: str) -> int | None:
    """Index of the first output token that does not match the expected one (numbers as
    `numbers_match`), the shorter length when only the counts differ, None when all match."""
    got, want = actual.split(), expected.split()
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            pred, gold = number_token(a), number_token(b)
            if pred is None or gold is None or not numbers_match(pred, gold):
                return i
    return None if len(got) == len(want) else min(len(got), len(want))


def _as_json_number(value: object) -> Number | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (
            float("inf"), float("-inf")):
        return None
    return Number(Fraction(value), isinstance(value, int), isinstance(value, float))


def _values_match(actual: object, expected: object) -> bool:
    pred, gold = _as_json_number(actual), _as_json_number(expected)
    if pred is not None and gold is not None:
        return numbers_match(pred, gold)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(map(_values_match, actual, expected))
    return actual == expected


def _describe_error(result) -> str:
    """"error: ZeroDivisionError": the status and the exception class of the last stderr line."""
    lines = result.stderr.strip().splitlines()
    name = _ERROR_NAME.match(lines[-1].strip()) if lines else None
    return f"{result.status}: {name.group(1)}" if name else result.status


def _call_driver(fn_name: str, args: tuple, marker: str) -> str:
    # Appended to the program; the random marker keeps the program's own prints apart.
    return f"""

def _memento_call():
    import json, sys
    name, args = {fn_name!r}, json.loads({json.dumps(list(args))!r})
    target = getattr(globals()["Solution"](), name) if "Solution" in globals() else globals()[name]
    result = target(*args)
    sys.stdout.write("\\n" + {marker!r} + json.dumps(result, default=repr) + "\\n")

_memento_call()
"""


def _run_one(program: str, fn_name: str | None, test: CodeTest, limits: SandboxLimits) -> tuple[bool, str, bool]:
    """(passed, failure description, timed out) for one test."""
    if fn_name is None:
        result = run_python(program, stdin=str(test.input), limits=limits)
        if result.status != "ok":
            return False, _describe_error(result), result.status == "timeout"
        mismatch = first_mismatch(result.stdout, str(test.expected))
        if mismatch is None:
            return True, "", False
        counts = f"{len(result.stdout.split())} tokens, expected {len(str(test.expected).split())}"
        return False, f"wrong output: {counts}, first difference at token {mismatch}", False
    marker = f"@@memento-result-{secrets.token_hex(8)}@@"
    result = run_python(_CALL_PRELUDE + program + _call_driver(fn_name, test.input, marker), limits=limits)
    if result.status != "ok":
        return False, _describe_error(result), result.status == "timeout"
    if marker not in result.stdout:
        return False, "no return value", False
    try:
        actual = json.loads(result.stdout.rsplit(marker, 1)[1])
    except ValueError:
        return False, "unreadable return value", False
    expected = test.expected
    ok = _values_match(actual, expected) or (  # APPS wraps single return values in a list
        isinstance(expected, list) and len(expected) == 1 and _values_match(actual, expected[0]))
    return ok, "" if ok else f"returned a different {type(actual).__name__}", False


def score_code(response: str, tests: CodeTests, limits: SandboxLimits, partial_credit: bool,
               max_seconds: float, max_tests: int | None = None) -> CodeResult:
    """Run the program in `response` on `tests`; stops at the first failure unless `partial_credit`."""
    program = extract_program(response)
    cases = tests.cases[:max_tests] if max_tests else tests.cases
    if program is None:
        return CodeResult("no_answer", 0, len(cases), None, "")
    deadline = time.monotonic() + max_seconds
    passed, first_failure, timed_out = 0, "", False
    for test in cases:
        if time.monotonic() >= deadline:
            timed_out, first_failure = True, first_failure or "sample time budget exhausted"
            break
        ok, failure, test_timed_out = _run_one(program, tests.fn_name, test, limits)
        passed += ok
        if not ok:
            first_failure = first_failure or failure
            timed_out = timed_out or test_timed_out
            if not partial_credit:
                break
    if passed == len(cases):
        verdict = "correct"
    elif timed_out:
        verdict = "timeout"
    else:
        verdict = "partial" if passed and partial_credit else "wrong"
    return CodeResult(verdict, passed, len(cases), program, first_failure)
