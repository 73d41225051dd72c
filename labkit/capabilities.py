"""Capabilities: root's powers, split into about forty pieces - and the few a container's root keeps.

Being uid 0 inside a container is not what makes it harmless; namespaces change what root *sees*,
capabilities decide what root may *do*. CAP_SYS_ADMIN alone would let a container's root remount its
read-only root filesystem writable, or mount a disk it can reach. So, like Docker and runc, labkit
keeps only a short default list and drops every other capability from the *bounding set* of the
container's first process, just before it execs: what is not in the bounding set can never come
back, for that process or anything it starts (see capabilities(7)).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from . import syscalls
from .errors import InvalidValue
from .syscalls import PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_CAPBSET_DROP

# Numbered as in linux/capability.h: the index is the capability's number.
NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

# What `docker run` leaves a container's root by default (moby's oci/caps/defaults.go).
DOCKER_DEFAULT = frozenset({
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
    "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
})



def canonical(name: str) -> str:
    """'cap_sys_admin', 'CAP_SYS_ADMIN' or 'SYS_ADMIN' -> 'SYS_ADMIN'; 'ALL' stays 'ALL'."""
    bare = str(name).strip().upper()
    bare = bare[4:] if bare.startswith("CAP_") else bare
    if bare != "ALL" and bare not in NAMES:
        raise InvalidValue("capability", name, "a name from capabilities(7) such as NET_ADMIN or "
                                               "CAP_SYS_ADMIN, or ALL")
    return bare


def effective_set(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (),
                  base: Iterable[str] = DOCKER_DEFAULT) -> frozenset[str]:
    """Docker's rule: start from the default list, remove cap_drop, then add cap_add ("ALL" works)."""
    keep = {canonical(c) for c in base}
    dropped = {canonical(c) for c in cap_drop}
    added = {canonical(c) for c in cap_add}
    keep = set() if "ALL" in dropped else keep - dropped
    keep = set(NAMES) if "ALL" in added else keep | added
    return frozenset(keep)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(NAMES) - 1


def drop_step(keep: Iterable[str]) -> Callable[[], None]:
    """A setup step for spawn(): drop every capability not in `keep` from the bounding set, and
    empty the ambient and inheritable sets.

    It runs in the container's process after pivot_root and the mounts (which still needed
    CAP_SYS_ADMIN), before a user switch (it needs CAP_SETPCAP). Exec gives a process the
    permitted set (inheritable AND the file's inheritable) OR (the file's permitted AND bounding)
    OR ambient - and for root every file counts as fully capable - so whatever its starter had in
    the inheritable set would come back past the bounding set: it is emptied, not assumed empty.
    """
    # a partial of a module-level function, not a closure: labkit.starter pickles setup steps
    return functools.partial(_drop_bounding, tuple(n for n in range(_last_cap() + 1) if n not in _numbers(keep)))


def limit_step(keep: Iterable[str]) -> Callable[[], None]:
    """The last capability step, after the user switch (as runc applies them): permitted and
    effective cut to `keep`, inheritable empty - set explicitly with capset(2)."""
    return functools.partial(_limit_sets, sum(1 << n for n in _numbers(keep)))


def _numbers(keep: Iterable[str]) -> set[int]:
    return {NAMES.index(canonical(c)) for c in keep}


def _drop_bounding(to_drop: tuple[int, ...]) -> None:
    for number in to_drop:
        try:
            syscalls.prctl(PR_CAPBSET_DROP, number)
        except OSError as exc:
            if exc.errno != 22:   # EINVAL: a capability this kernel does not know
                raise
    syscalls.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    effective, permitted, _ = syscalls.capget()
    syscalls.capset(effective, permitted, 0)


def _limit_sets(keep_mask: int) -> None:
    _, permitted, _ = syscalls.capget()
    kept = permitted & keep_mask
    syscalls.capset(kept, kept, 0)


def of_process(pid: int | str = "self", which: str = "CapEff") -> set[str]:
    """The capability names in /proc/PID/status's CapEff (or CapBnd, CapPrm...) line."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(which + ":"):
                mask = int(line.split()[1], 16)
                return {name for number, name in enumerate(NAMES) if mask >> number & 1}
    return set()
