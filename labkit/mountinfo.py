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
