"""Run one untrusted Python program with a hard wall clock, per-run limits and no way out.

Host side only: `run_python` writes the program and its stdin to a fresh 0700 directory, starts
`rewards/sandbox_guard.py` (which applies the isolation; see its docstring) in its own session with
a scrubbed environment, stops it at the wall clock, and removes the directory afterwards. Safe to
call from many threads: no preexec_fn, no shared state. Python programs only.

Isolation levels (docs/sandbox.md: the threat model and what each one guarantees):
  "bwrap"       bubblewrap builds the namespaces and the allowlisted root; needs `bwrap` on PATH
  "namespaces"  the guard builds the same itself; needs a root trainer
  "userns"      the same inside an unprivileged user namespace; for a non-root trainer
  "insecure"    rlimits and a Python audit hook only; used only when asked for by name
"auto" is the first of the first three that works on this host (probed once per process); when
none does, `run_python` raises SandboxUnavailable with what to change.

    from rewards.sandbox import SandboxLimits, run_python
    result = run_python("print(input()[::-1])", stdin="abc\\n", limits=SandboxLimits(wall_seconds=2))
    assert result.status == "ok" and result.stdout == "cba\\n"
"""

import functools
import json
import os
import secrets
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rewards.sandbox_seccomp import seccomp_program

GUARD_SOURCE = Path(__file__).with_name("sandbox_guard.py").read_text()
SETUP_FAILED = 120  # sandbox_guard.SETUP_FAILED
TEMP_PREFIX = "memento-sandbox-"
STDERR_TAIL = 2000
TERMINATE_GRACE_SECONDS = 2.0  # the guard's SIGTERM handler kills and reaps its children in this time
# As root every run gets its own uid from this range: RLIMIT_NPROC is counted per uid, and runs
# cannot signal or read each other. Not in /etc/passwd; never a real user's.
RUN_UID_BASE, RUN_UID_SPAN = 1 << 30, 1 << 29
# Host paths bound read-only into the sandbox, besides the interpreter's prefixes: system libraries
# and what the dynamic loader reads. Nothing else of the host's filesystem is visible.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")
PROBE_PROGRAM = "import os\nprint('memento-sandbox-ok', os.getuid() != 0)"
# RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one; the guard mirrors it as 128 + signal
_CPU_LIMIT_CODES = {128 + signal.SIGXCPU, -signal.SIGXCPU}

Isolation = Literal["bwrap", "namespaces", "userns", "insecure"]
ISOLATION_CHOICES = ("auto", "bwrap", "namespaces", "userns", "insecure")
AUTO_ORDER: tuple[Isolation, ...] = ("bwrap", "namespaces", "userns")
RunStatus = Literal["ok", "error", "timeout", "output_limit"]


class SandboxUnavailable(RuntimeError):
    """No isolation level that was asked for works on this host."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. `file_size_mb` bounds every file the program writes, stdout included;
    `disk_mb` all of them together; `max_processes` its threads (it may not start processes)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    disk_mb: int = 64
    max_processes: int = 32
    isolation: str = "auto"  # one of ISOLATION_CHOICES

    def __post_init__(self):
        for name in ("wall_seconds", "cpu_seconds", "memory_mb", "file_size_mb", "disk_mb", "max_processes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"[SandboxLimits.{name}] must be > 0, got {getattr(self, name)}")
        if self.isolation not in ISOLATION_CHOICES:
            raise ValueError(f"[SandboxLimits.isolation] must be one of {ISOLATION_CHOICES}, got {self.isolation!r}")


@dataclass(frozen=True)
class RunResult:
    status: RunStatus
    returncode: int | None  # None when killed at the wall clock
    stdout: str
    stderr: str  # the last STDERR_TAIL characters
    seconds: float


def visible_paths() -> list[str]:
    """What the sandbox sees of the host, parents first: SYSTEM_PATHS and the interpreter's prefixes."""
    paths = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    for prefix in sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}):
        prefix = os.path.abspath(prefix)
        if not any(prefix == p or prefix.startswith(p + "/") for p in paths):
            paths.append(prefix)
    return paths


