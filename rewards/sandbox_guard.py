"""Child side of the sandbox: isolate this process, then run one untrusted Python program.

Started by `rewards.sandbox.run_python` as `python -I -B sandbox_guard.py <json>`, already in its
own session and process group, with cwd = the work directory, a scrubbed environment and stdin /
stdout / stderr redirected to files. Standard library only: it runs before anything is trusted.

Layers, strongest first (each one that the OS refuses is skipped, the rest still apply):
1. Namespaces (needs root): new mount, network and PID namespaces. Every mount is remounted
   read-only except the work directory; the network namespace has no usable interface; PID 1 of
   the new namespace is a small reaper, so when it exits (or is killed, via PDEATHSIG) the kernel
   kills every process the program left, even ones that called setsid().
2. Credentials: when root, switch to `nobody` keeping only CAP_DAC_READ_SEARCH (so the interpreter
   under a private home stays readable), which makes RLIMIT_NPROC apply and the program unable to
   signal or ptrace other users' processes.
3. Resource limits: CPU seconds, address space, file size (also caps captured stdout), processes.
4. Python audit hook: refuses internet sockets and writes outside the work directory; without
   namespaces it also refuses process creation and signals to other processes. ctypes can bypass
   this layer; it is the fallback, not the wall.
"""

import ctypes
import json
import os
import resource
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS = 1, 8
CAP_DAC_READ_SEARCH = 2
NOBODY = 65534

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source, target, flags):
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    return _libc.mount(enc(source), enc(target), None, ctypes.c_ulong(flags), None) == 0


def _mount_points():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # field 5 is the mount point (octal-escaped), field 6 its per-mount options
            point = fields[4].encode().decode("unicode_escape")
            yield point, fields[5].split(",")


def _read_only_except(workdir):
    """Make every mount read-only in this (new) mount namespace, except `workdir`."""
    if not _mount(None, "/", MS_REC | MS_PRIVATE) or not _mount(workdir, workdir, MS_BIND):
        return False
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    for point, options in _mount_points():
        if point == workdir:
            continue
        extra = sum(flag for name, flag in keep.items() if name in options)
        _mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY | extra)
    os.chdir(workdir)  # the old cwd still points into the (now read-only) underlying mount
    return True


def _enter_namespaces(workdir):
    if os.geteuid() != 0 or _libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return False
    return _read_only_except(workdir)


def _become_reaper_then_fork():
    """In the parent namespace: wait for PID 1; as PID 1: wait for the program. Returns in the program."""
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            # Dies with its parent: killing the outer guard's process group takes the namespace down.
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            continue
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_privileges():
    if os.geteuid() != 0:
        return
    _libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    _libc.capset(ctypes.byref(header), data)  # best effort: without it, nobody may lack read access


def _set_limits(limits):
    cpu = limits["cpu_seconds"]
    memory = limits["memory_mb"] << 20
    for kind, soft, hard in [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] << 20, limits["file_size_mb"] << 20),
        (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"]),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, 256, 256),
    ]:
        try:
            resource.setrlimit(kind, (soft, hard))
        except (ValueError, OSError):
            pass


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PROCESS_EVENTS = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                   "subprocess.Popen", "os.setsid", "os.setpgid"}


def _install_audit_hook(workdir, strict):
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
        elif event == "socket.__new__" and args[1] != socket.AF_UNIX:
            raise PermissionError("sandbox: network access is disabled")
        elif strict and event in _PROCESS_EVENTS:
            raise PermissionError(f"sandbox: {event} is disabled")
        elif strict and event in ("os.kill", "os.killpg") and args[0] not in (own_pid, 0):
            raise PermissionError("sandbox: signalling other processes is disabled")

    sys.addaudithook(hook)


def main():
    config = json.loads(sys.argv[1])
    with open(config["program"], encoding="utf-8", errors="replace") as f:
        source = f.read()
    workdir = os.getcwd()
    namespaces = config["isolation"] == "auto" and _enter_namespaces(workdir)
    if namespaces:
        _become_reaper_then_fork()
    _drop_privileges()
    _set_limits(config["limits"])
    _install_audit_hook(workdir, strict=not namespaces)
    code = compile(source, "solution.py", "exec")
    del config, source
    sys.argv = ["solution.py"]
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
