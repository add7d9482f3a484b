"""Hostile programs, one property per test. Every test also checks (autouse fixture) that nothing is
left behind: no sandbox temp dir, no process running as the sandbox user, and that a plain program
still runs afterwards. Each hostile test runs with the full isolation ("auto": namespaces where the
OS allows them) and with the audit-hook fallback alone ("audit")."""

import os
import socket
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from rewards.sandbox import NOBODY, TEMP_PREFIX, SandboxLimits, run_python

FAST = dict(wall_seconds=2.0, cpu_seconds=1, memory_mb=512, file_size_mb=1, max_processes=16)


def _sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(TEMP_PREFIX)}


def _sandbox_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if (proc.info["uids"] and proc.info["uids"].real == NOBODY) or "sandbox_guard.py" in cmdline:
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind():
    dirs_before = _sandbox_dirs()
    yield
    deadline = time.monotonic() + 3
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes() == []
    assert _sandbox_dirs() - dirs_before == set()
    assert run_python("print(6 * 7)", limits=SandboxLimits(**FAST)).stdout == "42\n"


@pytest.fixture(params=["auto", "audit"])
def limits(request) -> SandboxLimits:
    return SandboxLimits(**FAST, isolation=request.param)


def _in_own_network_namespace() -> bool:
    probe = run_python("import os; print(os.readlink('/proc/self/ns/net'))")
    return probe.stdout.strip() != os.readlink("/proc/self/ns/net")


def test_program_reads_stdin_and_writes_stdout(limits):
    result = run_python("import sys; print(sys.stdin.read().upper(), end='')", stdin="abc\n", limits=limits)
    assert (result.status, result.returncode, result.stdout) == ("ok", 0, "ABC\n")


def test_program_can_use_its_work_directory(limits):
    result = run_python("open('f.txt', 'w').write('kept'); print(open('f.txt').read())", limits=limits)
    assert result.stdout == "kept\n"


def test_timeout_kills_infinite_loop(limits):
    start = time.monotonic()
    result = run_python("while True: pass", limits=limits)
    assert result.status == "timeout"
    assert time.monotonic() - start < limits.wall_seconds + 5  # slack for a loaded 2-core machine


def test_timeout_kills_sleeping_program(limits):
    start = time.monotonic()
    result = run_python("import time; time.sleep(60)", limits=limits)
    assert result.status == "timeout" and result.returncode is None
    assert time.monotonic() - start < limits.wall_seconds + 5  # slack for a loaded 2-core machine


def test_fork_bomb_is_contained(limits):
    start = time.monotonic()
    result = run_python("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", limits=limits)
    assert result.status in ("timeout", "error")
    assert time.monotonic() - start < limits.wall_seconds + 5  # slack for a loaded 2-core machine


def test_detached_child_does_not_survive_the_run(limits):
    # the child leaves the process group with setsid(); namespaces kill it, the fallback forbids it
    program = "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(60)\nprint('parent done')"
    run_python(program, limits=limits)  # the autouse fixture asserts no process is left


def test_memory_bomb_fails(limits):
    result = run_python("x = bytearray(4 << 30); print('allocated')", limits=limits)
    assert result.status == "error" and "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


def test_writing_outside_the_work_directory_fails(limits, tmp_path):
    target = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)  # writable for the sandbox user: only the sandbox can stop it
    result = run_python(f"open({str(target)!r}, 'w').write('x')", limits=limits)
    assert result.status == "error"
    assert not target.exists()


def test_kernel_refuses_writes_outside_even_without_python_hooks(tmp_path):
    target = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)
    program = (f"import ctypes, os; fd = ctypes.CDLL(None).open({str(target).encode()!r}, "
               f"os.O_WRONLY | os.O_CREAT, 0o666); print(fd)")
    result = run_python(program, limits=SandboxLimits(**FAST))
    if not _in_own_network_namespace():
        pytest.skip("namespaces are not available here; the audit-hook fallback is tested above")
    assert result.stdout.strip() == "-1"
    assert not target.exists()


def test_environment_is_scrubbed(limits, monkeypatch):
    monkeypatch.setenv("MEMENTO_SECRET_TOKEN", "hunter2")
    result = run_python("import os; print(dict(os.environ))", limits=limits)
    assert result.status == "ok"
    assert "hunter2" not in result.stdout and "MEMENTO_SECRET_TOKEN" not in result.stdout


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def _connected(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except TimeoutError:
        return False


def test_socket_cannot_reach_the_host(limits, listener):
    port = listener.getsockname()[1]
    result = run_python(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1); print('in')",
                        limits=limits)
    assert result.status == "error" and "in" not in result.stdout
    assert not _connected(listener)


def test_network_namespace_blocks_sockets_opened_through_ctypes(listener):
    if not _in_own_network_namespace():
        pytest.skip("network namespaces are not available here")
    port = listener.getsockname()[1]
    program = f"""
import ctypes, socket, struct
libc = ctypes.CDLL(None)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
addr = struct.pack("=HH4s8x", socket.AF_INET, socket.htons({port}), socket.inet_aton("127.0.0.1"))
print(libc.connect(fd, addr, len(addr)))
"""
    result = run_python(program, limits=SandboxLimits(**FAST))
    assert result.stdout.strip() == "-1"
    assert not _connected(listener)


def test_killing_the_parent_fails(limits):
    result = run_python("import os, signal; os.kill(os.getppid(), signal.SIGKILL); print('killed')", limits=limits)
    assert "killed" not in result.stdout
    assert psutil.Process().is_running()


def test_killing_every_process_fails(limits):
    run_python("import os, signal; os.kill(-1, signal.SIGKILL)", limits=limits)
    assert psutil.Process().is_running() and psutil.Process().parent().is_running()


def test_stdout_flood_is_cut_at_the_file_size_limit(limits):
    start = time.monotonic()
    result = run_python("import sys\nwhile True: sys.stdout.write('x' * 65536)", limits=limits)
    assert result.status == "output_limit"
    assert len(result.stdout) <= limits.file_size_mb << 20
    assert time.monotonic() - start < limits.wall_seconds + 5  # slack for a loaded 2-core machine


def test_syntax_error_is_an_error_not_an_exception(limits):
    result = run_python("def f(:\n", limits=limits)
    assert result.status == "error" and "SyntaxError" in result.stderr


def test_limits_are_validated():
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)
    with pytest.raises(ValueError, match="isolation"):
        SandboxLimits(isolation="none")  # type: ignore[arg-type]


def test_sandbox_files_live_in_a_fresh_directory(limits):
    first = run_python("import os; print(os.getcwd()); open('x', 'w')", limits=limits).stdout
    second = run_python("import os; print(os.getcwd(), os.listdir('.'))", limits=limits).stdout
    assert first.strip() != second.split()[0]
    assert second.strip().endswith("[]")
    assert not Path(first.strip()).exists()
