"""The reward manager: routing, batch scoring, counted failures, user functions, lifecycle."""

import json
import math
import threading
import time

import psutil
import pytest
from omegaconf import OmegaConf

from rewards.format import BLOCK_END, BLOCK_START, SUMMARY_END, SUMMARY_START
from rewards.manager import RewardConfig, RewardManager
from rewards.sandbox import SandboxUnavailable, resolve_isolation

FAST = dict(math_workers=2, math_timeout_seconds=2.0, code_workers=2, code_test_seconds=5.0, code_sample_seconds=20)
POWER_TOWER = "</think>\\boxed{9^{9^{9^{9}}}}"
WELL_FORMED = f"<think>{BLOCK_START}{'r' * 100}{BLOCK_END}{SUMMARY_START}m{SUMMARY_END}</think>\\boxed{{504}}"
REVERSE_TESTS = json.dumps({"inputs": ["abc\n"], "outputs": ["cba\n"]})


@pytest.fixture(scope="module")
def manager():
    with RewardManager(RewardConfig(**FAST)) as manager:
        yield manager


@pytest.mark.parametrize("source,kind", [
    ("openai/gsm8k", "number"), ("aime", "number"), ("AIME2025", "number"), ("memento_arith", "number"),
    ("lighteval/MATH", "math"), ("math", "math"), ("HuggingFaceH4/MATH-500", "math"), ("math_dapo", "math"),
    ("gpqa", "choice"), ("Idavidrein/gpqa_diamond", "choice"),
    ("codecontests", "code"), ("deepmind/code_contests", "code"), ("livecodebench", "code"), ("apps", "code"),
    ("codeparrot/apps", "code"), ("taco", "code"), ("BAAI/TACO", "code"),
    ("something_else", "none"),
])
def test_data_source_routing(manager, source, kind):
    assert manager.route(source) == kind


def test_mixed_batch_is_scored_per_sample(manager):
    batch = manager.score(
        ["</think>\\boxed{504}", "</think>\\boxed{503}", "<think>cut off", "</think>The answer is (C).",
         "</think>```python\nprint(input()[::-1])\n```", "#### 1,234"],
        ["aime", "aime", "lighteval/MATH", "gpqa", "livecodebench", "openai/gsm8k"],
        ["504", "504", "1", "C", REVERSE_TESTS, "Some work.\n#### 1234"],
        [None] * 6)
    assert batch.scores == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert [i.verdict for i in batch.infos] == ["correct", "wrong", "no_answer", "correct", "correct", "correct"]
    assert [i.extracted for i in batch.infos][:2] == ["504", "503"]
    assert batch.infos[4].tests_passed == batch.infos[4].tests_total == 1
    assert batch.metrics["reward/accuracy"] == pytest.approx(4 / 6)
    assert batch.metrics["reward/no_answer_frac"] == pytest.approx(1 / 6)
    assert batch.metrics["reward/errors"] == 0


def test_pathological_check_times_out_scores_zero_and_is_counted(manager):
    start = time.monotonic()
    batch = manager.score([POWER_TOWER, "</think>\\boxed{2}"], ["math", "math"], ["1", "2"], [None, None])
    assert batch.scores == [0.0, 1.0]
    assert (batch.infos[0].verdict, batch.infos[0].error) == ("timeout", "verifier_timeout")
    assert batch.metrics["reward/timeouts"] == 1 and batch.metrics["reward/verifier_timeouts"] == 1
    assert time.monotonic() - start < FAST["math_timeout_seconds"] + 6


GARBAGE_RESPONSES = ["", None, 12345, b"bytes", "\\boxed{" * 10_000, "x" * (1 << 20), "\udcff\x00😀",
                     "</think>" + "\\frac{1}{" * 300 + "}" * 300, "</think>```python\n" + "(" * 10_000 + "\n```"]


@pytest.mark.parametrize("source,truth", [("math", "1"), ("openai/gsm8k", None), ("gpqa", float("nan")),
                                          ("apps", "{not json"), ("livecodebench", {"weird": 1}), ("???", 3)])
