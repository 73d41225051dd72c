"""Network namespaces labkit may touch: named lab ones in /run/netns, a process's, the host's (read-only)."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import cleanup, host
from ..errors import InvalidValue, LabkitError, NotFound, Unsupported, from_oserror
from ..interrupts import hold_interrupts, holding
from .netlink import delete_link, link_kind, off_loop, rtnl


NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Namespace:
    """A network namespace labkit may touch: a named lab netns, a process's netns, or the host (read-only)."""

    label: str                      # what drawings and tables show
    path: str | None                # /run/netns/NAME or /proc/PID/ns/net; None = the host (this process's)
    name: str | None = None         # labkit-... when it lives in /run/netns
    pid: int | None = None

    @property
    def is_host(self) -> bool:
        return self.path is None

    def inode(self) -> int:
        return os.stat(self.path or "/proc/self/ns/net").st_ino

    def __str__(self) -> str:
        return self.label


HOST = Namespace("host", None)


def host_inodes() -> set[int]:
    inodes = {os.stat("/proc/self/ns/net").st_ino}
    try:
        inodes.add(os.stat("/proc/1/ns/net").st_ino)
    except OSError:
        pass
    return inodes


def namespace_of(pid, label: str | None = None) -> Namespace:
    """The network namespace of process `pid` (an int or anything with `.pid`, e.g. a labkit Process)."""
    pid = getattr(pid, "pid", pid)
    if not isinstance(pid, int) or pid <= 0:
        raise InvalidValue("pid", pid, "a positive process id, or an object with .pid")
    path = f"/proc/{pid}/ns/net"
    try:
        inode = os.stat(path).st_ino
    except OSError as exc:
        raise from_oserror(exc, "open", path) from None
    if inode in host_inodes():
        raise InvalidValue("pid", pid, "a process in its own network namespace (this one shares the host's; "
                                       "spawn it with the 'net' namespace)")
    return Namespace(label or f"pid {pid}", path, pid=pid)


def named(name: str) -> Namespace:
    """An existing lab namespace by name: 'labkit-ns-1a2b3c' (or 'ns-1a2b3c')."""
    name = cleanup.checked_name(name)
    path = NETNS_DIR / name
    if not path.exists():
        raise NotFound(f"network namespace {name}: not in {NETNS_DIR}")
    return Namespace(name, str(path), name=name)


def as_namespace(member) -> Namespace:
    """Accept a Namespace, a pid, an object with .pid, or a lab namespace name."""
    if isinstance(member, Namespace):
        return member
    if isinstance(member, str):
        return named(member)
    return namespace_of(member)


@off_loop
def create_namespace(hint: str = "ns", label: str | None = None) -> Namespace:
    """A new, empty named network namespace (like `ip netns add`): /run/netns/labkit-<hint>-XXXXXX.

    pyroute2 forks a child that unshare(CLONE_NEWNET)s and bind-mounts its /proc/self/ns/net onto the
    name, so the namespace outlives the child. Inside there is nothing but a loopback that is down.
    """
    host.require_lab_host("create a network namespace")
    from pyroute2 import netns

    name = cleanup.unique_name(hint)
    try:
        with hold_interrupts():               # an interrupt waits until the child has finished ...
            cleanup.claim("netns", name)
            netns.create(name)
    except BaseException:
        remove_named(name)                    # ... so that nothing half-made survives it
        raise
    return Namespace(label or name, str(NETNS_DIR / name), name=name)


def remove_named(name: str) -> None:
    from pyroute2 import netns

    path = NETNS_DIR / name
    if path.exists():
        try:
            netns.remove(name)          # umount2(MNT_DETACH) + unlink, as `ip netns del` does
        except FileNotFoundError:
            pass
    cleanup.release("netns", name)


@off_loop
@holding
def remove_namespace(ns: Namespace) -> None:
    """Remove a named lab namespace. Its veths are deleted first, so their peers vanish now, not later."""
    if not ns.name or not ns.name.startswith(cleanup.PREFIX):
        raise InvalidValue("namespace", ns.label, "a named labkit- namespace (process namespaces die with the process)")
    try:
        with rtnl(ns) as ipr:
            for link in ipr.get_links():
                if link_kind(link) == "veth":
                    delete_link(ipr, link["index"])
    except Exception:                    # noqa: BLE001 - already gone (or going): nothing inside to delete
        pass
    remove_named(ns.name)


@off_loop
def lab_namespaces() -> list[Namespace]:
    """Every named lab namespace on the machine, from /run/netns (the kernel's bind mounts), not bookkeeping."""
    if not NETNS_DIR.is_dir():
        return []
    return [Namespace(p.name, str(p), name=p.name) for p in sorted(NETNS_DIR.iterdir())
            if p.name.startswith(cleanup.PREFIX)]


def own_lab_namespaces() -> list[Namespace]:
    """Named lab namespaces whose owner record says this process made them (read from /run/netns)."""
    return [ns for ns in lab_namespaces() if cleanup.owner("netns", ns.name)[0] == os.getpid()]


def in_namespace(ns: Namespace, argv: list[str], check: bool = True) -> str:
    """Run a command inside a lab namespace (`nsenter --net=PATH ARGV`), never the host's; its stdout."""
    if ns.is_host:
        raise InvalidValue("namespace", "host", "a lab namespace: labkit does not run commands in the host namespace")
    missing = [tool for tool in ("nsenter", argv[0]) if shutil.which(tool) is None]
    if missing:
        raise Unsupported(f"{', '.join(missing)} missing: install it (vagrant/packages.txt lists the lab's tools)")
    done = subprocess.run(["nsenter", f"--net={ns.path}", *argv], capture_output=True, text=True)
    if check and done.returncode:
        raise LabkitError(f"{' '.join(argv)} in {ns.label}: {done.stderr.strip() or done.returncode}")
    return done.stdout
