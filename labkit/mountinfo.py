"""/proc/PID/mountinfo, parsed once for every module that asks what is mounted where.

One line per mount (proc(5)):

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    id parent dev root mountpoint options [optional fields...] - fstype source super-options

The optional fields are the mount's propagation ("shared:5", "master:5", both, or none = private).
Paths escape space, tab, newline and backslash as octal (\\040, \\011, \\012, \\134).
"""
from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_line(line: str) -> dict:
    """One mountinfo line: {id, parent, root, mountpoint, options, propagation, fstype, source,
    superopts}; root is the path inside its filesystem that is mounted (a bind mount's source)."""
    left, right = line.rstrip("\n").split(" - ", 1)
    fields = left.split()
    fstype, source, superopts = (right.split() + ["", ""])[:3]
    return {"id": int(fields[0]), "parent": int(fields[1]), "root": unescape(fields[3]),
            "mountpoint": unescape(fields[4]), "options": fields[5], "propagation": " ".join(fields[6:]),
            "fstype": fstype, "source": unescape(source), "superopts": superopts}


def read(pid: int | str = "self") -> list[dict]:
    """Every mount process `pid` sees, in the kernel's order (parents before children)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [parse_line(line) for line in f if line.strip()]


def overlay_layers(mount: dict) -> dict:
    """{'lower': [top, ..., bottom], 'upper': path, 'work': path} from an overlay mount's options."""
    opts = dict(opt.split("=", 1) for opt in mount["superopts"].split(",") if "=" in opt)
    return {"lower": opts.get("lowerdir", "").split(":"), "upper": opts.get("upperdir"),
            "work": opts.get("workdir")}


def _lowerdirs(mount: dict) -> list[str]:
    """An overlay's lower layers, from `lowerdir=a:b` and/or the new mount API's `lowerdir+=a`."""
    found = []
    for opt in mount["superopts"].split(","):
        key, _, value = opt.partition("=")
        if key == "lowerdir":
            found += value.split(":")
        elif key in ("lowerdir+", "datadir+"):
            found.append(value)
    return [unescape(path) for path in found if path]


def lowerdirs_in_use() -> set[str]:
    """Every lowerdir of every overlay mounted on the host, in every mount namespace (a container's
    root lives on in its namespace after a lazy unmount took it off the host's table)."""
    import os
    seen, found = set(), set()
    for pid in ["self", *(p for p in os.listdir("/proc") if p.isdigit())]:
        try:
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            if ns in seen:
                continue
            mounts = read(pid)
        except OSError:                   # the process exited meanwhile
            continue
        seen.add(ns)
        found.update(lower for m in mounts if m["fstype"] == "overlay" for lower in _lowerdirs(m))
    return found

