"""Hostile programs, one property per test, on every isolation level this machine offers (the
`trainer` fixture in conftest.py: root and a non-root user, built-in namespaces and bubblewrap).
Every test also checks (autouse fixture) that nothing is left behind: no sandbox temp dir, no
process of a sandbox, no zombie, and the trainer alive with its files unchanged."""

import os
import socket
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from rewards.sandbox import (GUARD_SOURCE, RUN_UID_BASE, RUN_UID_SPAN, TEMP_PREFIX, SandboxLimits,
                             SandboxUnavailable, remove_tree, resolve_isolation, run_python,
                             visible_paths)
from tests.rewards.conftest import FAST, SECRET

SLACK = 5  # seconds of slack on a loaded 2-core machine
SHORT = 1.5  # wall clock of the tests that run into it
# What a fresh work dir (/tmp inside) lists: nothing, except where the interpreter itself lives
# under /tmp (a checkout there): its path is bound read-only on top of the work dir.
INTERPRETER_IN_WORK_DIR = sorted({Path(p).parts[2] for p in visible_paths() if p.startswith("/tmp/")})
EMPTY_WORK_DIR = str(INTERPRETER_IN_WORK_DIR)


def _sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(TEMP_PREFIX)}


def _sandbox_processes() -> list[psutil.Process]:
    marker = GUARD_SOURCE[:60]
    found = []
    for proc in psutil.process_iter(["uids", "cmdline"]):
        uid = proc.info["uids"].real if proc.info["uids"] else -1
        if RUN_UID_BASE <= uid < RUN_UID_BASE + RUN_UID_SPAN or marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    dirs_before = _sandbox_dirs()
    trainer = request.getfixturevalue("trainer") if "trainer" in request.fixturenames else None
    yield
    deadline = time.monotonic() + 3
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes() == []
    assert _sandbox_dirs() - dirs_before == set()
    if trainer is not None:
        trainer.assert_unharmed()
        assert trainer.zombies() == 0


# --- good programs keep working --------------------------------------------------------------------

def test_program_reads_stdin_and_writes_stdout(trainer):
    result = trainer.run("import sys; print(sys.stdin.read().upper(), end='')", stdin="abc\n")
    assert (result.status, result.returncode, result.stdout) == ("ok", 0, "ABC\n")


def test_program_can_use_its_work_directory_and_threads(trainer):
    program = ("import threading\nopen('f.txt', 'w').write('kept')\nt = threading.Thread(target=lambda: None)\n"
               "t.start(); t.join()\nprint(open('f.txt').read())")
    assert trainer.run(program).stdout == "kept\n"


def test_each_run_starts_in_an_empty_work_directory(trainer):
    first, second = trainer.run_together([("open('x', 'w'); import time; time.sleep(0.5)", ""),
                                          ("import os, time; time.sleep(0.5); print(os.listdir('.'))", "")])
    assert first.status == "ok" and second.stdout == EMPTY_WORK_DIR + "\n"


def test_syntax_error_is_an_error_not_an_exception(trainer):
    result = trainer.run("def f(:\n")
    assert result.status == "error" and "SyntaxError" in result.stderr


# --- limits -----------------------------------------------------------------------------------------

def test_timeout_kills_infinite_loop(trainer):
    start = time.monotonic()
    assert trainer.run("while True: pass", wall_seconds=SHORT).status == "timeout"
    assert time.monotonic() - start < SHORT + SLACK


def test_timeout_kills_sleeping_program(trainer):
    start = time.monotonic()
    result = trainer.run("import time; time.sleep(60)", wall_seconds=SHORT)
    assert result.status == "timeout" and result.returncode is None
    assert time.monotonic() - start < SHORT + SLACK


def test_memory_bomb_fails(trainer):
    result = trainer.run("x = bytearray(4 << 30); print('allocated')")
    assert result.status == "error" and "allocated" not in result.stdout and "MemoryError" in result.stderr


