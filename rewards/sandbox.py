"""Run one untrusted Python program with a hard wall clock, resource limits and no network.

Host side only: `run_python` creates a fresh temporary directory, starts
`rewards/sandbox_guard.py` in its own session with a scrubbed environment (the guard applies the
namespaces, credentials, rlimits and audit hook; see its docstring), kills the whole process group
at the wall-clock limit, and removes the directory afterwards. Safe to call from many threads: no
preexec_fn, no shared state. Python programs only (the code datasets we train on are Python).

    from rewards.sandbox import SandboxLimits, run_python
    result = run_python("print(input()[::-1])", stdin="abc\\n", limits=SandboxLimits(wall_seconds=2))
    assert result.status == "ok" and result.stdout == "cba\\n"
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

GUARD = Path(__file__).with_name("sandbox_guard.py")
TEMP_PREFIX = "memento-sandbox-"
NOBODY = 65534
STDERR_TAIL = 2000
# RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one; the guard mirrors it as 128 + signal
_CPU_LIMIT_CODES = {128 + signal.SIGXCPU, -signal.SIGXCPU}

RunStatus = Literal["ok", "error", "timeout", "output_limit"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. `file_size_mb` bounds every file the program writes, stdout included."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 32
    # "auto": namespaces when the OS allows them, else the audit-hook fallback; "audit": fallback only.
    isolation: Literal["auto", "audit"] = "auto"

    def __post_init__(self):
        for name in ("wall_seconds", "cpu_seconds", "memory_mb", "file_size_mb", "max_processes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"[SandboxLimits.{name}] must be > 0, got {getattr(self, name)}")
        if self.isolation not in ("auto", "audit"):
            raise ValueError(f"[SandboxLimits.isolation] must be 'auto' or 'audit', got {self.isolation!r}")


@dataclass(frozen=True)
class RunResult:
    status: RunStatus
    returncode: int | None  # None when killed at the wall clock
    stdout: str
    stderr: str  # the last STDERR_TAIL characters
    seconds: float


def _scrubbed_env(workdir: str) -> dict[str, str]:
    # Nothing from the trainer's environment (tokens, cluster addresses) reaches the program.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(source: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> RunResult:
    """Run `source` as `__main__` with `stdin`; never raises for anything the program does."""
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))  # 0700: the program cannot reach the files beside work/
    try:
        work = root / "work"
        work.mkdir()
        if os.geteuid() == 0:
            os.chown(work, NOBODY, NOBODY)
        (root / "program.py").write_text(source, encoding="utf-8", errors="replace")
        (root / "stdin").write_text(stdin, encoding="utf-8", errors="replace")
        config = {"program": str(root / "program.py"), "isolation": limits.isolation,
                  "limits": {"cpu_seconds": limits.cpu_seconds, "memory_mb": limits.memory_mb,
                             "file_size_mb": limits.file_size_mb, "max_processes": limits.max_processes}}
        cmd = [sys.executable, "-I", "-B", str(GUARD), json.dumps(config)]
        with open(root / "stdin", "rb") as fin, open(root / "stdout", "wb") as fout, \
                open(root / "stderr", "wb") as ferr:
            proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=work,
                                    env=_scrubbed_env(str(work)), start_new_session=True, close_fds=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # also reaps leftovers that stayed in the group after a normal exit
                proc.wait()
        cap = limits.file_size_mb << 20
        out_bytes = (root / "stdout").read_bytes()[:cap]
        err = (root / "stderr").read_bytes()[-4 * STDERR_TAIL:].decode("utf-8", "replace")[-STDERR_TAIL:]
        if timed_out:
            status, returncode = "timeout", None
        elif len(out_bytes) >= cap:
            status, returncode = "output_limit", proc.returncode
        elif proc.returncode in _CPU_LIMIT_CODES:
            status, returncode = "timeout", proc.returncode
        else:
            returncode = proc.returncode
            status = "ok" if returncode == 0 else "error"
        return RunResult(status, returncode, out_bytes.decode("utf-8", "replace"), err,
                         time.monotonic() - start)
    except OSError as e:  # the host could not set the run up (disk full, too many open files)
        return RunResult("error", None, "", f"sandbox: {e!r}", time.monotonic() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)
