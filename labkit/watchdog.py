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
import select
import sys
import time

from . import cleanup

JOURNAL = cleanup.STATE_DIR / "watchdog.log"


def watch(owner: int) -> int:
    """Block until `owner` exits, then sweep what it left; return how many objects were removed."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        pidfd = None  # already gone: sweep right away
    if pidfd is not None:
        select.select([pidfd], [], [])   # readable exactly when the process has exited
        os.close(pidfd)
    errors: list[str] = []
    removed = cleanup.sweep(owner_pid=owner, errors=errors)
    if removed or errors:  # a journal, so that a cleanup path that failed is noticed, not silently mended
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(JOURNAL, "a") as journal:
            for item in removed:
                journal.write(f"{stamp} owner {owner} died; removed {item.kind} {item.name} {item.where}\n")
            for error in errors:
                journal.write(f"{stamp} owner {owner} died; FAILED {error}\n")
    return len(removed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.watchdog")
    parser.add_argument("--owner", type=int, required=True)
    args = parser.parse_args(argv)
    errors: list[str] = []
    cleanup.sweep(errors=errors)   # leftovers of owners that died before we started (a failure
    watch(args.owner)              # there must not cost the owner its watchdog: errors are not raised)
    return 0


if __name__ == "__main__":
    sys.exit(main())