def test_memory_limit_holds_for_the_whole_run(trainer):
    # three workers of 0.7 x the limit each: together past it (they were 3 x 700 MiB under 1 GiB)
    program = """
import threading
chunks = []
def grab():
    try:
        chunks.append(bytes(int(0.7 * 512) << 20))  # calloc: no pages touched
    except MemoryError:
        pass
workers = [threading.Thread(target=grab) for _ in range(3)]
[w.start() for w in workers]; [w.join() for w in workers]
print(sum(map(len, chunks)) >> 20)
"""
    result = trainer.run(program)
    assert result.status == "ok" and int(result.stdout) < FAST["memory_mb"]


def test_processes_cannot_be_started(trainer):
    program = """
import os, subprocess
for start in (os.fork, lambda: subprocess.run(["/usr/bin/true"])):
    try:
        pid = start()
        if pid == 0:
            os._exit(0)
        print("started")
    except OSError as e:
        print(type(e).__name__)
"""
    assert "started" not in trainer.run(program).stdout


def test_fork_bomb_is_contained(trainer):
    start = time.monotonic()
    result = trainer.run("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", wall_seconds=SHORT)
    assert result.status in ("timeout", "error")
    assert time.monotonic() - start < SHORT + SLACK


def test_one_runs_threads_do_not_starve_another_run(trainer):
    hog = """
import threading, time
stop = threading.Event()
n = 0
while True:
    try:
        threading.Thread(target=stop.wait).start(); n += 1
    except RuntimeError:
        break
print(n); time.sleep(1.0); stop.set()
"""
    correct = ("import threading, time\ntime.sleep(0.3)\nout = []\n"
               "ts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
               "[t.start() for t in ts]; [t.join() for t in ts]\nprint(sum(out))")
    hogged, other = trainer.run_together([(hog, ""), (correct, "")])
    assert int(hogged.stdout.split()[0]) < FAST["max_processes"]
    assert (other.status, other.stdout) == ("ok", "6\n")


def test_total_disk_use_is_capped(trainer):
    program = """
n = 0
try:
    for n in range(1, 13):
        with open(f"f{n}", "wb") as f:
            f.write(b"x" * ((1 << 20) - 4096))
except OSError as e:
    n -= 1
print(n)
"""
    written = int(trainer.run(program).stdout)  # 12 files of 1 MiB were accepted before
    assert 0 < written < 12 and written * ((1 << 20) - 4096) <= FAST["disk_mb"] << 20


def test_stdout_flood_is_cut_at_the_file_size_limit(trainer):
    start = time.monotonic()
    result = trainer.run("import sys\nwhile True: sys.stdout.write('x' * 65536)")
    assert result.status == "output_limit" and len(result.stdout) <= FAST["file_size_mb"] << 20
    assert time.monotonic() - start < FAST["wall_seconds"] + SLACK


def test_deep_directory_tree_leaves_nothing_behind(trainer):
    program = "import os\nfor _ in range(1100):\n    os.mkdir('d'); os.chdir('d')\nprint('deep')"
    assert trainer.run(program).stdout == "deep\n"  # the autouse fixture asserts the cleanup


def test_remove_tree_handles_trees_deeper_than_the_recursion_limit(tmp_path):
    path = tmp_path / "root"
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY)
    for _ in range(1500):  # shutil.rmtree recursed, and raised RecursionError past ~1000
        os.mkdir("d", dir_fd=fd)
        new = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(fd)
    remove_tree(path)
    assert not path.exists()


# --- what the program can see -----------------------------------------------------------------------

def test_trainer_files_are_invisible(trainer):
    program = f"""
import os
for path in ({str(trainer.home / 'checkpoint.pt')!r}, {str(trainer.home)!r}, "/etc/shadow", "/root", "/home", "/work"):
    try:
        print(open(path).read() if os.path.isfile(path) else os.listdir(path))
    except OSError as e:
        print(type(e).__name__)
"""
    result = trainer.run(program)
    assert result.status == "ok" and SECRET not in result.stdout and "checkpoint" not in result.stdout
    assert "root:" not in result.stdout  # /etc/shadow


