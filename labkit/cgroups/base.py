"""What both backends share: the interface, finding processes, killing them safely, removing directories.

A backend object stands for ONE cgroup, named by its path relative to the hierarchy root
(`relpath`, e.g. "labkit-cg-1a2b3c" or "lab.slice/labkit-cg-1a2b3c"). On v1 that path exists once per
controller hierarchy (/sys/fs/cgroup/memory/<relpath>, /sys/fs/cgroup/cpu/<relpath>, ...); on v2 once
(/sys/fs/cgroup/<relpath>). `dirs()` lists them; everything here works over that list, so the v1 and v2
modules only say which files hold which numbers.
"""
from __future__ import annotations

import abc
import errno
import os
import signal
import time

from ..errors import Conflict, InvalidValue, Unsupported
from . import files
from .limits import Limits

STAT_KEYS = ("memory_current", "memory_peak", "oom_kills", "cpu_usage_usec", "throttled_periods",
             "throttled_usec", "nr_periods", "pids_current", "pids_events_max", "io_read_bytes",
             "io_write_bytes")

# Which controller each limit needs, in v2 names (v1 maps io -> blkio).
LIMIT_CONTROLLER = {"memory": "memory", "swap": "memory", "cpu": "cpu", "cpu_weight": "cpu",
                    "pids": "pids", "cpuset": "cpuset", "io": "io"}

KILL_TIMEOUT = 5.0
PARENT_ENV = "LABKIT_CGROUP_PARENT"


def parent_from_env() -> str:
    """Where labkit's cgroups live, relative to the hierarchy root: "" (the root itself) unless
    LABKIT_CGROUP_PARENT names a subtree - e.g. one systemd delegated to us (Delegate=yes)."""
    parent = os.environ.get(PARENT_ENV, "").strip().strip("/")
    if ".." in parent.split("/"):
        raise InvalidValue(PARENT_ENV, parent, "a path relative to the cgroup root without '..'")
    return parent


def _own_cgroup_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/cgroup")
    except OSError:
        return ""


def holds_another_namespace(cgroup_dir: str, ours: str | None = None) -> bool:
    """Whether a process in `cgroup_dir` lives in another cgroup namespace than ours: the cgroup of
    a container with its own (docker --cgroupns=private, a classroom learner). What is below it is
    that container's; its labkit- cgroups belong to the labkit inside it, never to our sweep."""
    ours = _own_cgroup_namespace() if ours is None else ours
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as f:
            pids = f.read().split()
    except OSError:
        return False
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/cgroup") != ours:
                return True
        except OSError:
            continue                         # gone meanwhile, or another pid namespace's number
    return False


def find_labkit_dirs(mountpoint: str, keep: str = "", foreign=holds_another_namespace) -> set[str]:
    """Paths (relative to `mountpoint`) of the outermost labkit-* cgroups in one hierarchy.

    `keep` is a labkit parent to leave out (LABKIT_CGROUP_PARENT); inside a found cgroup we do not
    look further: its sub-cgroups go with it. Nor below a cgroup that `foreign` says belongs to
    another cgroup namespace (another learner's container on the same kernel).
    """
    found: set[str] = set()
    ours = _own_cgroup_namespace()
    for dirpath, dirnames, _ in os.walk(mountpoint):
        rel = os.path.relpath(dirpath, mountpoint)
        for name in list(dirnames):
            child = name if rel == "." else f"{rel}/{name}"
            if name.startswith("labkit-") and child != keep.strip("/"):
                found.add(child)
                dirnames.remove(name)
            elif foreign(os.path.join(dirpath, name), ours):
                dirnames.remove(name)
    return found


