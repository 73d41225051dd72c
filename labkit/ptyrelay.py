"""A container's terminal on ours, as `runc run` gives it for a bundle whose process.terminal is true.

The container's pid 1 gets a pseudo-terminal of its own devpts (container_steps.open_terminal opens
it, and its session's controlling terminal is that slave); labkit keeps the master. `labkit run
--bundle` then sits between our terminal and that master:

    our keyboard -> stdin  --copy-->  master  ==pty==>  slave: the container's stdin
    our screen   <- stdout <--copy--  master  <==pty==  slave: its stdout and stderr

Our own terminal goes raw meanwhile (no echo, no line editing, Ctrl-C is a byte): the container's
terminal does all of that, so a shell inside behaves as on a console, and Ctrl-C reaches the
program in the container through its terminal, not labkit. The window size is the bundle's
process.consoleSize, or ours, followed on SIGWINCH.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import tty


def set_size(master: int, rows: int, columns: int) -> None:
    """Set the pty's window size (TIOCSWINSZ): what `stty size` shows inside."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def size_of(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on `fd`, or None when it is not a terminal."""
    if not os.isatty(fd):
        return None
    rows, columns, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, columns


@contextlib.contextmanager
def ours_raw(master: int, stdin: int = 0, stdout: int = 1):
    """Our terminal raw, and the container's following our window size, for the block's length;
    everything as it was afterwards (without a terminal on stdin/stdout: nothing to do)."""
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    follow = size_of(stdout) is not None
    previous = None
    if follow:
        previous = signal.signal(signal.SIGWINCH, lambda *_: set_size(master, *size_of(stdout)))
    try:
        if saved is not None:
            tty.setraw(stdin)
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if follow:
            signal.signal(signal.SIGWINCH, previous)


def relay(master: int, stdin: int = 0, stdout: int = 1) -> None:
    """Copy stdin to the master and the master to stdout until the container's side is closed
    for good (the last process holding the slave has exited: reading the master fails with EIO,
    once what they wrote has been read). When our input ends (a pipe, /dev/null), the container's
    terminal gets its end-of-file character (^D), as util-linux's script(1) sends it: a shell
    reading a script from the pipe then ends with it."""
    poller = select.poll()
    poller.register(master, select.POLLIN)
    poller.register(stdin, select.POLLIN)
    while True:
        for fd, event in poller.poll():
            if event & select.POLLNVAL:     # no stdin at all (closed): nothing to copy from it
                poller.unregister(fd)
            elif fd == master:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        return
                    raise
                if not data:
                    return
                _write_all(stdout, data)
            else:
                data = os.read(stdin, 65536)
                if data:
                    _write_all(master, data)
                else:
                    poller.unregister(stdin)
                    _write_all(master, termios.tcgetattr(master)[6][termios.VEOF])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
