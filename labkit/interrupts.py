"""Holding Ctrl-C while labkit changes the kernel, so that an interrupt never splits a change in two.

Making a kernel object and recording it (pyroute2 creates a netns in a forked child that carries
on even if we are interrupted), or taking a container down (kill, remove the cgroup, unmount,
remove the work dir) are several steps; a KeyboardInterrupt between two of them - a learner
pressing Stop twice, or once at the wrong moment - would leave the rest behind, made but not
recorded. So SIGINT is caught for the length of the block and raised as KeyboardInterrupt after it.

Nested blocks share the outermost hold. Only the main thread receives signals: elsewhere (the
worker thread of labkit.net's off_loop) the block runs as is, and the main thread, which waits
for that worker, raises once the work is done. A SIGINT that is ignored or left to the default
action (not a Python handler) is not turned into a KeyboardInterrupt.
"""
from __future__ import annotations

import functools
import signal
import threading
from contextlib import contextmanager

_held: list | None = None     # SIGINTs caught during the outermost block (main thread only)


@contextmanager
def hold_interrupts():
    """Hold Ctrl-C until the block has finished, then raise KeyboardInterrupt if one came."""
    global _held
    if _held is not None or threading.current_thread() is not threading.main_thread() \
            or not callable(signal.getsignal(signal.SIGINT)):
        yield
        return
    _held = []
    previous = signal.signal(signal.SIGINT, lambda *_: _held.append(1))
    try:
        yield
    finally:
        caught, _held = _held, None
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def holding(method):
    """Decorator form of hold_interrupts, for functions and methods that change the kernel."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with hold_interrupts():
            return method(*args, **kwargs)
    return wrapper