class BaseCgroup(abc.ABC):
    """The interface both backends implement: a backend that leaves out an abstract method cannot
    be instantiated (the language checks it; the contract test also compares signatures)."""

    version = ""                 # "v1" or "v2"
    DEFAULT_ROOT = "/sys/fs/cgroup"

    def __init__(self, relpath: str, root: str | None = None):
        self.relpath = relpath.strip("/")
        self.made: list[str] = []     # directories create() made (not found): all a rollback may remove
        self.root = root or self.DEFAULT_ROOT

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.relpath!r} under {self.root}>"

    # -- implemented by each backend ---------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def available_controllers(cls, root: str | None = None) -> list[str]:
        """Controllers a cgroup directly under `root` can use."""

    @classmethod
    @abc.abstractmethod
    def find_labkit(cls, root: str | None = None, keep: str = "") -> list[str]:
        """Relative paths of every labkit-* cgroup (not descending into them); `keep` is a parent to
        look inside of even if its name starts with labkit-."""

    @abc.abstractmethod
    def dirs(self) -> list[str]:
        """Directories of this cgroup, one per hierarchy it lives in."""

    @abc.abstractmethod
    def path(self, controller: str) -> str:
        """The directory of this cgroup in `controller`'s hierarchy."""

    @abc.abstractmethod
    def create(self, limits: Limits) -> None:
        """Make the cgroup's directories and write `limits`."""

    @abc.abstractmethod
    def apply(self, limits: Limits) -> None:
        """Write `limits` to the cgroup's files."""

    @abc.abstractmethod
    def add(self, pid: int) -> None:
        """Move process `pid` into this cgroup."""

    @abc.abstractmethod
    def limits(self) -> dict:
        """The limits as the cgroup's files say now."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """Usage counters, one value per STAT_KEYS entry (None where the host has no such file)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill every process in the cgroup (and below it), safely against forks."""

    # -- shared ------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    def procs(self) -> list[int]:
        """Every pid in this cgroup or below it, in any of its hierarchies."""
        found: set[int] = set()
        for d in self.dirs():
            found |= files.pids_in(d)
        return sorted(found)

    def oom_kills(self) -> int | None:
        return self.stats()["oom_kills"]

    def check_supported(self, limits: Limits) -> None:
        """Unsupported (before anything is created) when a limit needs a controller this host lacks."""
        have = set(self._available())
        for name in limits.given():
            controller = LIMIT_CONTROLLER[name]
            if self._controller_name(controller) not in have:
                raise Unsupported(f"the {name} limit needs the {self._controller_name(controller)} cgroup "
                                  f"controller, which this host does not offer here "
                                  f"(available: {', '.join(sorted(have)) or 'none'})")

    def _controller_name(self, controller: str) -> str:
        return controller

    def _available(self) -> list[str]:
        """Controllers this cgroup can use (v2: what its parent offers)."""
        return self.available_controllers(self.root)

    def undo_create(self) -> None:
        """Take down what a failed create() made - only that: a directory that was there before (the
        winner of a race for the name, a leftover) is someone else's."""
        for directory in reversed(self.made):
            files.rmdir_tree(directory)     # nothing was put inside yet: no process to kill
        self.made.clear()

    def remove(self) -> None:
        """rmdir every directory of this cgroup, sub-cgroups first, retrying on EBUSY (kills again)."""
        for d in self.dirs():
            files.rmdir_tree(d, on_busy=self.signal_all)

    # -- killing -----------------------------------------------------------------------------------

    def _contains(self, pid: int) -> bool:
        """Whether `pid` is (still) in this cgroup or below it, according to /proc/PID/cgroup."""
        mine = "/" + self.relpath
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        for line in lines:
            path = line.split(":", 2)[2]
            if path == mine or path.startswith(mine + "/"):
                return True
        return False

    def _signal(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal `pid` only if it is in this cgroup - checked through a pidfd so that a pid reused by an
        unrelated process between reading cgroup.procs and the kill can never be hit."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            if self._contains(pid):           # old kernel without pidfds: best effort
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            return
        try:
            if self._contains(pid):
                signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    def signal_all(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every process inside (each through a pidfd, checked to be still inside)."""
        for pid in self.procs():
            self._signal(pid, sig)

    def _kill_until_empty(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL whatever is inside until nothing is (a process may fork while we look)."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            pids = self.procs()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise Conflict(f"cgroup {self.relpath}: processes {pids} are still alive {timeout:.0f} s after "
                               "SIGKILL (stuck in uninterruptible sleep, e.g. waiting for IO?)")
            for pid in pids:
                self._signal(pid)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    @staticmethod
    def _check_pid(pid) -> int:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidValue("pid", pid, "a positive integer process id")
        return pid
