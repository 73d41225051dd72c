"""The machine labkit runs on: cgroup mode, controllers, root, and the lab-host guard.

A leaf: it uses only syscalls and errors, so every layer above may ask it. The cgroup mode (v1,
hybrid or v2) is told apart by filesystem magic exactly as runc does. The full machine report that
`labkit doctor` prints is built on top of this in labkit.doctor.
"""
from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

from . import mountinfo, syscalls
from .errors import NotPermitted

CGROUP_ROOT = "/sys/fs/cgroup"
LAB_HOST_MARKER = Path(os.environ.get("LABKIT_MARKER", "/etc/labkit/lab-host"))
ALLOW_ENV = "LABKIT_ALLOW_HOST"

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                  "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc")


class Controller(namedtuple("Controller", "name version mountpoint")):
    """A cgroup controller: its name, cgroup version (1 or 2) and where that hierarchy is mounted.
    (A named tuple, not a dataclass: importing dataclasses costs every `labkit run` and runtime `create` 5 ms.)"""
    __slots__ = ()


def cgroup_mode(root: str = CGROUP_ROOT) -> str:
    """'v2' (unified), 'hybrid' (v1 controllers plus an empty-ish v2 at unified/) or 'v1'."""
    magic = syscalls.filesystem_magic(root)
    if magic == syscalls.CGROUP2_SUPER_MAGIC:
        return "v2"
    unified = os.path.join(root, "unified")
    try:
        if syscalls.filesystem_magic(unified) == syscalls.CGROUP2_SUPER_MAGIC:
            return "hybrid"
    except OSError:
        pass
    return "v1"


def _cgroup_mounts() -> list[tuple[str, str, list[str]]]:
    """(fstype, mountpoint, super options) of every cgroup mount this process can see."""
    return [(m["fstype"], m["mountpoint"], m["superopts"].split(",")) for m in mountinfo.read()
            if m["fstype"] in ("cgroup", "cgroup2")]


def controllers() -> list[Controller]:
    """Every controller with the hierarchy version it is attached to and where it is mounted."""
    found: dict[str, Controller] = {}
    for fstype, mountpoint, opts in _cgroup_mounts():
        if fstype == "cgroup":
            for opt in opts:
                if opt in V1_CONTROLLERS:
                    found.setdefault(opt, Controller(opt, 1, mountpoint))
        else:
            try:
                names = Path(mountpoint, "cgroup.controllers").read_text().split()
            except OSError:
                names = []
            for name in names:
                found.setdefault(name, Controller(name, 2, mountpoint))
    return sorted(found.values(), key=lambda c: c.name)


def is_root() -> bool:
    return os.geteuid() == 0


def is_lab_host() -> bool:
    """A lab host has the marker provisioning writes, or the user opted in with LABKIT_ALLOW_HOST=1."""
    return os.environ.get(ALLOW_ENV) == "1" or LAB_HOST_MARKER.exists()


# --- the guard ------------------------------------------------------------------------------------

def require_lab_host(action: str = "create kernel objects") -> None:
    """Refuse, with a clear reason and the way out, unless this is root on a lab host."""
    if not is_root():
        raise NotPermitted(f"to {action} labkit needs root (the lab creates namespaces and cgroups); "
                           "run it as root, e.g. inside the lab VM or with sudo")
    if not is_lab_host():
        raise NotPermitted(f"to {action} labkit needs a lab host: this machine has no {LAB_HOST_MARKER}. "
                           f"Provision it with `make lab` (or vagrant up), or opt in with {ALLOW_ENV}=1")


def delegated_by(path: str) -> str:
    """The cgroup (relative to the root) systemd delegated `path` from, or "" (systemd marks a cgroup
    it hands over with Delegate=yes by the extended attribute trusted.delegate)."""
    root = os.path.realpath(CGROUP_ROOT)
    current = os.path.realpath(path)
    while current.startswith(root) and current != root:
        for name in ("trusted.delegate", "user.delegate"):
            try:
                if os.getxattr(current, name) == b"1":
                    return "/" + os.path.relpath(current, root)
            except OSError:
                pass
        current = os.path.dirname(current)
    return ""
