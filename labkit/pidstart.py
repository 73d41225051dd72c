"""A process's start time, read from /proc/PID/stat: with the pid, the name of one process for good.

A pid is reused once its process is gone; a (pid, start time) pair is not. labkit's owner records
(labkit.cleanup), the dockerd it started and labkit-runtime's containers are all named that way.
Imports only os: labkit-runtime reads it in every verb, and `labkit run` before each claim.
"""
from __future__ import annotations

import os


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (the start time in clock ticks since boot), or None if the process
    is gone. A zombie counts as gone: it has exited, only its parent has not collected its status yet
    (a killed notebook kernel stays a zombie until Jupyter reaps it), and its objects are leftovers."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()     # the name in (...) may hold spaces
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()
