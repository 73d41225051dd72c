"""When labkit may fork this process to make a helper, instead of starting a fresh interpreter.

Two helpers run beside a process that makes lab objects: its starter (starter.py, which forks the
containers) and its watchdog (watchdog.py, which cleans up if the process is killed). A fresh
`python` takes about 5 ms of CPU to start, and more to import what it needs - a tenth of a whole
`labkit run`, on a machine with 2 CPUs. A fork of this process has Python started and labkit
loaded already, and costs a fraction of a millisecond. It is safe when the process is

- single-threaded: a fork copies only the thread that called it, and a lock another thread held
  (malloc's, the import lock, logging's) would stay locked in the copy for good;
- small: fork copies the page tables, and a notebook kernel's 370 MiB make that slow.

The `labkit` command and a short script are both; a notebook kernel and the engine are neither.
"""
from __future__ import annotations

import os
import signal

FORK_LIMIT = 64 * 2**20       # resident bytes: a process this small forks its helpers


def small_and_single_threaded() -> bool:
    """The kernel's view (/proc/self/status), which also counts threads Python did not start."""
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status["Threads"]) == 1 and int(status["VmRSS"].split()[0]) * 1024 <= FORK_LIMIT


def become_helper(keep_fd: int | None = None) -> int | None:
    """In a forked helper: keep nothing of the owner's but `keep_fd` (returned, moved above 2 if need
    be), with stdin, stdout and stderr on /dev/null - a pipe that the owner's caller reads to its
    end (`labkit run ... | cat`) must not stay open in a helper that outlives the owner - and the
    owner's Python signal handlers gone (they act on the owner's state, not ours)."""
    import fcntl
    if keep_fd is not None and keep_fd < 3:
        keep_fd = fcntl.fcntl(keep_fd, fcntl.F_DUPFD_CLOEXEC, 3)
    if keep_fd is None:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    else:
        os.closerange(3, keep_fd)
        os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C in the owner's terminal is not for us
    os.environ["LABKIT_NO_WATCHDOG"] = "1"     # it owns nothing: the owner's watchdog covers its objects
    return keep_fd
