"""Program extraction, the dataset test formats and scoring against them (real sandbox runs)."""

import json
import time

import pytest

from rewards.code import CodeTests, extract_program, parse_tests, score_code
from rewards.sandbox import SandboxLimits

LIMITS = SandboxLimits(wall_seconds=5.0, cpu_seconds=2)
REVERSE = "</think>Here:\n```python\nprint(input()[::-1])\n```"


def test_last_fenced_block_after_think_is_the_program():
    response = "<think>```python\nprint(1)\n```</think>try:\n```python\nprint(2)\n```\nbetter:\n```py\nprint(3)\n```"
    assert extract_program(response) == "print(3)\n"
    assert extract_program("</think>no code here") is None
    assert extract_program("<think>```python\nprint(1)\n```") is None  # truncated reasoning


def test_apps_stdio_tests_parse_from_a_json_string():
    tests = parse_tests(json.dumps({"inputs": ["1 2\n", ["3 4", "5"]], "outputs": ["3\n", ["7", "5"]]}), None)
    assert tests.fn_name is None
    assert [(t.input, t.expected) for t in tests.cases] == [("1 2\n", "3\n"), ("3 4\n5", "7\n5")]


def test_taco_function_tests_use_fn_name():
    tests = parse_tests({"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]}, None)
    assert tests.fn_name == "add" and tests.cases[1].input == (3, 4) and tests.cases[1].expected == [7]


def test_codecontests_tests_join_public_private_and_generated():
    data = {"public_tests": {"input": ["1\n"], "output": ["1\n"]}, "private_tests": {"input": ["2\n"], "output": ["2\n"]},
            "generated_tests": {"input": ["3\n"], "output": ["3\n"]}}
    assert [t.input for t in parse_tests(data, None).cases] == ["1\n", "2\n", "3\n"]


def test_livecodebench_functional_tests_read_one_json_value_per_line():
    data = [{"input": "[1, 2]\n\"ab\"", "output": "true", "testtype": "functional"}]
    tests = parse_tests(json.dumps(data), {"func_name": "check"})
    assert tests.fn_name == "check" and tests.cases[0].input == ([1, 2], "ab") and tests.cases[0].expected is True


@pytest.mark.parametrize("truth", ["not json", json.dumps({"inputs": [], "outputs": []}), json.dumps([1, 2]),
                                   json.dumps([{"input": "1", "output": "1", "testtype": "functional"}]),
                                   json.dumps({"inputs": ["1"], "outputs": []})])
def test_bad_ground_truth_is_rejected(truth):
    with pytest.raises(ValueError):
        parse_tests(truth, None)


STDIO = parse_tests({"inputs": ["abc\n", "xy\n", "q\n"], "outputs": ["cba\n", "yx\n", "q\n"]}, None)


def test_correct_program_passes_every_test():
    result = score_code(REVERSE, STDIO, LIMITS, partial_credit=False, max_seconds=30)
    assert (result.verdict, result.passed, result.total) == ("correct", 3, 3)


def test_pass_all_mode_stops_at_the_first_failure():
    wrong = "</think>```python\ns = input()\nprint(s[::-1] if len(s) > 1 else 'no')\n```"
    result = score_code("</think>```python\nprint(input())\n```", STDIO, LIMITS, partial_credit=False, max_seconds=30)
    assert (result.verdict, result.passed) == ("wrong", 0)
    result = score_code(wrong, STDIO, LIMITS, partial_credit=False, max_seconds=30)
    assert (result.verdict, result.passed) == ("wrong", 2)


def test_partial_credit_counts_every_test():
    wrong_last = "</think>```python\ns = input()\nprint(s[::-1] if len(s) > 1 else 'no')\n```"
    result = score_code(wrong_last, STDIO, LIMITS, partial_credit=True, max_seconds=30)
    assert (result.verdict, result.passed, result.total) == ("partial", 2, 3)


def test_output_comparison_ignores_whitespace_and_tolerates_float_rounding():
    tests = parse_tests({"inputs": [""], "outputs": ["0.3333333 2\n\n"]}, None)
    response = "</think>```python\nprint(1/3, end='  ')\nprint()\nprint(' 2 ')\n```"
    assert score_code(response, tests, LIMITS, partial_credit=False, max_seconds=30).verdict == "correct"


def test_function_call_tests_call_solution_method_or_function():
    leetcode = "</think>```python\nclass Solution:\n    def add(self, a: int, b: List[int]) -> int:\n        print('debug')\n        return a + sum(b)\n```"
    plain = "</think>```python\ndef add(a, b):\n    return a + sum(b)\n```"
    tests = parse_tests({"fn_name": "add", "inputs": [[1, [2, 3]], [0, []]], "outputs": [[6], [0]]}, None)
    for response in (leetcode, plain):
        assert score_code(response, tests, LIMITS, partial_credit=False, max_seconds=30).verdict == "correct"
    wrong = "</think>```python\ndef add(a, b):\n    return a\n```"
    assert score_code(wrong, tests, LIMITS, partial_credit=False, max_seconds=30).verdict == "wrong"


def test_slow_program_is_a_timeout_verdict():
    tests = parse_tests({"inputs": ["", ""], "outputs": ["1", "1"]}, None)
    start = time.monotonic()
    result = score_code("</think>```python\nwhile True: pass\n```", tests, LIMITS, partial_credit=False,
                        max_seconds=30)
    assert result.verdict == "timeout" and result.passed == 0
    assert time.monotonic() - start < LIMITS.wall_seconds + 5  # stopped after the first test


def test_sample_time_budget_stops_further_tests():
    tests = CodeTests(None, tuple(parse_tests({"inputs": [""] * 50, "outputs": ["1"] * 50}, None).cases))
    response = "</think>```python\nimport time; time.sleep(0.2); print(1)\n```"
    start = time.monotonic()
    result = score_code(response, tests, LIMITS, partial_credit=True, max_seconds=1.0)
    assert result.verdict == "timeout" and 0 < result.passed < 50
    assert time.monotonic() - start < 8


def test_response_without_code_has_no_answer():
    assert score_code("</think>I would loop over it.", STDIO, LIMITS, partial_credit=False, max_seconds=30).verdict \
        == "no_answer"


def test_megabyte_of_unclosed_fences_is_scanned_in_linear_time():
    response = "</think>" + "```python\nx = 1\n" * 70_000 + "```python\nprint(1)\n```"
    start = time.monotonic()
    extract_program(response)
    assert time.monotonic() - start < 10.0  # a quadratic scan takes minutes here


def test_code_in_another_language_is_not_run():
    assert extract_program("</think>```cpp\nint main() {}\n```") is None


def _stdout_tests(expected: str) -> CodeTests:
    return parse_tests({"inputs": [""], "outputs": [expected]}, None)


@pytest.mark.parametrize("printed,expected,verdict", [
    ("1000000006", "1000000007", "wrong"),  # within 1e-6 of each other: accepted before
    ("1000000007.0", "1000000007", "correct"),
    ("9" * 400 + "8", "9" * 401, "wrong"),
    ("9" * 401, "9" * 401, "correct"),
    ("0.30000000000000004", "0.3", "correct"),
    ("0.3001", "0.3", "wrong"),
])
def test_integer_tokens_compare_exactly_and_decimals_within_tolerance(printed, expected, verdict):
    response = f"</think>```python\nprint({printed!r})\n```"
    result = score_code(response, _stdout_tests(expected), LIMITS, partial_credit=False, max_seconds=30)
    assert result.verdict == verdict


def test_function_return_values_compare_exactly_for_integers():
    tests = parse_tests({"fn_name": "f", "inputs": [[]], "outputs": [[1000000007]]}, None)
    wrong = "</think>```python\ndef f():\n    return 1000000006\n```"
    close = "</think>```python\ndef f():\n    return 0.1 + 0.2\n```"
    assert score_code(wrong, tests, LIMITS, partial_credit=False, max_seconds=30).verdict == "wrong"
    tests = parse_tests({"fn_name": "f", "inputs": [[]], "outputs": [0.3]}, None)
    assert score_code(close, tests, LIMITS, partial_credit=False, max_seconds=30).verdict == "correct"


@pytest.mark.parametrize("program", ["print('leaked-secret', 777776)", "raise ValueError('leaked-secret 777777')",
                                     "import sys; sys.stderr.write('leaked-secret 777777'); sys.exit(3)"])
def test_failure_message_never_holds_program_or_expected_output(program):
    response = f"</think>```python\n{program}\n```"
    result = score_code(response, _stdout_tests("777777"), LIMITS, partial_credit=False, max_seconds=30)
    assert result.verdict == "wrong" and result.first_failure
    assert "leaked-secret" not in result.first_failure and "777777" not in result.first_failure
