"""The watchdog: when a process that created lab objects dies without cleaning up, clean up after it.

A notebook kernel can be killed outright (SIGKILL, "Restart kernel", the OOM killer). Its context
managers never run, so its containers would keep running and its cgroups, mounts and network
namespaces would stay. The first time a process claims a kernel object (cleanup.claim), labkit starts
one small watchdog for it (cleanup.ensure_watchdog): a separate session (so the signal that kills the kernel does not reach it) that
first sweeps what earlier dead processes left (so a restarted kernel starts from a clean machine),
then waits on a pidfd - the kernel tells it the moment its owner dies - and sweeps exactly the
objects that owner had claimed. Should a watchdog itself be killed, the next labkit process's
watchdog sweeps its owner's leftovers at its start, so nothing is left either way.

    python -m labkit.watchdog --owner PID
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import cleanup, syscalls

JOURNAL = cleanup.STATE_DIR / "watchdog.log"
SWEEP_DELAY = 2.0      # seconds the first sweep waits for a short-lived owner to finish


def _wait_for(owner: int, timeout: float | None = None) -> bool:
    """True once `owner` has exited (at once if it is gone); False if `timeout` passed first."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        return True
    try:
        return bool(syscalls.readable([pidfd], timeout))   # readable exactly when it exited
    finally:
        os.close(pidfd)


def watch(owner: int) -> int:
    """Block until `owner` exits, then sweep what it left; return how many objects were removed."""
    _wait_for(owner)
    errors: list[str] = []
    removed = cleanup.sweep(owner_pid=owner, errors=errors)
    _journal(f"owner {owner} died", removed, errors)
    return len(removed)


def _journal(why: str, removed, errors: list[str]) -> None:
    """A line per object removed and per failure, so that a cleanup path that failed is noticed,
    not silently mended."""
    if removed or errors:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(JOURNAL, "a") as journal:
            for item in removed:
                journal.write(f"{stamp} {why}; removed {item.kind} {item.name} {item.where}\n")
            for error in errors:
                journal.write(f"{stamp} {why}; FAILED {error}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.watchdog")
    parser.add_argument("--owner", type=int, required=True)
    args = parser.parse_args(argv)
    # Housekeeping, not the work itself: at a low priority, and the sweep of what dead owners left
    # (it imports every sweep module, pyroute2 included) waits until the owner is done or has been
    # running for SWEEP_DELAY s - so a short `labkit run` does not share its 2 CPUs with it.
    os.setpriority(os.PRIO_PROCESS, 0, cleanup.WATCHDOG_NICE)   # already so if ensure_watchdog started us
    _wait_for(args.owner, SWEEP_DELAY)
    errors: list[str] = []
    # leftovers of owners that died before we started: a failure here must not cost the owner its
    # watchdog (errors are collected, not raised) - and is journaled, not dropped
    _journal(f"start-up sweep of the watchdog for {args.owner}", cleanup.sweep(errors=errors), errors)
    watch(args.owner)
    return 0


if __name__ == "__main__":
    sys.exit(main())
