"""A pool of child processes that run verifier functions under a hard wall-clock kill.

Why not concurrent.futures.ProcessPoolExecutor: it cannot stop one stuck call, and a dead worker
breaks the whole executor. Here each call has a deadline; a worker past it is SIGKILLed and
replaced, a worker that dies (segfault, C stack overflow, OOM kill) is replaced, and the call
reports "timeout" or "crash" instead of raising. Workers are plain `python -c` children talking
over a socketpair (no multiprocessing spawn, so the trainer's __main__ is never re-imported); they
exit on EOF when the pool is closed or the trainer dies, and by PDEATHSIG if busy.

    with VerifierPool(workers=2, timeout_seconds=5) as pool:
        [outcome] = pool.run([Call("rewards.math:score_math", ("\\\\boxed{2}", "2", "math"))])
"""

import importlib
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Literal

STARTUP_SECONDS = 120.0  # a worker importing sympy on a loaded machine can be slow
MAX_FAILED_STARTS = 3  # in a row: the worker cannot start at all (bad preload, no memory)
_REPO_ROOT = str(Path(__file__).resolve().parents[1])

OutcomeStatus = Literal["ok", "error", "timeout", "crash"]


@dataclass(frozen=True)
class Call:
    function: str  # "package.module:name" or "/path/to/file.py:name"
    args: tuple


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    value: object = None  # the function's return value when status == "ok"
    error: str = ""
    seconds: float = 0.0


def load_function(spec: str) -> Callable:
    """Resolve "package.module:name" or "/path/to/file.py:name" to the function it names."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"function spec must look like 'pkg.module:fn' or '/path/file.py:fn', got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser().resolve()
        module_spec = importlib.util.spec_from_file_location(f"_reward_fn_{abs(hash(path))}", path)
        if module_spec is None or not path.is_file():
            raise FileNotFoundError(f"no such reward function file: {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    function = getattr(module, name, None)
    if not callable(function):
        raise AttributeError(f"{spec!r}: {name!r} is not a function of {module_name!r}")
    return function


def worker_main(fd: int, memory_mb: int, preload: list[str]) -> None:
    """Entry point of a worker process: serve (index, function, args) requests until EOF."""
    import ctypes

    ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the trainer
    if memory_mb:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    for module in preload:
        importlib.import_module(module)
    conn = Connection(fd)
    conn.send(("ready",))
    functions: dict[str, Callable] = {}
    while True:
        try:
            index, spec, args = conn.recv()
        except (EOFError, OSError):
            return
        start = time.monotonic()
        try:
            if spec not in functions:
                functions[spec] = load_function(spec)
            reply = (index, "ok", functions[spec](*args), "")
        except BaseException as e:  # noqa: BLE001 - anything a verifier does is reported, never fatal
            reply = (index, "error", None, f"{type(e).__name__}: {str(e)[:500]}")
        try:
            conn.send((*reply, time.monotonic() - start))
        except Exception as e:  # an unpicklable return value
            conn.send((index, "error", None, f"unsendable result: {e!r}", time.monotonic() - start))


@dataclass
class _Worker:
    proc: subprocess.Popen
    conn: Connection
    started: float
    ready: bool = False
    task: int | None = None  # index of the call it is running
    deadline: float = 0.0

    def kill(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@dataclass
class PoolStats:
    timeouts: int = 0
    crashes: int = 0
    restarts: int = 0
    failed_starts: int = 0  # consecutive; reset when a worker becomes ready


class VerifierPool:
    """`workers` long-lived processes; `run` blocks until every call has an outcome."""

    def __init__(self, workers: int, timeout_seconds: float, memory_mb: int = 4096,
                 preload: tuple[str, ...] = ()):
        if workers < 1 or timeout_seconds <= 0:
            raise ValueError(f"need workers >= 1 and timeout_seconds > 0, got {workers}, {timeout_seconds}")
        self.timeout_seconds = timeout_seconds
        self.memory_mb = memory_mb
        self.preload = list(preload)
        self.stats = PoolStats()
        self._workers: list[_Worker] = []
        self._size = workers
        self._finalizer = weakref.finalize(self, _kill_all, self._workers)

    def _spawn(self) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        code = (f"from rewards.pool import worker_main; "
                f"worker_main({child_sock.fileno()}, {self.memory_mb}, {self.preload!r})")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_REPO_ROOT, os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child_sock.fileno()], env=env,
                                stdin=subprocess.DEVNULL)
        child_sock.close()
        return _Worker(proc, Connection(parent_sock.detach()), time.monotonic())

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self._workers.append(self._spawn())
        self.stats.restarts += 1

    def run(self, calls: list[Call]) -> list[Outcome]:
        """Run every call; each gets at most `timeout_seconds` once a worker has started it."""
        while len(self._workers) < self._size:
            self._workers.append(self._spawn())
        outcomes: list[Outcome | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        while pending or any(w.task is not None for w in self._workers):
            for worker in self._workers:
                if worker.ready and worker.task is None and pending:
                    index = pending.popleft()
                    try:
                        worker.conn.send((index, calls[index].function, calls[index].args))
                    except (OSError, ValueError) as e:  # died while idle; retry the call elsewhere
                        pending.appendleft(index)
                        self._crash(worker, None, repr(e), outcomes)
                        break
                    worker.task, worker.deadline = index, time.monotonic() + self.timeout_seconds
            self._wait_and_collect(outcomes)
            if self.stats.failed_starts >= MAX_FAILED_STARTS:
                for index in pending:
                    outcomes[index] = Outcome("crash", None, "verifier workers fail to start")
                pending.clear()
        return outcomes  # type: ignore[return-value]

    def _wait_and_collect(self, outcomes: list[Outcome | None]) -> None:
        now = time.monotonic()
        deadlines = [w.deadline if w.ready else w.started + STARTUP_SECONDS for w in self._workers]
        ready = wait([w.conn for w in self._workers], timeout=max(0.0, min(deadlines) - now))
        for worker in [w for w in self._workers if w.conn in ready]:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError) as e:
                self._crash(worker, worker.task, f"worker died: {e!r} (exit {worker.proc.poll()})", outcomes)
                continue
            if message == ("ready",):
                worker.ready = True
                self.stats.failed_starts = 0
                continue
            index, status, value, error, seconds = message
            outcomes[index] = Outcome(status, value, error, seconds)
            worker.task = None
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.task is not None and now >= worker.deadline:
                outcomes[worker.task] = Outcome("timeout", None, f"killed after {self.timeout_seconds}s",
                                                self.timeout_seconds)
                self.stats.timeouts += 1
                self._replace(worker)
            elif not worker.ready and now >= worker.started + STARTUP_SECONDS:
                self.stats.failed_starts += 1
                self._replace(worker)

    def _crash(self, worker: _Worker, index: int | None, error: str, outcomes: list[Outcome | None]) -> None:
        if index is not None:
            started = worker.deadline - self.timeout_seconds
            outcomes[index] = Outcome("crash", None, error, time.monotonic() - started)
            self.stats.crashes += 1
        if not worker.ready:
            self.stats.failed_starts += 1
        self._replace(worker)

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()
    workers.clear()
