"""The watchdog: when a process that created lab objects dies without cleaning up, clean up after it.

A notebook kernel can be killed outright (SIGKILL, "Restart kernel", the OOM killer). Its context
managers never run, so its containers would keep running and its cgroups, mounts and network
namespaces would stay. The first time a process claims a kernel object (cleanup.claim), labkit starts
one small watchdog for it (cleanup.ensure_watchdog): a separate session (so the signal that kills the kernel does not reach it) that
first sweeps what earlier dead processes left (so a restarted kernel starts from a clean machine),
then waits on a pidfd - the kernel tells it the moment its owner dies - and sweeps exactly the
objects that owner had claimed. Should a watchdog itself be killed, the next labkit process's
watchdog sweeps its owner's leftovers at its start, so nothing is left either way.

    python -S -m labkit.watchdog --owner PID      (cleanup.ensure_watchdog: under nice(1), labkit on
                                                  PYTHONPATH)

A small single-threaded owner (the `labkit` command, a script) does not pay for a fresh interpreter:
its watchdog is a fork of it that runs this program (cleanup._fork_watchdog). Either way `ps` shows
the process as labkit-watchdog.

It starts small: until its owner has exited, or SWEEP_DELAY has passed, it imports nothing of labkit
and not even site-packages (-S), so the CPU its start takes from the owner it guards is Python's own
start alone - a `labkit run` is over in about the time a full start with the sweep's imports takes.
"""
from __future__ import annotations

import os
import select
import sys
import time

SWEEP_DELAY = 2.0      # seconds the first sweep waits for a short-lived owner to finish
NAME = "labkit-watchdog"   # what ps shows: every watchdog names itself so (the end of this file)


def _wait_for(owner: int, timeout: float | None = None) -> bool:
    """True once `owner` has exited (at once if it is gone); False if `timeout` passed first."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()              # a pidfd is readable exactly when its process exited
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000))
    finally:
        os.close(pidfd)


def watch(owner: int) -> int:
    """Block until `owner` exits, then sweep what it left; return how many objects were removed."""
    from . import cleanup

    _wait_for(owner)
    errors: list[str] = []
    removed = cleanup.sweep(owner_pid=owner, errors=errors)
    _journal(f"owner {owner} died", removed, errors)
    return len(removed)


def _journal(why: str, removed, errors: list[str]) -> None:
    """A line per object removed and per failure (in cleanup.WATCHDOG_JOURNAL), so that a cleanup
    path that failed is noticed, not silently mended."""
    from . import cleanup

    if removed or errors:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(cleanup.WATCHDOG_JOURNAL, "a") as journal:
            for item in removed:
                journal.write(f"{stamp} {why}; removed {item.kind} {item.name} {item.where}\n")
            for error in errors:
                journal.write(f"{stamp} {why}; FAILED {error}\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--owner" or not args[1].isdigit():
        sys.exit("usage: python -m labkit.watchdog --owner PID")
    owner = int(args[1])
    # Housekeeping, not the work itself: the sweep of what dead owners left (it imports every sweep
    # module, pyroute2 included) waits until the owner is done or has been running for SWEEP_DELAY s
    # - so a short `labkit run` does not share its 2 CPUs with it.
    _wait_for(owner, SWEEP_DELAY)
    if sys.flags.no_site:       # started with -S: the sweep needs the venv's packages from here on
        import site
        site.main()
    from . import cleanup

    errors: list[str] = []
    # leftovers of owners that died before we started: a failure here must not cost the owner its
    # watchdog (errors are collected, not raised) - and is journaled, not dropped
    _journal(f"start-up sweep of the watchdog for {owner}", cleanup.sweep(errors=errors), errors)
    watch(owner)
    return 0


def running() -> dict[int, tuple[int, float]]:
    """The watchdogs alive now, {pid: (parent pid, start time in seconds since boot)}: named NAME,
    or exec'd and still starting (`labkit.watchdog` on the command line of `nice` or `python`
    before it names itself). While its owner lives, the parent is the owner."""
    found, ticks = {}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                head, _, tail = f.read().rpartition(b")")     # the name in (...) may hold spaces
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        fields = tail.split()
        named = head.partition(b"(")[2] == NAME.encode() or b"labkit.watchdog" in cmdline
        if named and fields[0] not in (b"Z", b"X"):
            found[int(entry)] = (int(fields[1]), int(fields[19]) / ticks)
    return found


if __name__ == "__main__":
    with open("/proc/self/comm", "w") as comm:     # the name ps and top show (forked: its owner's)
        comm.write(NAME)
    sys.exit(main())
