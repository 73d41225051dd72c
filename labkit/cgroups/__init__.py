"""cgroups: the "resource usage limits" half of a container.

    from labkit.cgroups import Cgroup

    with Cgroup.create(memory="64M", cpu=0.5, pids=20) as cg:   # a directory under /sys/fs/cgroup
        cg.add(pid)                     # write the pid into cgroup.procs: the process is inside
        cg.set(cpu=0.2)                 # change a limit while it runs
        cg.stats()["oom_kills"]         # read what the kernel counted
    # leaving the block kills whatever is still inside and removes the directories

A cgroup is a directory in a special filesystem; limits are numbers written into its files. There are
two versions of that filesystem, and this package has one backend for each, chosen once from what the
host has - the way psutil picks its Linux module at import and runc's manager.New picks fs or fs2:

    v1 (v1.py)  one hierarchy per controller: /sys/fs/cgroup/memory/labkit-x, /sys/fs/cgroup/cpu/labkit-x ...
    v2 (v2.py)  one unified hierarchy:        /sys/fs/cgroup/labkit-x/{memory.max, cpu.max, ...}

A "hybrid" host mounts both, with the controllers on v1 and an (almost) empty v2 at
/sys/fs/cgroup/unified; labkit then uses v1, because that is where the controllers are.

labkit's cgroups live directly under the hierarchy root as labkit-<name>, or under the subtree named
by LABKIT_CGROUP_PARENT (a path relative to the root, e.g. one systemd delegated to labkit; it must
exist already, and if its own name starts with labkit- its maker must claim it, or a sweep in another
process will take it for a leftover). Limits
are parsed and validated in limits.py before anything is created: a bad one raises InvalidValue and
leaves the machine untouched.
"""
from __future__ import annotations

import functools
import os
import time

from .. import cleanup, host
from ..errors import Conflict, InvalidValue, LabkitError, NotFound, Unsupported
from ..interrupts import hold_interrupts
from . import limits as _limits
from .base import STAT_KEYS, BaseCgroup, parent_from_env
from .files import MAX
from .limits import Limits, parse as parse_limits

__all__ = ["Cgroup", "backend", "backend_name", "available_controllers", "find_leftovers",
           "remove_leftover", "parse_limits", "Limits", "MAX", "STAT_KEYS"]

KIND = "cgroup"       # the cleanup registry's kind for our objects


@functools.cache
def backend() -> type[BaseCgroup]:
    """The backend class for this host, decided once: v2 on a pure unified host, v1 otherwise."""
    try:
        mode = host.cgroup_mode()
    except OSError as exc:
        raise Unsupported(f"no cgroup filesystem at {host.CGROUP_ROOT} ({exc.strerror}): "
                          "this machine cannot limit resources") from None
    if mode == "v2":
        from .v2 import V2Cgroup
        return V2Cgroup
    from .v1 import V1Cgroup
    return V1Cgroup


def backend_name() -> str:
    """'v1' or 'v2': which cgroup filesystem labkit writes to on this host."""
    return backend().version


def available_controllers() -> list[str]:
    """The controllers labkit can use here (v1: mounted hierarchies; v2: what the parent offers)."""
    return backend().available_controllers()


def _relpath(name: str) -> str:
    parent = parent_from_env()
    return f"{parent}/{name}" if parent else name