def test_garbage_never_raises_and_scores_a_finite_number(manager, source, truth):
    n = len(GARBAGE_RESPONSES)
    batch = manager.score(GARBAGE_RESPONSES, [source] * n, [truth] * n, [None] * n)
    assert len(batch.scores) == n and all(math.isfinite(s) and s <= 0 for s in batch.scores)
    assert all(math.isfinite(v) for v in batch.metrics.values())


def test_bad_code_ground_truth_is_an_error_not_a_crash(manager):
    batch = manager.score(["</think>```python\nprint(1)\n```"], ["apps"], ["{not json"], [None])
    assert (batch.scores, batch.infos[0].error) == ([0.0], "bad_ground_truth")
    assert batch.metrics["reward/errors"] == 1


def test_unknown_data_source_scores_zero_and_is_counted(manager):
    batch = manager.score(["\\boxed{1}"], ["my_new_dataset"], ["1"], [None])
    assert (batch.scores, batch.infos[0].error, batch.metrics["reward/errors"]) == ([0.0], "unknown_data_source", 1)


def test_mismatched_batch_lengths_raise(manager):
    with pytest.raises(ValueError, match="batch lengths differ"):
        manager.score(["a", "b"], ["math"], ["1"], [None])


def test_manager_can_score_from_a_background_thread(manager):
    batches = []
    thread = threading.Thread(target=lambda: batches.append(manager.score(["\\boxed{x^2}"], ["math"], ["x*x"], None)))
    thread.start()
    thread.join(60)
    assert batches[0].scores == [1.0]


def test_format_penalty_and_bonus_are_added_to_the_task_score():
    config = RewardConfig(**FAST, format_penalty=0.5, format_bonus=0.1)
    with RewardManager(config) as manager:
        batch = manager.score([WELL_FORMED, "</think>\\boxed{504}"], ["aime", "aime"], ["504", "504"], None)
    assert batch.scores == [pytest.approx(1.1), pytest.approx(0.5)]
    assert batch.infos[1].task_score == 1.0 and "no_blocks" in batch.infos[1].format.problems
    assert batch.metrics["format/well_formed_frac"] == 0.5


def test_partial_credit_gives_the_fraction_of_tests_passed():
    truth = json.dumps({"inputs": ["a\n", "b\n"], "outputs": ["a\n", "x\n"]})
    response = ["</think>```python\nprint(input())\n```"]
    for partial, expected in ((True, 0.5), (False, 0.0)):
        with RewardManager(RewardConfig(**FAST, partial_credit=partial)) as manager:
            assert manager.score(response, ["taco"], [truth], None).scores == [expected]


CUSTOM = """
def compute_score(data_source, solution_str, ground_truth, extra_info):
    if solution_str == "boom":
        raise RuntimeError("user bug")
    return {"score": float(solution_str == ground_truth) + extra_info["bonus"]}
"""


