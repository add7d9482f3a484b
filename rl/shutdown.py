"""Leave no process behind when a run ends, whether it finishes, fails or is told to stop.

vLLM's CPU engine runs its core and workers in child processes. A run that dies without closing
its engine (`kill`, `timeout`, a terminal closed) left them spinning at 10-20% of a core each,
slowing whatever ran next on a 2-core machine. `reap_children_at_exit()` makes SIGTERM and
SIGHUP exit like Ctrl-C does (SystemExit unwinds every `finally`, so engines and Ray shut down
in order), and at interpreter exit terminates, then kills, every descendant still alive. Only
SIGKILL escapes it: nothing runs in a process killed that way.
"""

from __future__ import annotations

import atexit
import signal
import sys

import psutil

_GRACE_SECONDS = 5.0


def reap_children_at_exit() -> None:
    """Install the SIGTERM/SIGHUP handlers (again, where a library replaced them: call this after
    `ray.init`, which puts in its own) and, once, the exit-time reaper."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    if not getattr(reap_children_at_exit, "registered", False):
        reap_children_at_exit.registered = True
        atexit.register(reap_descendants)


def _exit_on_signal(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    print(f"\nstopping: got {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def reap_descendants() -> list[int]:
    """Terminate every descendant of this process and kill those alive after a grace period;
    returns the pids it found. Ray, when this process started it, is shut down first, in its
    own order."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001 - exiting anyway; the processes are reaped below
            pass
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