class Cgroup:
    """One labkit cgroup, on whichever backend this host has. Create it with `Cgroup.create`."""

    def __init__(self, name: str, impl: BaseCgroup, owned: bool = False):
        self._name, self._impl, self._owned = name, impl, owned

    # -- making and finding ------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str | None = None, *, memory=None, cpu=None, pids=None, cpuset=None, io=None,
               cpu_weight=None, swap=None) -> "Cgroup":
        """Make a new cgroup with these limits (see limits.py for the accepted forms).

        Everything is validated first: an invalid name or limit raises InvalidValue and nothing is
        created or written. Used as a context manager, it is deleted (processes killed) on exit.
        """
        full = cleanup.checked_name(name) if name is not None else cleanup.unique_name("cg")
        wanted = _limits.parse(dict(memory=memory, cpu=cpu, pids=pids, cpuset=cpuset, io=io,
                                    cpu_weight=cpu_weight, swap=swap))
        relpath = _relpath(full)
        host.require_lab_host("create a cgroup")
        impl = backend()(relpath)
        impl.check_supported(wanted)
        if impl.exists():
            raise Conflict(f"cgroup {full} exists already ({', '.join(impl.dirs())})")
        cleanup.claim(KIND, full)          # exclusive: Conflict while another live process holds it
        try:
            # A Ctrl-C is held until the cgroup is whole (unheld, one right after a mkdir left that
            # directory unrecorded, so nothing took it down), then undone like any failure below.
            with hold_interrupts():
                impl.create(wanted)
        except BaseException:
            # half-made (an error, a lost race for the name, Ctrl-C mid-way): take down what THIS
            # call made - never a directory that was there before, the winner's or a leftover
            try:
                impl.undo_create()
            finally:
                cleanup.release(KIND, full)
            raise
        return cls(full, impl, owned=True)

    @classmethod
    def open(cls, name: str) -> "Cgroup":
        """A handle on an existing labkit cgroup (leaving a `with` block does not delete it)."""
        full = cleanup.checked_name(name)
        impl = backend()(_relpath(full))
        if not impl.exists():
            raise NotFound(f"cgroup {full} does not exist (looked in {', '.join(impl.dirs())})")
        return cls(full, impl)

    # -- what it is --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def relpath(self) -> str:
        """Path relative to the hierarchy root, as /proc/PID/cgroup shows it (without the leading /)."""
        return self._impl.relpath

    @property
    def version(self) -> str:
        return self._impl.version

    def path(self, controller: str = "memory") -> str:
        """The cgroup's directory for `controller` (v1: its own hierarchy; v2: the one directory).
        v1 and v2 names both work: 'io' and 'blkio', 'cpu' and 'cpuacct'."""
        return self._impl.path(controller)

    def exists(self) -> bool:
        return self._impl.exists()

    def __repr__(self) -> str:
        return f"<Cgroup {self._name} {self.version} {'/'.join(['', self.relpath])}>"

    # -- using it ----------------------------------------------------------------------------------

    def add(self, pid: int) -> None:
        """Move process `pid` into this cgroup (write it to cgroup.procs in every hierarchy).

        Its future children are born inside. To start a program inside, add its pid *before* it
        execs (labkit.namespaces.spawn does that), otherwise it runs unlimited for a moment."""
        self._impl.add(pid)

    def self_join_files(self) -> list[str] | None:
        """v1: the `tasks` file of each hierarchy, into which a single-threaded process writes "0"
        to move *itself* here (v2: None, it has no such shortcut).

        Why bother: moving another process by pid (what add() does) takes the kernel's global
        threadgroup lock for writing, which waits for an RCU grace period - several milliseconds,
        the dearest step of a container start on v1. A thread moving itself needs no such lock."""
        if self.version != "v1":
            return None
        return [os.path.join(d, "tasks") for d in self._impl.dirs()]

    def set(self, **limits) -> None:
        """Change limits while processes run, e.g. cg.set(cpu=0.2) or cg.set(memory="max").

        All values are validated before the first write."""
        current = self._impl.limits()
        wanted = _limits.parse(limits, current=current)
        self._impl.check_supported(wanted)
        self._impl.apply(wanted)

    def limits(self) -> dict:
        """Current limits read back from the kernel's files ('max' = no limit)."""
        return self._impl.limits()

    def stats(self) -> dict:
        """Counters: memory_current, memory_peak, oom_kills, cpu_usage_usec, throttled_periods,
        throttled_usec, nr_periods, pids_current, pids_events_max (forks refused), io_read_bytes,
        io_write_bytes. None where this host lacks the controller."""
        return self._impl.stats()

    def procs(self) -> list[int]:
        """Pids inside this cgroup and its sub-cgroups."""
        return self._impl.procs()

    def wait_for_command(self, name: str, timeout: float = 10.0) -> int:
        """Wait until a process whose command name (/proc/PID/comm) is `name` is inside this cgroup,
        and return its pid. Members come and go while we look: one that exits between reading
        cgroup.procs and reading its name is simply not it."""
        deadline = time.monotonic() + timeout
        while True:
            for pid in self.procs():
                try:
                    with open(f"/proc/{pid}/comm") as comm:
                        if comm.read().strip() == name:
                            return pid
                except OSError:
                    continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"no process named {name!r} in cgroup {self.name} after {timeout:g} s")
            time.sleep(0.01)

    def oom_kills(self) -> int | None:
        """How many processes the OOM killer killed in here."""
        return self._impl.oom_kills()

    def kill(self) -> None:
        """SIGKILL everything inside (and in sub-cgroups) and wait until it is gone."""
        self._impl.kill()

    def delete(self) -> None:
        """Kill everything inside, then remove the directories (sub-cgroups first, retry on EBUSY)."""
        if self._impl.exists():
            self._impl.kill()
            self._impl.remove()
        cleanup.release(KIND, self._name)

    def __enter__(self) -> "Cgroup":
        return self

    def __exit__(self, *exc) -> None:
        if self._owned:
            self.delete()


# --- cleanup hooks (labkit.cleanup.SWEEP_MODULES) ---------------------------------------------------

def find_leftovers():
    """Every labkit-* cgroup that exists now, found by walking the hierarchies (not bookkeeping)."""
    try:
        impl = backend()
        parent = parent_from_env()
        relpaths = impl.find_labkit(keep=parent)
    except (OSError, LabkitError):
        return                     # no cgroup filesystem here (a build container): nothing to find
    for relpath in relpaths:
        name = os.path.basename(relpath)
        yield cleanup.leftover(KIND, name, where=_where(impl, relpath), relpath=relpath)


def _where(impl: type[BaseCgroup], relpath: str) -> str:
    if impl.version == "v1":
        return f"{impl.DEFAULT_ROOT}/*/{relpath}"
    return f"{impl.DEFAULT_ROOT}/{relpath}"


def remove_leftover(item) -> None:
    """Kill the processes in a leftover cgroup and remove it."""
    if item.kind != KIND or not item.name.startswith(cleanup.PREFIX):
        return
    relpath = item.extra.get("relpath") or _relpath(item.name)
    if os.path.basename(relpath) != item.name:
        raise InvalidValue("cgroup leftover", relpath, f"a path ending in {item.name}")
    Cgroup(item.name, backend()(relpath)).delete()
