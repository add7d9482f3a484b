"""Child side of the sandbox: isolate, then run one untrusted Python program.

`rewards.sandbox.run_python` starts this as `python -I -S -B -c <this file's text> <json>` (the text
travels on the command line, so no host path has to be visible inside the sandbox) in its own
session, with a scrubbed environment, stdin / stdout / stderr on files and the program's source on
an inherited descriptor. Standard library only. Every layer is required: when one cannot be
applied the guard prints why and exits with SETUP_FAILED before the program runs (fail closed).
Processes, outside in:

  outer     host side: a child subreaper (it reaps whatever the levels below orphan), PDEATHSIG,
            OOM score 1000 and nice 19 (inherited, so the kernel kills and deprioritises runs,
            never the trainer). On SIGTERM it kills its child; it exits once it has no children.
  builtin   ("namespaces" as root, "userns" otherwise) unshare mount, PID, network, IPC and UTS
            namespaces, plus a user namespace when not root; then PID 1 of the new PID namespace
            builds the root below, forks the program and reaps until it exits. PID 1's exit takes
            every process left in the namespace with it.
  bwrap     exec bubblewrap, which builds the same namespaces and root and runs this file again
            as stage "inner", doing only the program step.
  program   per-run uid (as root), no capabilities, empty bounding set, no_new_privs, rlimits,
            then the seccomp filter of rewards/sandbox_seccomp.py, then `exec` of the source.

The root is an allowlist, not the host's: a read-only tmpfs holding read-only, nosuid, nodev binds
of the paths `rewards.sandbox.visible_paths` lists (system libraries and the interpreter's
prefixes), a minimal /dev, a fresh procfs, and /tmp (the work dir) on a tmpfs of `disk_mb`.
Data, checkpoints, /root, /home, the trainer's /tmp and other runs do not exist inside.

Level "insecure" has none of this: rlimits plus a Python audit hook that ctypes bypasses.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import traceback

SETUP_FAILED = 120
WORK_DIR = "/tmp"
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x04000000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom")
AF_UNIX = 1
_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        raise SetupError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _prctl(option: int, arg: int, what: str) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# --- the root filesystem (builtin levels, in PID 1 of the new namespaces) -------------------------

def _locked_flags(path: str) -> int:
    """Flags of the mount holding `path` that a user namespace may not clear on remount."""
    st = os.statvfs(path).f_flag
    pairs = ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
             (os.ST_RELATIME, MS_RELATIME))
    return sum(ms for st_flag, ms in pairs if st & st_flag)


def _bind_read_only(path: str, new_root: str) -> None:
    target = new_root + path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        open(target, "w").close()
    _mount(path, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _locked_flags(path))


def _make_dev(new_root: str) -> None:
    dev = new_root + "/dev"
    os.mkdir(dev)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    for name in DEVICES:
        open(f"{dev}/{name}", "w").close()
        _mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
        _mount(None, f"{dev}/{name}", None,
               MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC | _locked_flags(f"/dev/{name}"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    _mount(None, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def _build_root(config: dict) -> None:
    new_root, run_uid = config["mountpoint"], config["run_uid"]
    owner = "" if run_uid is None else f",uid={run_uid},gid={run_uid}"  # else the namespace's own user
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    # The work dir first: an interpreter that lives under /tmp (a checkout there) is bound on top
    # of it, read-only, instead of being hidden by it.
    os.mkdir(new_root + WORK_DIR)
    _mount("tmpfs", new_root + WORK_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={config['limits']['disk_mb']}m,nr_inodes=4096,mode=0700{owner}")
    for path in config["visible"]:
        _bind_read_only(path, new_root)
    _make_dev(new_root)
    os.mkdir(new_root + "/proc")
    _mount("proc", new_root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(new_root)
    syscall = SYS_PIVOT_ROOT.get(os.uname().machine)
    if syscall is None:
        raise SetupError(f"pivot_root: unknown architecture {os.uname().machine}")
    _check(_libc.syscall(syscall, b".", b"."), "pivot_root")  # the old root ends up stacked on "."
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _enter_namespaces(config: dict) -> None:
    """Called in a child of the outer guard; the next fork is PID 1 of the new PID namespace."""
    if config["isolation"] == "userns":
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(NAMESPACES | CLONE_NEWUSER), "unshare (user namespace)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    else:
        _check(_libc.unshare(NAMESPACES), "unshare")


def _init_process(config: dict) -> None:
    """PID 1: build the root, fork the program, reap every process until the program exits."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PDEATHSIG")
    _build_root(config)
    program = os.fork()
    if program == 0:
        _run_program(config)
    while True:
        pid, status = os.wait()
        if pid == program:
            os._exit(_exit_code(status))


# --- the program's own process ----------------------------------------------------------------------

