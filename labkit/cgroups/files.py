"""Reading and writing cgroupfs files, and parsing the few formats the kernel uses in them.

Every cgroup interface file is a small text file. The kernel documents four shapes
(Documentation/admin-guide/cgroup-v2.rst, "Interface Files"):

    flat keyed      "key value" per line            memory.events, cpu.stat, pids.events
    nested keyed    "KEY k1=v1 k2=v2" per line       io.stat, io.max
    single value    "12345" or "max"                 memory.max, pids.max, memory.limit_in_bytes
    space separated "quota period"                   cpu.max

The parsers here are pure functions over text, so the unit tests drive them with strings and with fake
cgroupfs trees in a temporary directory. A write is one write(2) call, so the kernel's answer (an
errno) comes back for exactly that value, and it is translated at this boundary into a LabkitError
that names the file and the value.
"""
from __future__ import annotations

import errno
import os

from ..errors import Conflict, NotFound, Unsupported, from_oserror

MAX = "max"


# --- I/O -------------------------------------------------------------------------------------------

def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_or_none(path: str) -> str | None:
    """The file's text, or None when it does not exist (a controller or kernel feature is missing)."""
    try:
        return read(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_int(path: str) -> int | None:
    text = read_or_none(path)
    return None if text is None else int(text.split()[0])


def write(path: str, value, hints: dict[int, str] | None = None) -> None:
    """Write `value` to a cgroup file in one write(2); kernel refusals become a LabkitError.

    `hints` maps an errno to a sentence telling the learner what the kernel's refusal means here,
    e.g. {EINVAL: "the quota must be >= 1000 us"}.
    """
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(path)):
            raise NotFound(f"write {value} to {path}: the cgroup {os.path.dirname(path)} does not exist "
                           "(was it deleted?)") from None
        raise Unsupported(f"write {value} to {path}: the file does not exist - this kernel or cgroup "
                          f"lacks that control (a controller not enabled, or a feature not built in)") from None
    except OSError as exc:
        raise from_oserror(exc, f"write {value} to", path) from None
    try:
        os.write(fd, data)
    except OSError as exc:
        raise from_oserror(exc, f"write {value} to", path, (hints or {}).get(exc.errno, "")) from None
    finally:
        os.close(fd)


def mkdir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        raise Conflict(f"cgroup {path} exists already") from None
    except OSError as exc:
        raise from_oserror(exc, "mkdir", path) from None


def pids_in(path: str) -> set[int]:
    """Pids in the cgroup at `path` and in every cgroup below it (cgroup.procs is not recursive)."""
    found: set[int] = set()
    for dirpath, _dirs, _files in os.walk(path):
        text = read_or_none(os.path.join(dirpath, "cgroup.procs"))
        if text:
            found.update(int(p) for p in text.split())
    return found


def rmdir_tree(path: str, attempts_seconds: float = 3.0, on_busy=None) -> None:
    """Remove a cgroup directory and its sub-cgroups, deepest first, retrying on EBUSY.

    A cgroup directory can only be removed when it has no children and no processes; right after the
    last process was killed the kernel may still report EBUSY for a moment (the task is exiting), so,
    like runc's RemovePath, we retry with a growing delay. `on_busy()` runs between attempts (the caller
    kills whatever is still inside). Only directories are removed: rmdir(2) of a cgroup also removes its
    interface files, and rmdir never recurses by itself, so nothing outside `path` can go.
    """
    import time

    if not os.path.isdir(path):
        return
    delay, waited = 0.01, 0.0
    while True:
        busy = None
        for dirpath, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise from_oserror(exc, "rmdir", dirpath) from None
                busy = (exc, dirpath)
        if busy is None:
            return
        if waited >= attempts_seconds:
            exc, dirpath = busy
            raise from_oserror(exc, "rmdir", dirpath,
                               "processes or sub-cgroups are still inside after killing them; "
                               f"pids: {sorted(pids_in(path))}") from None
        if on_busy is not None:
            on_busy()
        time.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.2)


# --- parsers (pure) -----------------------------------------------------------------------------------

def _number(text: str):
    return MAX if text == MAX else int(text)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """'key value' lines (memory.events, cpu.stat, pids.events, memory.oom_control) -> dict."""
    result = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[0]] = _number(parts[1])
    return result


def parse_nested_keyed(text: str) -> dict[str, dict]:
    """'8:0 rbytes=1 wbytes=2' lines (io.stat, io.max) -> {'8:0': {'rbytes': 1, 'wbytes': 2}}."""
    result: dict[str, dict] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields = {}
        for item in parts[1:]:
            key, sep, value = item.partition("=")
            if sep:
                fields[key] = _number(value)
        result[parts[0]] = fields
    return result


def parse_pressure(text: str) -> dict[str, dict]:
    """PSI ('some avg10=1.50 avg60=0.20 avg300=0.05 total=123456' lines; memory.pressure, cpu.pressure,
    /proc/pressure/*) -> {'some': {'avg10': 1.5, ..., 'total': 123456}}. avgN are percentages of
    wall time in which tasks waited, total is the waited time in microseconds."""
    result: dict[str, dict] = {}
    for line in text.splitlines():
        kind, *items = line.split()
        fields = dict(item.split("=", 1) for item in items)
        result[kind] = {k: int(v) if k == "total" else float(v) for k, v in fields.items()}
    return result


def parse_cpu_max(text: str) -> tuple[int | str, int]:
    """v2 cpu.max 'QUOTA PERIOD' (QUOTA may be 'max') -> (quota, period)."""
    quota, period = text.split()
    return _number(quota), int(period)


def parse_blkio_bytes(text: str) -> dict[str, int]:
    """v1 blkio.throttle.io_service_bytes -> {'Read': total over devices, 'Write': ...}.

    Lines look like '7:0 Read 4096', '7:0 Write 1048576', ..., and a last line 'Total N'.
    """
    totals: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            totals[parts[1]] = totals.get(parts[1], 0) + int(parts[2])
    return totals


def parse_device_values(text: str) -> dict[str, int]:
    """v1 blkio.throttle.{read,write}_bps_device 'MAJ:MIN VALUE' lines -> {'7:0': VALUE}."""
    result = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[0]] = int(parts[1])
    return result


def parse_cpu_list(text: str) -> list[int]:
    """A kernel CPU list ('0-2,4') -> [0, 1, 2, 4]. Raises ValueError on anything else."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"not a CPU list: {text!r}")
        low, high = int(first), int(last) if sep else int(first)
        if high < low:
            raise ValueError(f"not a CPU list: {text!r}")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def format_cpu_list(cpus) -> str:
    """[0, 1, 2, 4] -> '0-2,4' (the kernel's own way of writing it)."""
    cpus = sorted(set(cpus))
    ranges, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            ranges.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(ranges)