def _bwrap_argv(inner_config: dict, limits: SandboxLimits) -> list[str]:
    as_root = os.geteuid() == 0
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--unshare-ipc",
            "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        argv.append("--unshare-user")
    # The work dir first, so an interpreter under /tmp is bound on top of it instead of hidden.
    argv += ["--size", str(limits.disk_mb << 20), "--tmpfs", "/tmp"]
    paths = visible_paths()
    parents = sorted({str(parent) for path in paths for parent in Path(path).parents}
                     - {"/", "/tmp", *paths})
    for parent in parents:  # bubblewrap would create them 0700, out of reach of the run's uid
        argv += ["--perms", "0755", "--dir", parent]
    for path in paths:
        argv += ["--symlink", os.readlink(path), path] if os.path.islink(path) else ["--ro-bind", path, path]
    argv += ["--dev", "/dev", "--proc", "/proc", "--remount-ro", "/dev", "--remount-ro", "/",
             "--chdir", "/tmp", "--cap-drop", "ALL"]
    if as_root:  # the guard inside switches to the run's uid, then drops these too
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_CHOWN"):
            argv += ["--cap-add", cap]
    return argv + ["--", *_guard_command(inner_config)]


def _guard_command(config: dict) -> list[str]:
    # -S: no site import (the editable installs' finders cost ~0.1 s a run); the guard adds the
    # site-packages directories itself, without .pth files
    return [sys.executable, "-I", "-S", "-B", "-c", GUARD_SOURCE, json.dumps(config)]


def _guard_config(isolation: Isolation, limits: SandboxLimits, root: Path, source_fd: int) -> dict:
    run_uid = RUN_UID_BASE + secrets.randbelow(RUN_UID_SPAN) if os.geteuid() == 0 and isolation != "insecure" \
        else None
    config = {"stage": "outer", "isolation": isolation, "run_uid": run_uid, "source_fd": source_fd,
              "mountpoint": str(root / "mnt"), "workdir": str(root / "work"), "visible": visible_paths(),
              "site_packages": site.getsitepackages(),
              "limits": {"cpu_seconds": limits.cpu_seconds, "memory_mb": limits.memory_mb,
                         "file_size_mb": limits.file_size_mb, "disk_mb": limits.disk_mb,
                         "max_processes": limits.max_processes}}
    if isolation != "insecure":
        config["seccomp"] = seccomp_program().hex()
    if isolation == "bwrap":
        config["bwrap_argv"] = _bwrap_argv(dict(config, stage="inner"), limits)
    return config


def _scrubbed_env(home: str) -> dict[str, str]:
    # Nothing from the trainer's environment (tokens, cluster addresses) reaches the program.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _unlink_files_find_subdir(fd: int, stuck: set) -> str | None:
    """Unlink the non-directories in the directory `fd`; return one subdirectory left, if any."""
    subdir = None
    with os.scandir(fd) as entries:
        for entry in list(entries):
            try:
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.name, dir_fd=fd)
                elif (entry.inode(), os.fstat(fd).st_dev) not in stuck:
                    subdir = entry.name
            except OSError:
                pass
    return subdir


