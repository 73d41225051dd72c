"""The watchdog: when a process that created lab objects dies without cleaning up, clean up after it.

A notebook kernel can be killed outright (SIGKILL, "Restart kernel", the OOM killer). Its context
managers never run, so its containers would keep running and its cgroups, mounts and network
namespaces would stay. The first time a process creates kernel objects, labkit starts one small
watchdog for it: a separate session (so the signal that kills the kernel does not reach it) that
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
import subprocess
import sys
import threading
import time

from .cleanup import STATE_DIR

JOURNAL = STATE_DIR / "watchdog.log"

_started_for: int | None = None
_lock = threading.Lock()


def ensure_running() -> None:
    """Start this process's watchdog once (nothing to do if it already has one)."""
    global _started_for
    with _lock:  # the engine creates containers from several threads at once
        if _started_for == os.getpid() or os.environ.get("LABKIT_NO_WATCHDOG") == "1":
            return
        _started_for = os.getpid()
    subprocess.Popen([sys.executable, "-m", "labkit.watchdog", "--owner", str(os.getpid())],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def watch(owner: int) -> int:
    """Block until `owner` exits, then sweep what it left; return how many objects were removed."""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        pidfd = None  # already gone: sweep right away
    if pidfd is not None:
        select.select([pidfd], [], [])   # readable exactly when the process has exited
        os.close(pidfd)
    from . import cleanup

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
    from . import cleanup

    errors: list[str] = []
    cleanup.sweep(errors=errors)   # leftovers of owners that died before we started (a failure
    watch(args.owner)              # there must not cost the owner its watchdog: errors are not raised)
    return 0


if __name__ == "__main__":
    sys.exit(main())