def test_trainer_files_cannot_be_deleted(trainer):
    program = f"""
import ctypes, shutil
libc = ctypes.CDLL(None)
print(libc.unlink({str(trainer.home / 'checkpoint.pt').encode()!r}), libc.rmdir({str(trainer.home / 'code').encode()!r}))
shutil.rmtree({str(trainer.home / 'code')!r}, ignore_errors=True)
"""
    assert trainer.run(program).stdout == "-1 -1\n"  # the autouse fixture asserts the files are unchanged


def test_other_runs_are_invisible_and_untouchable(trainer):
    victim = "import time, os; time.sleep(1.0); print(input(), os.listdir('.'))"
    attacker = f"""
import glob, time
time.sleep(0.3)
own = {["/tmp/" + name for name in INTERPRETER_IN_WORK_DIR]!r}  # the run's own work dir, not another's
for path in glob.glob("/tmp/*") + glob.glob("{tempfile.gettempdir()}/{TEMP_PREFIX}*/*"):
    if path in own:
        continue
    try:
        print(path, open(path).read()[:100])
    except OSError:
        pass
    try:
        open(path + "/planted", "w").write("x")
        print("planted", path)
    except OSError:
        pass
"""
    victim_result, attacker_result = trainer.run_together([(victim, f"hidden {SECRET}\n"), (attacker, "")])
    assert victim_result.stdout == f"hidden {SECRET} {EMPTY_WORK_DIR}\n"
    assert SECRET not in attacker_result.stdout and "planted" not in attacker_result.stdout


def test_parent_environment_is_unreadable(trainer):
    program = """
import os
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            print(open(f"/proc/{pid}/environ").read())
        except OSError:
            pass
print(dict(os.environ))
"""
    result = trainer.run(program)
    assert result.status == "ok" and SECRET not in result.stdout and "SECRET" not in result.stdout


def test_host_processes_are_invisible(trainer):
    result = trainer.run("import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    pids = eval(result.stdout)
    assert trainer.pid not in pids and len(pids) <= 4  # the namespace's init, the program, a reaper


def test_writing_outside_the_work_directory_fails(trainer, tmp_path):
    os.chmod(tmp_path, 0o777)  # writable for anyone: only the sandbox can stop it
    (tmp_path / "victim").write_text("root's")
    program = f"""
import ctypes, os
libc = ctypes.CDLL(None)
for path in ({str(tmp_path / 'escaped')!r}, "/usr/escaped", "/escaped", "/dev/escaped"):
    print(libc.open(path.encode(), os.O_WRONLY | os.O_CREAT, 0o666))
print(libc.unlink({str(tmp_path / 'victim').encode()!r}))
"""
    assert trainer.run(program).stdout.split() == ["-1"] * 5
    assert [p.name for p in tmp_path.iterdir()] == ["victim"]


def test_file_handles_cannot_reach_the_host_filesystem(trainer):
    # the "shocker" escape: open the host root by inode through a bind mount on the same filesystem
    program = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
class Handle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 8)]
handle = Handle(8, 1)
handle.f[0] = 2  # inode 2, generation 0: the root of an ext4 filesystem
mount_fd = os.open("/usr", os.O_RDONLY)
print(libc.open_by_handle_at(mount_fd, ctypes.byref(handle), os.O_RDONLY))
"""
    assert trainer.run(program).stdout.strip() == "-1"


def test_sysv_shared_memory_does_not_outlive_the_run(trainer):
    def segments():
        return Path("/proc/sysvipc/shm").read_text().splitlines()[1:]

    before = segments()
    program = "import ctypes; print(ctypes.CDLL(None).shmget(0, 1 << 20, 0o1000 | 0o666))"  # IPC_PRIVATE, IPC_CREAT
    trainer.run(program)
    assert segments() == before


def test_all_mounts_are_nosuid(trainer):
    program = """
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if "nosuid" not in fields[5].split(","):
        print(fields[4])
"""
    result = trainer.run(program)
    assert result.status == "ok" and result.stdout == ""


def test_privileges_are_gone(trainer):
    program = """
