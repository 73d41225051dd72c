"""Time namespaces: clocks that read differently inside, and the rule about when offsets may be set.

A time namespace (Linux 5.6) holds two offsets, for CLOCK_MONOTONIC and CLOCK_BOOTTIME, so that a
container moved to another machine (CRIU) sees its clocks continue. /proc/uptime reads the boot-time
clock as seen from the *reader's* time namespace.

Two rules the kernel enforces, shown by `late_offset_experiment()`:

- unshare(CLONE_NEWTIME) does not move the caller: it stays in its old time namespace, and only its
  children are born into the new one (/proc/PID/ns/time_for_children shows where they will go).
- the offsets are written to /proc/self/timens_offsets *before* the first process enters; once a
  child lives in the namespace they are frozen, and writing them fails with EACCES.

Run as ``python -m labkit.timens`` the module performs that experiment in the process it starts in,
so call it in a child (`late_offset_experiment` does), never in a notebook kernel.
"""
from __future__ import annotations

import json
import os
import sys

from . import namespaces, syscalls

DAY = 86400


def offsets(pid: int | str = "self") -> dict[str, float]:
    """{clock: seconds} from /proc/PID/timens_offsets (the offsets of pid's time namespace)."""
    result = {}
    with open(f"/proc/{pid}/timens_offsets") as f:
        for line in f:
            clock, secs, nsecs = line.split()
            result[clock] = int(secs) + int(nsecs) / 1e9
    return result


def uptime() -> float:
    """Seconds since boot as *this* process's time namespace reports it (/proc/uptime)."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _experiment(boottime: int) -> dict:
    """Runs in a throwaway child: unshare, write offsets, fork a child, try to write them again."""
    result = {"uptime_before": uptime()}
    syscalls.unshare(syscalls.CLONE_NEWTIME)
    with open("/proc/self/timens_offsets", "w") as f:
        f.write(f"boottime {boottime} 0")
    result["first_write"] = "ok"
    result["uptime_self_after_unshare"] = uptime()     # the caller is not in the new namespace
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                      # born into the new time namespace
        os.write(w, repr(uptime()).encode())
        os._exit(0)
    os.close(w)
    result["uptime_child"] = float(os.read(r, 64))
    os.waitpid(child, 0)
    try:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write(f"boottime {2 * boottime} 0")
        result["second_write"] = "ok"
    except OSError as exc:
        result["second_write"] = f"{os.strerror(exc.errno)} (errno {exc.errno})"
    return result


def late_offset_experiment(boottime: int = DAY) -> dict:
    """Start a fresh Python that performs the experiment; return what it saw.

    Keys: uptime_before, uptime_self_after_unshare (same clock: the caller did not move),
    uptime_child (shifted by `boottime`), first_write ("ok"), second_write (the error text).
    """
    result = namespaces.run([sys.executable, "-m", "labkit.timens", str(int(boottime))], None)
    if result.returncode != 0:
        raise OSError(f"time namespace experiment failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    print(json.dumps(_experiment(int(sys.argv[1]) if len(sys.argv) > 1 else DAY)))
