"""The trainers a sandbox test runs under, one per isolation level this machine offers.

`trainer` is parametrized over: this (root) process with "namespaces" and with "bwrap", and a
non-root user with "userns" and with "bwrap". The non-root trainer is
tests/rewards/sandbox_user_helper.py, run as a user this fixture creates, as PID 1 of a throwaway
PID and mount namespace (where /root is replaced by an empty tmpfs holding only the interpreter, so
the user can start Python). Each trainer owns a private directory with a checkpoint and a secret,
which hostile programs try to reach; `assert_unharmed` checks them and that the trainer lives.
"""

import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from rewards.sandbox import RunResult, SandboxLimits, run_python

REPO = Path(__file__).resolve().parents[2]
TEST_USER = "memento-sbx-test"
SECRET = "memento-secret-7f3a9c"  # in the trainer's files and environment; must never reach a program
FAST = dict(wall_seconds=5.0, cpu_seconds=1, memory_mb=512, file_size_mb=1, disk_mb=4, max_processes=16)
LEVELS = [("root", "namespaces"), ("root", "bwrap"), ("user", "userns"), ("user", "bwrap")]


def _make_private_dir(uid: int, gid: int) -> Path:
    home = Path(tempfile.mkdtemp(prefix="memento-trainer-"))
    (home / "checkpoint.pt").write_text(f"weights {SECRET}")
    (home / "code").mkdir()
    (home / "code" / "train.py").write_text("print('training')")
    for path in (home, home / "code", home / "checkpoint.pt", home / "code" / "train.py"):
        os.chown(path, uid, gid)
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    return home


def _digest(home: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(home.rglob("*")):
        h.update(str(path).encode() + (path.read_bytes() if path.is_file() else b"/"))
    return h.hexdigest()


@dataclass
class Trainer:
    """Where run_python is called from; `run` takes SandboxLimits fields on top of FAST."""

    user: str  # "root" or "user"
    isolation: str
    home: Path  # the trainer's private files
    pid: int
    _helper: "UserHelper | None" = None
    _digest: str = field(default="")

    def limits(self, **overrides) -> dict:
        return dict(FAST, isolation=self.isolation, **overrides)

    def run(self, source: str, stdin: str = "", **limits) -> RunResult:
        return self.run_together([(source, stdin)], **limits)[0]

    def run_together(self, programs: list[tuple[str, str]], **limits) -> list[RunResult]:
        """Run several programs at the same time (one thread each)."""
        if self._helper is not None:
            return self._helper.run(programs, self.limits(**limits))
        results: list = [None] * len(programs)

        def one(i):
            results[i] = run_python(programs[i][0], programs[i][1], SandboxLimits(**self.limits(**limits)))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(programs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def zombies(self) -> int:
        if self._helper is not None:
            return self._helper.request({"op": "zombies"})["zombies"]
        return sum(c.status() == psutil.STATUS_ZOMBIE for c in psutil.Process().children(recursive=True))

    def assert_unharmed(self) -> None:
        assert psutil.pid_exists(self.pid) and psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        assert _digest(self.home) == self._digest, "the trainer's files changed"


class UserHelper:
    def __init__(self, uid: int, gid: int, home: Path):
        prefix = os.path.realpath(sys.base_prefix)
        # /root is 0700: give the user a /root holding only the interpreter, in this namespace only
        reveal = ""
        if prefix.startswith("/root/.pyenv/"):
            reveal = ('stage=$(mktemp -d); mount --rbind /root/.pyenv "$stage"; mount -t tmpfs -o mode=0755 tmpfs /root; '
                      'mkdir /root/.pyenv; mount --move "$stage" /root/.pyenv; ')
        env = f"env -i PATH={os.environ.get('PATH', '/usr/bin:/bin')} HOME={home} PYTHONPATH={REPO} SECRET={SECRET}"
        helper = Path(__file__).with_name("sandbox_user_helper.py")
        script = (f"set -e; {reveal}cd {home}; exec setpriv --reuid={uid} --regid={gid} --clear-groups "
                  f"--inh-caps=-all --bounding-set=-all {env} {sys.executable} {helper}")
        self.proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
                                      "--propagation", "private", "sh", "-c", script],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()

    def request(self, message: dict):
        with self.lock:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the user trainer died (exit {self.proc.poll()})")
        return json.loads(line)

    def run(self, programs, limits) -> list[RunResult]:
        replies = self.request({"runs": [{"source": s, "stdin": i, "limits": limits} for s, i in programs]})
        for reply in replies:
            if "unavailable" in reply:
                pytest.skip(reply["unavailable"])
        return [RunResult(**reply) for reply in replies]

    def trainer_pid(self) -> int:
        self.request({"op": "zombies"})  # answers once the helper runs: unshare -> (fork) the helper, PID 1
        return psutil.Process(self.proc.pid).children()[0].pid

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def _reachable_by_anyone(path: str) -> bool:
    """Every directory above `path` is world-searchable (this fixture reveals /root/.pyenv itself)."""
    path = Path(os.path.realpath(path))
    revealed = {Path("/root")} if str(path).startswith("/root/.pyenv/") else set()
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [path, *path.parents] if d not in revealed)


@pytest.fixture(scope="session")
def user_helper():
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("the unprivileged path needs a root test run (it creates a user) and setpriv")
    unreachable = [p for p in (str(REPO), sys.prefix, sys.base_prefix) if not _reachable_by_anyone(p)]
    if unreachable:
        pytest.skip(f"a non-root user cannot reach {unreachable} (a directory above is not world-searchable)")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True)
        entry = pwd.getpwnam(TEST_USER)
    home = _make_private_dir(entry.pw_uid, entry.pw_gid)
    helper = UserHelper(entry.pw_uid, entry.pw_gid, home)
    yield helper, home, entry.pw_uid
    helper.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def root_home():
    home = _make_private_dir(0, 0)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=LEVELS, ids=[f"{user}-{isolation}" for user, isolation in LEVELS])
def trainer(request) -> Trainer:
    user, isolation = request.param
    if isolation == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    if user == "root":
        if os.geteuid() != 0:
            pytest.skip("the root path needs a root test run")
        home = request.getfixturevalue("root_home")
        trainer = Trainer(user, isolation, home, os.getpid())
    else:
        helper, home, _ = request.getfixturevalue("user_helper")
        trainer = Trainer(user, isolation, home, helper.trainer_pid(), helper)
    trainer._digest = _digest(home)
    return trainer
