"""The eight namespace kinds, as data: name, clone flag, what each isolates, since which kernel.

A leaf: parsing a learner's "pid,uts" and telling which kinds this kernel has needs nothing but
syscalls' flag values, so the machine report (doctor), the views and the container all read the
kinds from here without pulling in the code that starts processes (labkit.namespaces).
"""
from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Iterable

from . import syscalls
from .errors import InvalidValue


class Kind(namedtuple("Kind", "name flag isolates min_kernel unshare_option")):
    """One namespace kind: its file name under /proc/PID/ns, its clone/unshare flag, what a process
    inside gets its own copy of, the first kernel release that had it, and the same kind for
    unshare(1). (A named tuple, not a dataclass: importing dataclasses costs every `labkit run` and runtime `create` 5 ms.)"""
    __slots__ = ()


KINDS: tuple[Kind, ...] = (
    Kind("cgroup", syscalls.CLONE_NEWCGROUP, "its view of the cgroup tree (/proc/self/cgroup)", "4.6", "--cgroup"),
    Kind("ipc", syscalls.CLONE_NEWIPC, "System V IPC objects and POSIX message queues", "2.6.19", "--ipc"),
    Kind("mnt", syscalls.CLONE_NEWNS, "the mount table: what is mounted where", "2.4.19", "--mount"),
    Kind("net", syscalls.CLONE_NEWNET, "network devices, addresses, routes, ports, firewall", "2.6.29", "--net"),
    Kind("pid", syscalls.CLONE_NEWPID, "process ids: the first process inside is pid 1", "2.6.24", "--pid"),
    Kind("time", syscalls.CLONE_NEWTIME, "the monotonic and boot-time clocks' offsets", "5.6", "--time"),
    Kind("user", syscalls.CLONE_NEWUSER, "user and group ids, and so capabilities", "3.8", "--user"),
    Kind("uts", syscalls.CLONE_NEWUTS, "hostname and NIS domain name", "2.6.19", "--uts"),
)
BY_NAME = {k.name: k for k in KINDS}
ALIASES = {"mount": "mnt", "network": "net", "hostname": "uts"}


def kind_available(kind: Kind) -> bool:
    return os.path.exists(f"/proc/self/ns/{kind.name}")


def parse_kinds(spec: str | Iterable[str] | None) -> tuple[Kind, ...]:
    """'pid,uts' / ['pid', 'uts'] / 'all' / None -> Kind objects; unknown names are refused."""
    if spec is None or spec == "":
        return ()
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    if names == ["all"]:
        return KINDS
    kinds = []
    for raw in names:
        name = ALIASES.get(str(raw).strip(), str(raw).strip())
        if name not in BY_NAME:
            raise InvalidValue("namespace kind", raw, "one of " + ", ".join(BY_NAME) + " or 'all'")
        if BY_NAME[name] not in kinds:
            kinds.append(BY_NAME[name])
    return tuple(kinds)
