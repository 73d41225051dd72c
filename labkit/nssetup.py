"""What a new user or time namespace is given before its first process runs: id maps, root inside, clock offsets.

A user namespace starts with no ids mapped: the parent writes /proc/PID/uid_map and gid_map (with
"deny" in setgroups first when it is not root), then the child takes the ids that make it root
inside. A time namespace's clock offsets (/proc/PID/timens_offsets) can be written only before any
process enters it. labkit.namespaces.spawn does both at the right moment; this module says what.
"""
from __future__ import annotations

import os

from . import syscalls
from .errors import InvalidValue


def write_id_maps(pid: int, uid_map: str | None, gid_map: str | None) -> None:
    """Map root inside the new user namespace to our own ids outside (like unshare --map-root-user)."""
    uid_map = uid_map or f"0 {os.geteuid()} 1"
    gid_map = gid_map or f"0 {os.getegid()} 1"
    if os.geteuid() != 0:
        syscalls.write_file(f"/proc/{pid}/setgroups", "deny")
    syscalls.write_file(f"/proc/{pid}/uid_map", uid_map)
    syscalls.write_file(f"/proc/{pid}/gid_map", gid_map)


def maps_root(uid_map: str | None) -> bool:
    """Does the map give the new user namespace a root (a line "0 OUTSIDE COUNT")? The default does."""
    return uid_map is None or any(line.split()[:1] == ["0"] for line in uid_map.splitlines())


def become_root_inside() -> None:
    """Take the ids the maps give root inside, as runc does once the maps are written. Without this the
    process keeps its outside ids - unmapped inside unless they are the mapped ones (shown as 65534) -
    and loses its capabilities at exec."""
    try:
        os.setgroups([])      # drop the host's supplementary groups; refused when setgroups is "deny"
    except PermissionError:
        pass
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def time_offset_lines(offsets: dict) -> str:
    """What /proc/PID/timens_offsets takes: "CLOCK SECONDS NANOSECONDS" lines, the nanoseconds in
    [0, 1e9) - so -1.5 s is "-2 500000000". Checked here, in the parent, before anything starts; the
    child writes it before the first process enters the time namespace."""
    lines = []
    for clock, seconds in offsets.items():
        if clock not in ("monotonic", "boottime"):
            raise InvalidValue("time offset clock", clock, "'monotonic' or 'boottime'")
        try:
            nanoseconds = round(float(seconds) * 1_000_000_000)
        except (TypeError, ValueError):
            raise InvalidValue(f"time offset of {clock}", seconds, "a number of seconds") from None
        whole, fraction = divmod(nanoseconds, 1_000_000_000)
        lines.append(f"{clock} {whole} {fraction}")
    return "\n".join(lines)
