"""Running netlink requests safely: off a notebook's event loop (Ctrl-C holding: labkit.interrupts).

pyroute2 0.9's synchronous `IPRoute` refuses to run inside a running asyncio event loop (a notebook
cell). Every public function of labkit.net is wrapped by `off_loop`, which runs it in a short-lived
worker thread when the caller's thread has a running loop. The worker never changes its namespace:
pyroute2 opens a netlink socket inside a namespace by forking a child that setns-es and hands the
socket back, so neither the notebook kernel nor any of its threads ever leaves the host namespace.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import Conflict, KernelError, LabkitError, NotFound, from_oserror


def off_loop(fn):
    """Run `fn` in a worker thread if the calling thread is running an asyncio loop.

    A Ctrl-C (KeyboardInterrupt) that arrives while waiting lets the worker finish its step first,
    so the caller's cleanup sees the kernel in a settled state rather than racing a half-made link.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labkit-net") as pool:
            future = pool.submit(fn, *args, **kwargs)
            try:
                return future.result()
            except BaseException:
                concurrent.futures.wait([future])
                raise
    return wrapper


@contextmanager
def rtnl(ns) -> Iterator:
    """A netlink (rtnetlink) socket inside `ns`; flags=0 so a missing namespace is an error, not created."""
    from pyroute2 import IPRoute

    try:
        ipr = IPRoute() if ns.is_host else IPRoute(netns=ns.path, flags=0)
    except OSError as exc:
        raise from_oserror(exc, "open netlink in", ns.label) from None
    try:
        yield ipr
    finally:
        ipr.close()


def link_kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def link_index(ipr, ifname: str, ns_label: str = "") -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NotFound(f"interface {ifname} in namespace {ns_label}")
    return found[0]


def delete_link(ipr, index: int) -> None:
    from pyroute2 import NetlinkError

    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise


def netlink_error(exc, operation: str, target: str) -> LabkitError:
    code = getattr(exc, "code", None) or errno.EIO
    if code == errno.EEXIST:
        return Conflict(f"{operation} {target}: already exists")
    return KernelError(operation, target, code)


def wait_until(condition, timeout: float = 5.0, what: str = "") -> None:
    """Poll until condition() is true: the kernel tears some things down asynchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise KernelError("wait for", what, errno.ETIMEDOUT)
        time.sleep(0.02)