import os
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
print(os.getuid() != 0, os.geteuid() != 0, status["NoNewPrivs"].strip(), status["Seccomp"].strip(),
      [k for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status[k], 16)])
try:
    os.setuid(0)
    print("setuid worked")
except OSError:
    pass
"""
    assert trainer.run(program).stdout == "True True 1 2 []\n"


def test_kernel_interfaces_a_program_never_needs_are_refused(trainer):
    program = """
import ctypes, errno, os, platform
libc = ctypes.CDLL(None, use_errno=True)
x86 = platform.machine() == "x86_64"
calls = {
    "unshare(user)": lambda: libc.unshare(0x10000000),
    "unshare(mount)": lambda: libc.unshare(0x00020000),
    "mount": lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace": lambda: libc.ptrace(0, 0, 0, 0),
    "keyctl": lambda: libc.syscall(250 if x86 else 219, 0, 0, 0, 0),
    "io_uring_setup": lambda: libc.syscall(425, 1, ctypes.create_string_buffer(120)),
    "bpf": lambda: libc.syscall(321 if x86 else 280, 0, 0, 0),
    "userfaultfd": lambda: libc.syscall(323 if x86 else 282, 0),
    "perf_event_open": lambda: libc.syscall(298 if x86 else 241, 0, 0, -1, -1, 0),
}
for name, call in calls.items():
    if call() != -1:
        print("allowed", name)
"""
    result = trainer.run(program)
    assert result.status == "ok" and result.stdout == ""


# --- what the program can reach ---------------------------------------------------------------------

def test_environment_is_scrubbed(trainer, monkeypatch):
    monkeypatch.setenv("MEMENTO_SECRET_TOKEN", "hunter2")
    result = trainer.run("import os; print(dict(os.environ))")
    assert result.status == "ok" and "hunter2" not in result.stdout and "MEMENTO_SECRET_TOKEN" not in result.stdout


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def test_sockets_cannot_reach_the_host(trainer, listener):
    port = listener.getsockname()[1]
    program = f"""
import ctypes, socket, struct
libc = ctypes.CDLL(None)
fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
addr = struct.pack("=HH4s8x", socket.AF_INET, socket.htons({port}), socket.inet_aton("127.0.0.1"))
print(libc.connect(fd, addr, len(addr)))
"""
    assert trainer.run(program).stdout.strip() == "-1"
    with pytest.raises(TimeoutError):
        listener.accept()


def test_killing_the_parent_and_every_process_fails(trainer):
    program = ("import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try: os.kill(pid, signal.SIGKILL)\n"
               "    except OSError: pass\nprint('alive')")
    trainer.run(program)  # the autouse fixture asserts the trainer lives


def test_detached_child_does_not_survive_the_run(trainer):
    program = "import os, time\nif os.fork() == 0:\n    os.setsid(); time.sleep(60)\nprint('parent done')"
    trainer.run(program)  # the autouse fixture asserts no process is left


# --- choosing the level -----------------------------------------------------------------------------

def test_limits_are_validated():
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)
    with pytest.raises(ValueError, match="isolation"):
        SandboxLimits(isolation="audit")


def test_auto_picks_the_strongest_level_that_works():
    expected = "bwrap" if __import__("shutil").which("bwrap") else "namespaces" if os.geteuid() == 0 else "userns"
    assert resolve_isolation("auto") == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="as root the user-namespace level is refused")
def test_a_level_that_cannot_work_refuses_with_a_fix():
    with pytest.raises(SandboxUnavailable, match="Fix: install bubblewrap"):
        run_python("print(1)", limits=SandboxLimits(**FAST, isolation="userns"))


def test_insecure_level_is_only_what_it_says(tmp_path):
    # no isolation: the program runs as the trainer; asked for by name only (docs/sandbox.md)
    result = run_python("import os; print(os.getuid())", limits=SandboxLimits(**FAST, isolation="insecure"))
    assert result.stdout == f"{os.getuid()}\n"
