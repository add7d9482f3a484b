"""rl.shutdown: a run that is told to stop, or simply ends, leaves no process behind."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
# A stand-in for the demo: a child that ignores SIGTERM (it has to be killed) and a child with a
# grandchild, as vLLM's engine core has its workers.
RUN = """
import subprocess, sys, time
from rl.shutdown import reap_children_at_exit
reap_children_at_exit()
if sys.argv[2] == "ray":  # ray.init puts in its own SIGTERM handler; init_ray takes it back
    from rl import cluster
    cluster.init_ray(None)
stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                             "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(600)"])
tree = subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600"])
print("started", flush=True)
try:
    time.sleep(600 if sys.argv[1] == "wait" else 3)
finally:
    print("finally ran", flush=True)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("ending,ray", [("SIGTERM", ""), ("SIGHUP", ""), ("normal exit", ""),
                                        ("SIGTERM", "ray")])
def test_no_descendant_outlives_the_run(ending, ray):
    run = subprocess.Popen([sys.executable, "-c", RUN, "wait" if ending != "normal exit" else "end",
                            ray], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = [run.stdout.readline().strip() for _ in range(2)]
    assert sorted(lines) == ["ready", "started"]
    descendants = psutil.Process(run.pid).children(recursive=True)
    deadline = time.monotonic() + 10
    while len(descendants) < 4 and time.monotonic() < deadline:  # sh's two sleeps
        time.sleep(0.1)
        descendants = psutil.Process(run.pid).children(recursive=True)
    assert len(descendants) >= 4
    if ending != "normal exit":
        run.send_signal(getattr(signal, ending))
    out, _ = run.communicate(timeout=60)
    assert "finally ran" in out  # the signal unwound the run like Ctrl-C
    assert run.returncode == (128 + getattr(signal, ending) if ending != "normal exit" else 0)
    deadline = time.monotonic() + 10
    while not all(gone(p.pid) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(p.pid) for p in descendants), [p.pid for p in descendants if not gone(p.pid)]


# A sweep running one seed's run: the seed's run cleans up after itself only if it gets SIGTERM,
# not the SIGKILL that subprocess.run sends when its caller is interrupted.
SWEEP = """
import sys
from pathlib import Path
from rl.shutdown import reap_children_at_exit, run_child
reap_children_at_exit()
run_child([sys.executable, "-c", sys.argv[1]], cwd=Path.cwd())
"""
SEED_RUN = """
import subprocess, time
from rl.shutdown import reap_children_at_exit
reap_children_at_exit()
subprocess.Popen(["sleep", "600"])
print("started", flush=True)
try:
    time.sleep(600)
finally:
    print("seed run cleaned up", flush=True)
"""


def test_stopping_a_sweep_lets_its_running_child_clean_up():
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP, SEED_RUN], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert sweep.stdout.readline().strip() == "started"
    descendants = psutil.Process(sweep.pid).children(recursive=True)
    assert len(descendants) == 2  # the seed's run and its sleep
    sweep.send_signal(signal.SIGTERM)
    out, _ = sweep.communicate(timeout=60)
    assert "seed run cleaned up" in out
    assert sweep.returncode == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while not all(gone(p.pid) for p in descendants) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(p.pid) for p in descendants)
