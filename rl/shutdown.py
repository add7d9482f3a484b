"""Leave no process behind when a run ends, whether it finishes, fails or is told to stop.

vLLM's CPU engine runs its core and workers in child processes. A run that dies without closing
its engine (`kill`, `timeout`, a terminal closed) left them spinning at 10-20% of a core each,
slowing whatever ran next on a 2-core machine. `reap_children_at_exit()` makes SIGTERM and
SIGHUP exit like Ctrl-C does (SystemExit unwinds every `finally`, so engines and Ray shut down
in order), and at interpreter exit terminates, then kills, every descendant still alive. Only
SIGKILL escapes it: nothing runs in a process killed that way. `run_child` runs a child run so
that stopping the parent stops the child the same way, instead of SIGKILL (what
`subprocess.run` sends), which would orphan the child's own engine and Ray processes.
`ray.init` puts in a SIGTERM handler of its own (a stack dump, no cleanup), so `rl.cluster`
calls `restore_signal_handlers()` once Ray is up.
"""

from __future__ import annotations

import atexit
import signal
import subprocess
import sys
from pathlib import Path

import psutil

_GRACE_SECONDS = 5.0
_installed = False


def reap_children_at_exit() -> None:
    """Install the SIGTERM/SIGHUP handlers and the exit-time reaper (idempotent). Call it before
    Ray starts, so the reaper runs after Ray's own exit-time shutdown (exit hooks run last-in
    first-out)."""
    global _installed
    if not _installed:
        _installed = True
        atexit.register(reap_descendants)
    restore_signal_handlers()


def restore_signal_handlers() -> None:
    """Put the SIGTERM/SIGHUP handlers back after a library replaced them; a no-op unless
    `reap_children_at_exit` installed them."""
    if _installed:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    print(f"\nstopping: got {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def reap_descendants() -> list[int]:
    """Terminate every descendant of this process and kill those alive after a grace period;
    returns the pids it found."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=_GRACE_SECONDS)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=_GRACE_SECONDS)
    return [child.pid for child in children]


def run_child(cmd: list[str], cwd: Path, grace_seconds: float = 60.0) -> int:
    """Run `cmd` to completion and return its exit code. If this process is stopped meanwhile,
    the child gets SIGTERM and `grace_seconds` to shut down its own children before SIGKILL."""
    child = subprocess.Popen(cmd, cwd=cwd)
    try:
        return child.wait()
    except BaseException:
        child.terminate()
        try:
            child.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