def remove_tree(root: Path) -> None:
    """Delete `root` without raising, without recursion and without long paths (it walks with
    one directory descriptor at a time), so a 10,000-deep tree is fine."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return
    names, stuck = [], set()  # stuck: (inode, device) of directories that cannot be removed
    try:
        while True:
            child = _unlink_files_find_subdir(fd, stuck)
            if child is not None:
                try:
                    os.chmod(child, stat.S_IRWXU, dir_fd=fd)  # the program may have left it unreadable
                    new = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    stuck.add((os.stat(child, dir_fd=fd, follow_symlinks=False).st_ino, os.fstat(fd).st_dev))
                    continue
                os.close(fd)
                fd = new
                names.append(child)
                continue
            if not names:
                break
            inode = os.fstat(fd).st_ino
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                stuck.add((inode, os.fstat(fd).st_dev))
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(root)
    except OSError:
        pass


def _run(source: str, stdin: str, limits: SandboxLimits, isolation: Isolation) -> RunResult:
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))  # 0700
    try:
        (root / "mnt").mkdir()
        (root / "work").mkdir()
        (root / "program.py").write_text(source, encoding="utf-8", errors="replace")
        (root / "stdin").write_text(stdin, encoding="utf-8", errors="replace")
        home = str(root / "work") if isolation == "insecure" else "/tmp"
        with open(root / "program.py", "rb") as fsource, open(root / "stdin", "rb") as fin, \
                open(root / "stdout", "wb") as fout, open(root / "stderr", "wb") as ferr:
            config = _guard_config(isolation, limits, root, fsource.fileno())
            proc = subprocess.Popen(_guard_command(config), stdin=fin, stdout=fout, stderr=ferr, cwd=root,
                                    env=_scrubbed_env(home), start_new_session=True, close_fds=True,
                                    pass_fds=(fsource.fileno(),))
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.terminate()  # the guard kills the run and reaps it
                try:
                    proc.wait(timeout=TERMINATE_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                _kill_group(proc.pid)
                proc.wait()
        return _result(root, limits, proc.returncode, timed_out, time.monotonic() - start)
    except OSError as e:  # the host could not set the run up (disk full, too many open files)
        return RunResult("error", None, "", f"sandbox: {e!r}", time.monotonic() - start)
    finally:
        remove_tree(root)


def _result(root: Path, limits: SandboxLimits, returncode: int, timed_out: bool, seconds: float) -> RunResult:
    cap = limits.file_size_mb << 20
    with open(root / "stdout", "rb") as f:
        out_bytes = f.read(cap)
    with open(root / "stderr", "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4 * STDERR_TAIL))
        err = f.read().decode("utf-8", "replace")[-STDERR_TAIL:]
    if timed_out:
        status, returncode = "timeout", None
    elif len(out_bytes) >= cap:
        status = "output_limit"
    elif returncode in _CPU_LIMIT_CODES:
        status = "timeout"
    else:
        status = "ok" if returncode == 0 else "error"
    return RunResult(status, returncode, out_bytes.decode("utf-8", "replace"), err, seconds)


@functools.cache
def probe_isolation(isolation: Isolation) -> str | None:
    """None when `isolation` works here (one real run), else why not; cached per process."""
    if isolation == "bwrap" and shutil.which("bwrap") is None:
        return "bwrap is not on PATH"
    if isolation == "namespaces" and os.geteuid() != 0:
        return "needs a root trainer (use 'userns' or 'bwrap')"
    if isolation == "userns" and os.geteuid() == 0:
        return "for a non-root trainer (as root: 'namespaces')"
    try:
        seccomp_program()
    except (ImportError, OSError) as e:
        return f"seccomp: {e} (needs libseccomp2 and the pyseccomp package)"
    result = _run(PROBE_PROGRAM, "", SandboxLimits(wall_seconds=30), isolation)
    if result.stdout == "memento-sandbox-ok True\n":
        return None
    lines = result.stderr.strip().splitlines()
    return (lines[-1] if lines else f"{result.status}, exit {result.returncode}")[:300]


def resolve_isolation(requested: str) -> Isolation:
    """The level `requested` stands for on this host; raises SandboxUnavailable when it does not work."""
    if requested == "insecure":
        return "insecure"
    levels = AUTO_ORDER if requested == "auto" else (requested,)
    reasons = {}
    for level in levels:
        reasons[level] = probe_isolation(level)  # type: ignore[arg-type]
        if reasons[level] is None:
            return level  # type: ignore[return-value]
    tried = "; ".join(f"{level}: {reason}" for level, reason in reasons.items())
    raise SandboxUnavailable(
        f"no sandbox for code rewards works on this host ({tried}). Fix: install bubblewrap "
        f"(apt-get install bubblewrap), or run the trainer as root, or allow unprivileged user namespaces "
        f"(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; Ubuntu: "
        f"kernel.apparmor_restrict_unprivileged_userns=0); seccomp needs libseccomp2 and pyseccomp. "
        f"reward.sandbox_isolation=insecure runs code without isolation: never with a policy you do not trust.")


def run_python(source: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> RunResult:
    """Run `source` as `__main__` with `stdin`. Never raises for anything the program does; raises
    SandboxUnavailable when `limits.isolation` does not work on this host."""
    return _run(source, stdin, limits, resolve_isolation(limits.isolation))
