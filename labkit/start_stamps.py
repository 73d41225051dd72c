"""Time stamps of a start, written before exec into a page shared by the starter, its shim and the
container's process (placing, placed, ready; and the pid the host knows it by), and the setup steps
that write them. The starter (`starter`) reads them back into the "started" message.

Also how the process enters its cgroup (arrange_placement), the same for the starter's starts and
for those of the `labkit` command, which forks its one container itself (container.ONE_SHOT).
"""
from __future__ import annotations

import functools
import mmap
import os
import struct
import time

from .errors import LabkitError

# Time stamps written by the shim and by the container's process (into a shared page), in order.
SHARED_STAMPS = ("placing", "placed", "ready", "host_pid")


def new_page() -> mmap.mmap:
    """An anonymous shared page: what the forked children write, the starter reads."""
    return mmap.mmap(-1, 8 * len(SHARED_STAMPS))


class TimedPlacement:
    """The cgroup, with time stamps around the placement (the shim runs it, before exec)."""

    def __init__(self, cgroup, page):
        self.cgroup, self.page = cgroup, page

    def add(self, pid: int) -> None:
        stamp(self.page, "placing")
        self.cgroup.add(pid)
        stamp(self.page, "placed")


def arrange_placement(setup: list, options: dict, kinds: set[str], page) -> None:
    """Choose how the process gets into options["cgroup"] (namespaces.spawn's option), stamping
    "placing" and "placed": on v1 it moves itself, first thing in its setup (`setup` gains the step,
    the option is dropped), still long before exec - writing into 7 hierarchies' files from the
    parent made a `labkit run` 9-12 ms slower. Not with a user namespace (its writes would be checked
    against host-owned files), nor a cgroup namespace (spawn unshares it right after the parent
    placed the process), nor when it joins a container's namespaces (after setns(mnt) the host's
    /sys/fs/cgroup is out of its reach). Otherwise spawn's parent places it, as always."""
    cgroup = options.get("cgroup")
    tasks = getattr(cgroup, "self_join_files", lambda: None)()
    if tasks and not kinds & {"user", "cgroup"} and not options.get("join"):
        setup.insert(0, functools.partial(join_itself, tasks, page))
        options["cgroup"] = None
    elif cgroup is not None:
        options["cgroup"] = TimedPlacement(cgroup, page)


def join_itself(tasks: list[str], page) -> None:
    """A setup step: write "0" (= this thread) into each v1 hierarchy's tasks file."""
    stamp(page, "placing")
    for path in tasks:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as exc:          # the error names the file: the owner sees which hierarchy
            raise OSError(exc.errno, f"cannot join the cgroup ({exc.strerror})", path) from None
    stamp(page, "placed")


def stamp(page, name: str, value: float | None = None) -> None:
    struct.pack_into("d", page, 8 * SHARED_STAMPS.index(name), time.monotonic() if value is None else value)


def read_stamps(page) -> dict:
    values = struct.unpack_from(f"{len(SHARED_STAMPS)}d", page)
    return {name: value for name, value in zip(SHARED_STAMPS, values) if value and name != "host_pid"}


def note_host_pid(page) -> None:
    """Before pivot_root /proc is still the host's: it shows the pid the host knows us by."""
    stamp(page, "host_pid", int(os.readlink("/proc/self")))


# Descriptors a setup step opened for the owner (the master of pid 1's terminal): they travel with
# "created" (SCM_RIGHTS) and close here at exec (O_CLOEXEC).
HANDED_OVER: list[int] = []


def wait_for_start(channel_fd: int, page) -> None:
    """The last step before exec with gate=True: report "created" and wait for "start".

    A SOCK_SEQPACKET socket keeps messages whole with plain write() and read() too.
    (pickle and socket are imported by the starter, whose fork runs this: importing them here costs
    nothing, and spares `labkit run`, which never waits at a gate, their import.)"""
    import pickle
    import socket

    host_pid = int(struct.unpack_from("d", page, 8 * SHARED_STAMPS.index("host_pid"))[0])
    message = pickle.dumps(("created", host_pid, read_stamps(page)))
    if HANDED_OVER:
        with socket.socket(fileno=os.dup(channel_fd)) as channel:
            socket.send_fds(channel, [message], HANDED_OVER)
    else:
        os.write(channel_fd, message)
    if os.read(channel_fd, 4096) != pickle.dumps(("start",)):
        raise LabkitError("deleted before it was started")