def test_custom_function_from_a_file_path_replaces_routing(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(CUSTOM)
    with RewardManager(RewardConfig(**FAST, custom_function=f"{path}:compute_score")) as manager:
        batch = manager.score(["yes", "no", "boom"], ["anything"] * 3, ["yes"] * 3, [{"bonus": 0.25}] * 3)
    assert batch.scores == [1.25, 0.25, 0.0]
    assert [i.verifier for i in batch.infos] == ["custom"] * 3
    assert batch.infos[2].error == "verifier_error" and "user bug" in batch.infos[2].message


def test_custom_function_from_a_module_path():
    with RewardManager(RewardConfig(**FAST, custom_function="math:hypot")) as manager:
        assert manager.score(["ignored"], ["x"], [0], [None]).scores == [0.0]  # hypot(x, resp, 0, None) -> error
        assert manager.score(["ignored"], ["x"], [0], [None]).metrics["reward/errors"] == 1


@pytest.mark.parametrize("spec", ["/no/such/file.py:fn", "no_such_module_xyz:fn", "math:not_there", "missing_colon"])
def test_bad_custom_function_path_fails_at_construction(spec):
    with pytest.raises((ValueError, FileNotFoundError, AttributeError, ModuleNotFoundError)):
        RewardManager(RewardConfig(**FAST, custom_function=spec))


@pytest.mark.parametrize("key,value", [("math_workers", 0), ("math_timeout_seconds", -1), ("code_max_tests", 0),
                                       ("format_penalty", -0.1), ("sandbox_isolation", "none"),
                                       ("sandbox_isolation", "audit")])
def test_config_errors_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        RewardConfig(**{key: value})


def test_config_embeds_in_a_hydra_structured_config():
    config = OmegaConf.merge(OmegaConf.structured(RewardConfig), {"partial_credit": True, "custom_function": None,
                                                                   "extra_routes": {"my_data": "math"}})
    config = OmegaConf.to_object(config)
    assert isinstance(config, RewardConfig) and config.partial_credit and config.extra_routes == {"my_data": "math"}


def test_extra_routes_are_checked_first():
    with RewardManager(RewardConfig(**FAST, extra_routes={"my_data": "number"})) as manager:
        assert manager.route("org/my_data_v2") == "number"


def test_close_leaves_no_processes():
    manager = RewardManager(RewardConfig(**FAST))
    manager.score(["\\boxed{1}", "</think>```python\nprint(1)\n```"], ["math", "apps"],
                  ["1", json.dumps({"inputs": [""], "outputs": ["1"]})], None)
    pids = manager.pool.worker_pids()
    manager.close()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_isolation_in_use_is_probed_once_and_recorded(manager):
    assert manager.sandbox_isolation == resolve_isolation("auto") != "insecure"
    batch = manager.score(["</think>\\boxed{1}"], ["math"], ["1"], None)
    assert batch.metrics["reward/sandbox_insecure"] == 0.0


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="as root the user-namespace level cannot work")
def test_code_scoring_refuses_when_no_sandbox_works(caplog):
    with RewardManager(RewardConfig(**FAST, sandbox_isolation="userns")) as manager:
        assert manager.sandbox_isolation is None
        assert "code rewards are disabled" in caplog.text
        assert manager.score(["</think>\\boxed{1}"], ["math"], ["1"], None).scores == [1.0]  # others still work
        with pytest.raises(SandboxUnavailable, match="Fix:"):
            manager.score(["</think>```python\nprint(1)\n```"], ["apps"], [REVERSE_TESTS])


def test_insecure_sandbox_warns_once_and_is_flagged_every_batch(caplog):
    with RewardManager(RewardConfig(**FAST, sandbox_isolation="insecure")) as manager:
        batches = [manager.score(["</think>```python\nprint(input()[::-1])\n```"], ["apps"], [REVERSE_TESTS])
                   for _ in range(2)]
    assert [b.scores for b in batches] == [[1.0], [1.0]]
    assert all(b.metrics["reward/sandbox_insecure"] == 1.0 for b in batches)
    assert sum("WITHOUT isolation" in r.message for r in caplog.records) == 1


def test_wrong_answers_close_to_the_truth_score_zero(manager):
    code_truth = json.dumps({"inputs": [""], "outputs": ["1000000007"]})
    batch = manager.score(
        ["</think>#### 1000001", "</think>\\boxed{123456700}", "</think>the answer is a bit unclear; maybe B",
         "</think>```python\nprint(1000000006)\n```", "</think>\\boxed{" + "3" * 401 + "}"],
        ["openai/gsm8k", "math", "gpqa", "apps", "aime"],
        ["1000000", "123456789", "A", code_truth, "3" * 401])
    assert batch.scores == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert batch.metrics["reward/errors"] == 0  # the 401-digit answer is not a verifier_error


def test_program_output_never_reaches_the_reward_info(manager):
    truth = json.dumps({"inputs": ["x\n"], "outputs": ["expected-answer-31337"]})
    program = "</think>```python\nprint('policy-secret', 'expected-answer-31337')\n```"
    batch = manager.score([program], ["apps"], [truth])
    info = batch.infos[0]
    assert info.score == 0.0 and "policy-secret" not in info.message and "31337" not in info.message
