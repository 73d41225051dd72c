"""pivot_root done right: the setup steps that put a container's first process inside its root.

Run in the container's final child, in its new mount namespace, before exec (namespaces.spawn's
`setup` steps; labkit.rootfs.RootFS and labkit-runtime build the list): bind-mount the new root on
itself (pivot_root needs a mount point), mount /proc, a minimal /dev and a read-only /sys inside it,
pivot_root, then detach the old root. Unlike chroot, nothing of the host's tree is left reachable -
`labkit.escape` shows the difference on the real kernel.

Each step is a module-level function (or a functools.partial of one), so that it can be pickled to
labkit.starter. This module imports only syscalls: labkit-runtime's `create` needs these steps and
nothing of the image store.
"""
from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Sequence

from . import syscalls

_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
            "tty": (5, 0)}
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


def bind_root(root: str) -> None:
    """pivot_root needs the new root to be a mount point: bind-mount it on itself."""
    syscalls.mount(root, root, None, syscalls.MS_BIND | syscalls.MS_REC)


def mount_proc(root: str) -> None:
    """A /proc of the container's own pid namespace (this process is already pid 1 in it)."""
    syscalls.mount("proc", f"{root}/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV
                   | syscalls.MS_NOEXEC)


def mount_sys(root: str) -> None:
    """sysfs read-only: the container may look at devices, never reconfigure them."""
    syscalls.mount("sysfs", f"{root}/sys", "sysfs", syscalls.MS_RDONLY | syscalls.MS_NOSUID
                   | syscalls.MS_NODEV | syscalls.MS_NOEXEC)


def make_dev(root: str) -> None:
    """A minimal /dev on tmpfs: the six character devices programs expect, /dev/pts, fd links."""
    dev = f"{root}/dev"
    syscalls.mount("tmpfs", dev, "tmpfs", syscalls.MS_NOSUID, "mode=755,size=64k")
    populate_dev(dev)
    os.mkdir(f"{dev}/pts")
    syscalls.mount("devpts", f"{dev}/pts", "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                   "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir(f"{dev}/shm")
    syscalls.mount("shm", f"{dev}/shm", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV
                   | syscalls.MS_NOEXEC, "mode=1777,size=64m")


def populate_dev(dev: str) -> None:
    """The six character devices programs expect, and the fd/stdio/ptmx links, in a fresh /dev."""
    old = os.umask(0)
    try:
        for node, (major, minor) in _DEVICES.items():
            if not os.path.lexists(f"{dev}/{node}"):
                os.mknod(f"{dev}/{node}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    finally:
        os.umask(old)
    for link, target in _DEV_LINKS.items():
        if not os.path.lexists(f"{dev}/{link}"):
            os.symlink(target, f"{dev}/{link}")


def pivot(root: str) -> None:
    """pivot_root(2) into `root`, then detach the old root so nothing of the host stays reachable.

    pivot_root(".", ".") (as runc does) stacks the old root on top of the new one at the same place;
    umount2(".", MNT_DETACH) then takes it away lazily - no put_old directory to create or remove,
    which also works when the new root is read-only.
    """
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")


def mask_paths(paths: Sequence[str]) -> None:
    """After pivot_root: hide each path (e.g. /proc/kcore) under /dev/null, or a directory under an
    empty read-only tmpfs - what runc does for an OCI bundle's linux.maskedPaths."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_RDONLY, "size=0")
        elif os.path.lexists(path):
            syscalls.mount("/dev/null", path, None, syscalls.MS_BIND)


def make_paths_readonly(paths: Sequence[str]) -> None:
    """After pivot_root: make each path read-only (a bind mount on itself, remounted read-only)."""
    for path in paths:
        if os.path.lexists(path):
            syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
            syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REMOUNT
                           | syscalls.MS_RDONLY | syscalls.MS_REC)


def remount_readonly() -> None:
    syscalls.mount(None, "/", None, syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)


def pivot_steps(root: str | os.PathLike, *, readonly: bool = False, proc: bool = True,
                dev: bool = True, sys: bool = True, masked: Sequence[str] = (),
                readonly_paths: Sequence[str] = (),
                inside: Sequence[Callable[[], None]] = ()) -> list[Callable[[], None]]:
    """The setup steps, in order, for namespaces.spawn(setup=..., mount_proc=False): the child ends
    up inside `root`, with /proc (of its own pid namespace), a minimal /dev and a read-only /sys.

    spawn itself has already made `/` private recursively (so these mounts never reach the host)
    and set the hostname before these steps run. `inside` steps run right after pivot_root, while
    "/" is still writable (e.g. making the working directory, mounting a tmpfs).
    """
    root = str(root)
    steps = [functools.partial(bind_root, root)]
    if proc:
        steps.append(functools.partial(mount_proc, root))
    if sys:
        steps.append(functools.partial(mount_sys, root))
    if dev:
        steps.append(functools.partial(make_dev, root))
    steps.append(functools.partial(pivot, root))
    steps += inside
    if masked:
        steps.append(functools.partial(mask_paths, list(masked)))
    if readonly_paths:
        steps.append(functools.partial(make_paths_readonly, list(readonly_paths)))
    if readonly:
        steps.append(remount_readonly)
    return steps
