"""A tiny init for a pid namespace: what `docker run --init` (tini) does, in a dozen lines.

pid 1 of a pid namespace has two jobs nobody else does:

1. Reap orphans. A process whose parent died is re-parented to pid 1 of its namespace; when it
   exits it stays a zombie (state Z in /proc/PID/stat) until pid 1 calls wait(). A program that
   was not written to be an init (sleep, a web server) never does, and zombies pile up.
2. Pass signals on. The kernel delivers to pid 1 only the signals it installed a handler for, so a
   plain `docker stop` (SIGTERM) does nothing to a pid-1 program without a SIGTERM handler.

Usage: ``python -m labkit.pidone COMMAND [ARGS...]`` - runs COMMAND as its child, forwards SIGTERM,
SIGINT, SIGHUP and SIGQUIT to it, reaps every process that ends up as its child, and exits with
COMMAND's status when COMMAND ends.
"""
from __future__ import annotations

import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m labkit.pidone COMMAND [ARGS...]", file=sys.stderr)
        return 2
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"pidone: {argv[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(127)

    def forward(sig, _frame):          # having a handler is what lets the signal reach pid 1 at all
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        pid, status = os.wait()        # any child: our command, or an orphan re-parented to us
        if pid == child:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