def _drop_privileges(run_uid) -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM where bubblewrap already emptied the set
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if run_uid is not None:
        os.setgroups([])
        os.setresgid(run_uid, run_uid, run_uid)
        os.setresuid(run_uid, run_uid, run_uid)  # clears the permitted and effective capabilities
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")
    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    held = [k for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status[k], 16)]
    if held or status["NoNewPrivs"].strip() != "1" or os.getuid() == 0:
        raise SetupError(f"privileges remain: {held or 'uid 0 or no no_new_privs'}")


def _set_limits(limits: dict) -> None:
    cpu, memory, fsize = limits["cpu_seconds"], limits["memory_mb"] << 20, limits["file_size_mb"] << 20
    for kind, soft, hard in [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"]),  # threads count too
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_MEMLOCK, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]:
        old_hard = resource.getrlimit(kind)[1]
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(kind, (soft, hard))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _load_seccomp(program_hex: str) -> None:
    """Load `rewards.sandbox_seccomp.seccomp_program()` (compiled by the host; no_new_privs is set)."""
    program = ctypes.create_string_buffer(bytes.fromhex(program_hex))
    fprog = _SockFprog(len(program.raw) // 8, ctypes.addressof(program))  # 8 bytes per instruction
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def _read_source(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _run_program(config: dict) -> None:
    sys.path.extend(config["site_packages"])  # -S left them out (numpy, for programs that use it)
    try:
        source = _read_source(config["source_fd"])
        os.chdir(WORK_DIR)
        if config["stage"] == "inner" and config["run_uid"] is not None:
            os.chmod(WORK_DIR, 0o700)
            os.chown(WORK_DIR, config["run_uid"], config["run_uid"])  # bubblewrap's tmpfs is root's
        _drop_privileges(config["run_uid"])
        _set_limits(config["limits"])
        _load_seccomp(config["seccomp"])
    except (SetupError, OSError, ValueError) as e:
        _setup_failed(e)
    _exec_source(source)


def _exec_source(source: str) -> None:
    """Run the program; its exit (SystemExit, a traceback) ends this process like `python file.py`,
    joining its threads first, and never returns into the guard's own code."""
    sys.argv = ["solution.py"]
    try:
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - the program's own error, reported the way python reports it
        traceback.print_exc()
        raise SystemExit(1) from None
    raise SystemExit(0)


# --- level "insecure": an audit hook, not a sandbox -------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "os.setsid", "os.setpgid"}


def _install_audit_hook(workdir: str) -> None:
    workdir = os.path.realpath(workdir) + os.sep
    allowed_files = {"/dev/null", "/dev/stdout", "/dev/stderr"}
    own_pid = os.getpid()

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                flags is not None and flags & _WRITE_FLAGS)
            if writing and isinstance(path, (str, bytes)):
                real = os.path.realpath(os.fsdecode(path))
                if not real.startswith(workdir) and real not in allowed_files:
                    raise PermissionError(f"sandbox: writing outside the work directory: {real}")
        elif event == "socket.__new__" and args[1] != AF_UNIX:
            raise PermissionError("sandbox: network access is disabled")
        elif event in _PROCESS_EVENTS:
            raise PermissionError(f"sandbox: {event} is disabled")
        elif event in ("os.kill", "os.killpg") and args[0] not in (own_pid, 0):
            raise PermissionError("sandbox: signalling other processes is disabled")

    sys.addaudithook(hook)


def _run_insecure(config: dict) -> None:
    sys.path.extend(config["site_packages"])
    source = _read_source(config["source_fd"])
    os.chdir(config["workdir"])
    _set_limits(config["limits"])
    _install_audit_hook(config["workdir"])
    _exec_source(source)


# --- the outer guard -------------------------------------------------------------------------------

def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _setup_failed(error: Exception) -> None:
    os.write(2, f"memento-sandbox: setup failed: {error}\n".encode())
    os._exit(SETUP_FAILED)


def _outer(config: dict) -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PDEATHSIG")
    _write("/proc/self/oom_score_adj", "1000")
    os.nice(19)
    if config["isolation"] == "insecure":
        _run_insecure(config)
    _prctl(PR_SET_CHILD_SUBREAPER, 1, "subreaper")
    child = os.fork()
    if child == 0:
        try:
            if config["isolation"] == "bwrap":
                os.execv(config["bwrap_argv"][0], config["bwrap_argv"])
            _enter_namespaces(config)
            if os.fork() == 0:
                _init_process(config)
            _, status = os.wait()
            os._exit(_exit_code(status))
        except (SetupError, OSError) as e:
            _setup_failed(e)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    code = SETUP_FAILED
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(code)
        if pid == child:
            code = _exit_code(status)


def main() -> None:
    config = json.loads(sys.argv[1])
    try:
        if config["stage"] == "inner":
            _run_program(config)
        _outer(config)
    except (SetupError, OSError) as e:
        _setup_failed(e)


if __name__ == "__main__":
    main()
