"""The setup steps a container's process runs before exec (in the starter's fork): mount its
tmpfs, attach /etc/hosts taken before pivot_root, take its terminal, set rlimits, switch user.

Everything a step needs is imported at module level: once inside the container's root, the host's
Python files are out of reach.
"""
from __future__ import annotations

import fcntl
import os
import struct
import termios
from pathlib import Path
from collections.abc import Mapping

from . import start_stamps, syscalls
from .errors import LabkitError

_TIOCGPTN, _TIOCSPTLCK = 0x80045430, 0x40045431     # linux/tty: the pty's number; (un)lock it


def mount_tmpfs(path: str, flags: int, data: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    syscalls.mount("tmpfs", path, "tmpfs", flags, data or None)


def hosts_file(root, hostname: str | None, extra: Mapping[str, str]) -> str:
    """The image's /etc/hosts, plus the container's own name and `extra` {host: ip} (--add-host)."""
    try:
        text = Path(root, "etc/hosts").read_text()
    except OSError:
        text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if text and not text.endswith("\n"):
        text += "\n"
    if hostname:
        text += f"127.0.1.1\t{hostname}\n"
    return text + "".join(f"{ip}\t{host}\n" for host, ip in extra.items())


TAKEN: dict[str, int] = {}     # in the container's process: mounts taken before pivot_root, by path


def take_mount(path: str) -> None:
    """Before pivot_root: a detached copy of a bind mount of the host's `path` (open_tree), kept in an
    fd - after pivot_root the host's files are out of reach."""
    TAKEN[path] = syscalls.open_tree_clone(path)


def attach_mount(path: str, target: str) -> None:
    """After pivot_root: attach the mount taken of `path` onto `target` inside (made if missing)."""
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    tree_fd = TAKEN.pop(path)
    syscalls.move_mount(tree_fd, target)
    os.close(tree_fd)


def open_pty(pts: str, cloexec_slave: bool = True) -> tuple[int, int]:
    """A pty (master, slave) of the devpts instance mounted at `pts`."""
    master = os.open(f"{pts}/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))            # unlockpt
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
        slave = os.open(f"{pts}/{number}", os.O_RDWR | os.O_NOCTTY | (os.O_CLOEXEC if cloexec_slave else 0))
    except BaseException:
        os.close(master)
        raise
    return master, slave


def take_terminal() -> None:
    """(exec -t) Become a session leader whose controlling terminal is the pty slave we were given (the
    only terminal among our descriptors, before it becomes 0, 1 and 2): then ^C, job control and
    SIGWINCH reach the command as they would on a real terminal."""
    os.setsid()
    for fd in range(3, 1024):
        try:
            if os.isatty(fd):
                fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
                return
        except OSError:
            continue
    raise LabkitError("no terminal among the descriptors to make the controlling one")


def open_terminal() -> None:
    """Give the command a terminal of the container's own devpts (as `docker exec -t` gets one) as its
    0, 1, 2 and controlling terminal: ttyname() then finds it as /dev/pts/N inside, as under Docker.
    We become a session leader, so ^C, job control and SIGWINCH reach the command as on a real
    terminal. The master side goes to the engine with the "created" message (start_stamps)."""
    master, slave = open_pty("/dev/pts", cloexec_slave=False)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    start_stamps.HANDED_OVER.append(master)


def set_rlimits(limits: dict) -> None:
    import resource
    for kind, value in limits.items():
        resource.setrlimit(kind, value)


def switch_user(uid: int, gid: int, groups: list[int]) -> None:
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
