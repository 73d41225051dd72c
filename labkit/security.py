"""What keeps a container's root from being the host's root, beyond namespaces: the paths Docker hides,
and no_new_privs against setuid programs.

Capabilities are in capabilities.py, seccomp filters in seccomp.py, rootless containers in
rootless.py; this module holds the rest of the picture:

- masked and read-only paths: files of /proc and /sys that describe (or control) the *host*, not
  the container, because those filesystems are not fully namespaced. Docker hides the first list
  under /dev/null or an empty read-only tmpfs and mounts the second read-only; pass them to
  Container(masked_paths=..., readonly_paths=...) to get the same.
- no_new_privs: a per-process flag (prctl PR_SET_NO_NEW_PRIVS, inherited, never cleared) under which
  execve() grants nothing - a setuid-root program then runs with the caller's ids.
  `docker run --security-opt no-new-privileges`, Container(no_new_privileges=True).
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import cleanup, syscalls
from .errors import NotFound
from .syscalls import PR_SET_NO_NEW_PRIVS

# moby's oci/defaults.go (DefaultLinuxSpec): what every `docker run` gets unless --privileged.
DOCKER_MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DOCKER_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

NOBODY = 65534


@contextmanager
def setuid_copy(program: str = "sleep"):
    """A directory in which, for processes in a private mount namespace, a setuid-root copy of
    `program` can be made (see `setuid_steps`). Yields (directory, path of the copy).

    The copy lives on a tmpfs mounted only inside the child's mount namespace: the host never sees a
    setuid file, and it works where /run or /tmp is mounted nosuid (systemd hosts)."""
    source = shutil.which(program)
    if source is None:
        raise NotFound(f"program not found on PATH: {program!r}")
    name = cleanup.unique_name("setuid")
    cleanup.claim("dir", name)
    try:
        directory = cleanup.work_dir(name)
        os.chmod(directory, 0o755)     # an unprivileged user must be able to reach the copy
        try:
            yield directory, source
        finally:
            directory.rmdir()
    finally:
        cleanup.release("dir", name)


def setuid_steps(directory: str | os.PathLike, source: str, *, uid: int = NOBODY,
                 no_new_privs: bool = False) -> tuple[list, str]:
    """Setup steps for namespaces.spawn(..., "mnt", setup=steps): in the child's own mount namespace,
    mount a tmpfs on `directory`, copy `source` there as a setuid-root file (mode 4755), become `uid`
    (an ordinary user), set no_new_privs if asked; spawn then execs the copy. Returns (steps, the
    copy's path to exec).
    """
    copy = str(Path(directory) / Path(source).name)

    def mount_tmpfs():
        syscalls.mount("tmpfs", str(directory), "tmpfs", 0, "mode=755,size=16m")

    def install_setuid_copy():
        with open(source, "rb") as src, open(copy, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chown(copy, 0, 0)
        os.chmod(copy, 0o4755)            # rwsr-xr-x: runs with its owner's uid, root

    def become_user():
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    steps = [mount_tmpfs, install_setuid_copy, become_user]
    if no_new_privs:
        steps.append(lambda: syscalls.prctl(PR_SET_NO_NEW_PRIVS, 1))
    return steps, copy
