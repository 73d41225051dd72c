"""The few Linux syscalls Python's os module lacks, through ctypes on libc.

Python 3.12 added os.unshare and os.setns; on 3.11 they are missing, so we call libc directly.
Every wrapper raises OSError with errno set, exactly like the os module would, and names its target.
These are meant to be called in *child* processes: labkit never unshares or setns-es the notebook
kernel itself (setns is per thread, and CLONE_NEWUSER fails in a threaded process).
"""
from __future__ import annotations

import ctypes
import errno
import os
import select

# dlopen(NULL): the symbols already loaded into this process, libc's among them. (find_library("c")
# would run `ldconfig -p` in a subprocess at every import - a third of `labkit run`'s import time.)
_libc = ctypes.CDLL(None, use_errno=True)

# Clone flags (linux/sched.h): one per namespace kind.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

# prctl(2) options (linux/prctl.h)
PR_SET_PDEATHSIG = 1         # a signal for this process when its parent dies
PR_SET_DUMPABLE = 4          # may the process's owner ptrace it and open its /proc files
PR_SET_SECCOMP = 22          # with SECCOMP_MODE_FILTER (2): install a seccomp filter
PR_CAPBSET_DROP = 24         # remove a capability from the bounding set, for good
PR_SET_NO_NEW_PRIVS = 38     # execve never grants privileges again (setuid bits, file capabilities)
PR_CAP_AMBIENT = 47          # ambient capabilities; its sub-operations:
PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL = 2, 4
SECCOMP_MODE_FILTER = 2

# Filesystem magic numbers (linux/magic.h); runc tells cgroup v2 from v1 by the first.
CGROUP2_SUPER_MAGIC = 0x63677270
TMPFS_MAGIC = 0x01021994


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces of the kinds in `flags`."""
    if hasattr(os, "unshare"):
        os.unshare(flags)
        return
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that the open /proc/PID/ns/KIND file `fd` refers to."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    def b(s):
        return s.encode() if s is not None else None
    _check(_libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)),
           f"mount {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


# pivot_root(2) has no glibc wrapper: its number per architecture (asm/unistd.h)
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "i686": 217, "armv7l": 218,
                   "ppc64le": 203, "s390x": 217}


def pivot_root(new_root: str, put_old: str) -> None:
    """Make `new_root` the root of this mount namespace; the old root moves to `put_old`."""
    machine = os.uname().machine
    if machine not in _SYS_PIVOT_ROOT:   # another number there would be another syscall, run as root
        raise OSError(errno.ENOSYS, f"pivot_root: labkit does not know its syscall number on {machine} "
                                    f"(known: {', '.join(_SYS_PIVOT_ROOT)})")
    SYS_pivot_root = _SYS_PIVOT_ROOT[machine]
    _check(_libc.syscall(ctypes.c_long(SYS_pivot_root), new_root.encode(), put_old.encode()),
           f"pivot_root {new_root}")


# rt_sigaction(2) by number, for the signals glibc keeps for itself (32 and 33: thread cancellation,
# setxid): neither Python's signal.signal nor glibc's sigaction() will touch them, yet one that a
# starter ignores (coreutils' timeout leaves 32 and 33 ignored) stays ignored across exec.
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134, "riscv64": 134}


def default_disposition(sig: int) -> None:
    """Set `sig` back to SIG_DFL with the raw syscall (an all-zero struct sigaction is SIG_DFL, no
    flags, empty mask, whatever the architecture's layout)."""
    machine = os.uname().machine
    if machine not in _SYS_RT_SIGACTION:
        raise OSError(errno.ENOSYS, f"rt_sigaction: labkit does not know its syscall number on {machine} "
                                    f"(known: {', '.join(_SYS_RT_SIGACTION)})")
    action = ctypes.create_string_buffer(32)
    _check(_libc.syscall(ctypes.c_long(_SYS_RT_SIGACTION[machine]), ctypes.c_int(sig), action,
                         None, ctypes.c_size_t(8)), f"rt_sigaction {sig}")


def readable(fds, timeout: float | None = None) -> list[int]:
    """Those of `fds` (numbers, or objects with fileno()) that are readable - data, end-of-file or a
    hang-up - within `timeout` seconds (None: until one is). poll(2), not select(2): select fails on
    descriptors from 1024 on, which a long-lived engine or notebook kernel reaches."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else max(timeout, 0) * 1000)]


def write_file(path: str, text: str) -> None:
    """Write `text` with a single write(2), as /proc and /sys files want (uid_map, oom_score_adj, ...).

    Plain os calls, no buffered file object: this runs in forked children just before exec.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname {name}")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522     # two 32-bit words per set: capabilities 0-63


def capget() -> tuple[int, int, int]:
    """This thread's (effective, permitted, inheritable) capability sets, as 64-bit masks."""
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return tuple(getattr(data[0], f) | getattr(data[1], f) << 32 for f in ("effective", "permitted", "inheritable"))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set all three capability sets of this thread (capset(2)); lowering is always allowed."""
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    for word in (0, 1):
        data[word].effective = effective >> 32 * word & 0xFFFFFFFF
        data[word].permitted = permitted >> 32 * word & 0xFFFFFFFF
        data[word].inheritable = inheritable >> 32 * word & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type first, which is all we read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


def filesystem_magic(path: str) -> int:
    """The f_type of the filesystem mounted at `path` (statfs(2)); how runc tells v1 from v2."""
    buf = _Statfs()
    _check(_libc.statfs(path.encode(), ctypes.byref(buf)), f"statfs {path}")
    return buf.f_type & 0xFFFFFFFF


# The new mount API (Linux 5.2): a copy of a mount held by a file descriptor, attached later - even
# after pivot_root, when the original is no longer reachable. Same numbers on every architecture.
SYS_open_tree, SYS_move_mount = 428, 429
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100


def open_tree_clone(path: str) -> int:
    """A detached bind mount of `path` (file or directory), as a file descriptor."""
    return _check(_libc.syscall(ctypes.c_long(SYS_open_tree), ctypes.c_int(AT_FDCWD), path.encode(),
                                ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)), f"open_tree {path}")


def move_mount(tree_fd: int, target: str) -> None:
    """Attach the mount `tree_fd` holds at `target` (in this process's mount namespace)."""
    _check(_libc.syscall(ctypes.c_long(SYS_move_mount), ctypes.c_int(tree_fd), b"", ctypes.c_int(AT_FDCWD),
                         target.encode(), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")
