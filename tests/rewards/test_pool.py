"""The verifier pool: hard wall-clock kill, replacement of dead workers, no leaks."""

import threading
import time

import psutil
import pytest

from rewards.pool import Call, VerifierPool, load_function

TIMEOUT = 2.0
GOOD = Call("rewards.math:score_math", ("\\boxed{\\frac{1}{2}}", "0.5", "math"))
POWER_TOWER = Call("rewards.math:score_math", ("\\boxed{9^{9^{9^{9}}}}", "1", "math"))  # sympy never finishes


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout_seconds=TIMEOUT, preload=("math_verify", "rewards.math")) as pool:
        yield pool


def test_math_check_runs_in_a_worker(pool):
    [outcome] = pool.run([GOOD])
    assert outcome.status == "ok" and outcome.value.correct


def test_pathological_expression_costs_at_most_the_timeout(pool):
    start = time.monotonic()
    outcomes = pool.run([POWER_TOWER, GOOD])
    assert [o.status for o in outcomes] == ["timeout", "ok"]
    assert time.monotonic() - start < TIMEOUT + 5  # slack for a loaded 2-core machine


def test_killed_worker_is_replaced_and_the_pool_keeps_working(pool):
    pids_before = set(pool.worker_pids())
    pool.run([POWER_TOWER])
    assert set(pool.worker_pids()) != pids_before
    assert all(o.status == "ok" for o in pool.run([GOOD] * 6))


def test_crashing_worker_reports_a_crash_not_an_exception(pool):
    outcomes = pool.run([Call("os:abort", ()), GOOD])
    assert [o.status for o in outcomes] == ["crash", "ok"]


def test_exception_in_a_verifier_is_an_error_outcome(pool):
    [outcome] = pool.run([Call("rewards.math:score_math", ())])
    assert outcome.status == "error" and "TypeError" in outcome.error


def test_pool_works_from_a_non_main_thread(pool):
    # math-verify's own signal timeouts raise outside the main thread; ours do not use signals
    results = []
    thread = threading.Thread(target=lambda: results.extend(pool.run([GOOD, GOOD])))
    thread.start()
    thread.join(60)
    assert [o.status for o in results] == ["ok", "ok"]


def test_close_leaves_no_worker_processes():
    pool = VerifierPool(workers=2, timeout_seconds=TIMEOUT)
    pool.run([Call("math:sqrt", (4.0,))] * 3)
    pids = pool.worker_pids()
    pool.close()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_workers_that_cannot_start_fail_the_calls_instead_of_hanging():
    with VerifierPool(workers=1, timeout_seconds=TIMEOUT, preload=("no_such_module_anywhere",)) as pool:
        [outcome] = pool.run([Call("math:sqrt", (4.0,))])
    assert outcome.status == "crash"


@pytest.mark.parametrize("spec", ["no_colon", "pkg.mod:", ":fn", "/does/not/exist.py:fn", "os:sep"])
def test_bad_function_specs_are_rejected(spec):
    with pytest.raises((ValueError, FileNotFoundError, AttributeError)):
        load_function(spec)
