"""The sandbox's seccomp filter, compiled once per trainer process to a BPF program.

libseccomp (through the `pyseccomp` binding) turns the rules below into classic BPF for this
machine's architecture, with the architecture check in front (another ABI's calls kill the
process). The guard loads the bytes with prctl(PR_SET_SECCOMP) right before the program runs, so
no run pays for importing the binding or compiling the rules (that was ~0.1 s a run).
Every denied call fails with EPERM (the program sees PermissionError), except clone3 (below).
"""

import errno
import functools
import tempfile

CLONE_THREAD, CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP = 0x00010000, 0x00000080, 0x00020000, 0x02000000
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (0x04000000, 0x08000000, 0x10000000,
                                                                         0x20000000, 0x40000000)
TIOCSTI = 0x5412
# Calls a test program never needs: debugging other processes, mounts and namespaces, kernel
# interfaces with a history of privilege escalations, and escapes from a bind mount by file handle;
# plus fork / vfork: without a per-run cgroup, one process per run is what makes RLIMIT_AS a
# per-run memory limit (threads stay allowed).
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "pidfd_open",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "vhangup",
    "fanotify_init", "lookup_dcookie", "uselib", "personality", "fork", "vfork",
)
NAMESPACE_FLAGS = (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS,
                   CLONE_NEWCGROUP, CLONE_NEWTIME)


@functools.cache
def seccomp_program() -> bytes:
    """The filter as BPF bytes (struct sock_filter[]); raises OSError/ImportError without libseccomp."""
    import pyseccomp as sc

    deny = sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a call on this architecture (aarch64 has no fork, iopl, ...)
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags are out of a filter's reach; libc falls back
    for flag in NAMESPACE_FLAGS:
        rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))  # a process, not a thread
    rules.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    with tempfile.TemporaryFile() as f:
        rules.export_bpf(f)
        f.seek(0)
        return f.read()
