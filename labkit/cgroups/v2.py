"""cgroup v2: one unified hierarchy; every controller's files sit in the same directory.

    /sys/fs/cgroup/labkit-cg-1a2b3c/{cgroup.procs, memory.max, cpu.max, pids.max, io.max, ...}

A controller's files only appear in a cgroup when its *parent* enabled the controller for its
children, by writing "+memory" to the parent's cgroup.subtree_control. labkit enables the controllers
it needs there, and only those that are not enabled yet. It never disables one, not even one it
enabled itself: the parent's subtree_control is shared state (at the root it is the host's), other
cgroups - another notebook's, the init system's - may be using the controller by then, and disabling
it would silently remove their limits. Enabling a controller that was off costs nothing measurable.

Two v2 rules shape the code: a cgroup with controllers enabled for children may hold no processes
itself (the "no internal processes" rule - labkit's cgroups are leaves), and `cgroup.kill` (5.14+)
kills everything inside atomically, so no kill loop is needed when it exists.
"""
from __future__ import annotations

import errno
import os
import time

from ..errors import InvalidValue, NotFound
from . import files
from .base import STAT_KEYS, BaseCgroup, find_labkit_dirs, parent_from_env
from .files import MAX
from .limits import CPU_PERIOD_US, Limits, cpu_quota_us

CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")
# v1 names accepted by path() so that callers can use one name on both backends.
ALIASES = {"blkio": "io", "cpuacct": "cpu", "freezer": "cgroup", "cgroup": "cgroup"}

NO_INTERNAL = ("the parent cgroup has processes of its own, and v2 allows controllers only for the "
               "children of a cgroup without processes (the 'no internal processes' rule): choose an "
               "empty parent with LABKIT_CGROUP_PARENT")
HINTS = {
    "cgroup.subtree_control": {errno.EBUSY: NO_INTERNAL,
                               errno.ENOENT: "the parent's parent has not enabled that controller"},
    "cgroup.procs": {errno.EBUSY: NO_INTERNAL, errno.ESRCH: "no such process",
                     errno.EOPNOTSUPP: "the cgroup is threaded"},
    "cpu.max": {errno.EINVAL: "the quota must be >= 1000 us and the period 1000 us .. 1 s"},
    "memory.max": {errno.EBUSY: "the cgroup uses more memory than that and the kernel could not reclaim enough"},
    "cpuset.cpus": {errno.EINVAL: "CPUs must be online and inside the parent's cpuset"},
    "io.max": {errno.ENODEV: "not a whole disk (the kernel throttles whole devices)"},
}


class V2Cgroup(BaseCgroup):
    version = "v2"

    # -- where ---------------------------------------------------------------------------------------

    @classmethod
    def available_controllers(cls, root: str | None = None) -> list[str]:
        return _controllers_of(os.path.join(root or cls.DEFAULT_ROOT, parent_from_env()))

    def _available(self) -> list[str]:
        return _controllers_of(os.path.dirname(self.dir))

    @classmethod
    def find_labkit(cls, root: str | None = None, keep: str = "") -> list[str]:
        return sorted(find_labkit_dirs(root or cls.DEFAULT_ROOT, keep))

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.relpath)

    def dirs(self) -> list[str]:
        return [self.dir]

    def path(self, controller: str) -> str:
        name = ALIASES.get(controller, controller)
        if name not in CONTROLLERS + ("cgroup",):
            raise InvalidValue("controller", controller,
                               "one of " + ", ".join(CONTROLLERS + tuple(ALIASES)))
        return self.dir

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _write(self, name: str, value) -> None:
        files.write(self._file(name), value, HINTS.get(name))

    # -- lifecycle -----------------------------------------------------------------------------------

    def create(self, limits: Limits) -> None:
        parent = os.path.dirname(self.dir)
        if not os.path.isdir(parent):
            raise NotFound(f"parent cgroup {parent} does not exist (LABKIT_CGROUP_PARENT must name an "
                           "existing cgroup)")
        enable_controllers(parent)
        files.mkdir(self.dir)
        self.made.append(self.dir)
        self.apply(limits)

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", self._check_pid(pid))

    def apply(self, limits: Limits) -> None:
        if limits.cpuset is not None:
            self._write("cpuset.cpus", limits.cpuset)
        if limits.memory is not None:
            self._write("memory.max", limits.memory)
        if limits.swap is not None:
            self._write("memory.swap.max", limits.swap)
        if limits.cpu is not None:
            quota = MAX if limits.cpu == MAX else cpu_quota_us(limits.cpu)
            self._write("cpu.max", f"{quota} {CPU_PERIOD_US}")
        if limits.cpu_weight is not None:
            self._write("cpu.weight", limits.cpu_weight)
        if limits.pids is not None:
            self._write("pids.max", limits.pids)
        for io in limits.io or ():
            rule = io.device
            if io.read_bps is not None:
                rule += f" rbps={io.read_bps}"
            if io.write_bps is not None:
                rule += f" wbps={io.write_bps}"
            self._write("io.max", rule)

    def limits(self) -> dict:
        return limits_from_dir(self.dir)

    def stats(self) -> dict:
        return stats_from_dir(self.dir)

    # -- killing -------------------------------------------------------------------------------------

    def kill(self) -> None:
        """cgroup.kill (kernel 5.14+) SIGKILLs every process in the subtree at once; on older kernels
        freeze (cgroup.freeze, 5.2+), SIGKILL each, thaw. Then wait until nothing is left."""
        self._lift_io_throttle()
        if os.path.exists(self._file("cgroup.kill")):
            if self.procs():
                self._write("cgroup.kill", 1)
        elif os.path.exists(self._file("cgroup.freeze")) and self.procs():
            self._write("cgroup.freeze", 1)
            try:
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline and \
                        files.parse_flat_keyed(files.read(self._file("cgroup.events"))).get("frozen") != 1:
                    time.sleep(0.005)
                self.signal_all()
            finally:
                self._write("cgroup.freeze", 0)
        self._kill_until_empty()

    def _lift_io_throttle(self) -> None:
        """Remove IO limits so queued, throttled IO drains and its (killed) processes can exit."""
        text = files.read_or_none(self._file("io.max"))
        for device in files.parse_nested_keyed(text or ""):
            self._write("io.max", f"{device} rbps=max wbps=max riops=max wiops=max")


def _controllers_of(directory: str) -> list[str]:
    """Controllers `directory` can hand to its children (its cgroup.controllers), that labkit uses."""
    text = files.read_or_none(os.path.join(directory, "cgroup.controllers")) or ""
    return sorted(c for c in text.split() if c in CONTROLLERS)


def enable_controllers(parent: str) -> list[str]:
    """Enable in `parent`'s cgroup.subtree_control the controllers labkit uses that are available
    and not enabled yet; return those it enabled. Never disables anything (see module docstring)."""
    available = _controllers_of(parent)
    control = os.path.join(parent, "cgroup.subtree_control")
    enabled = set((files.read_or_none(control) or "").split())
    done = []
    for controller in available:
        if controller not in enabled:
            files.write(control, f"+{controller}", HINTS["cgroup.subtree_control"])
            done.append(controller)
    return done


# --- reading a cgroup directory (pure over files: the unit tests use fake trees) -----------------------

def _read(directory: str, name: str) -> str | None:
    return files.read_or_none(os.path.join(directory, name))


def _single(text: str | None):
    if text is None:
        return None
    text = text.strip()
    return MAX if text == MAX else int(text)


def limits_from_dir(directory: str) -> dict:
    """Current limits from a v2 cgroup directory; keys only for controllers whose files exist."""
    result: dict = {}
    memory = _read(directory, "memory.max")
    if memory is not None:
        result["memory"] = _single(memory)
        swap = _read(directory, "memory.swap.max")
        if swap is not None:
            result["swap"] = _single(swap)
    cpu_max = _read(directory, "cpu.max")
    if cpu_max is not None:
        quota, period = files.parse_cpu_max(cpu_max)
        result["cpu"] = MAX if quota == MAX else quota / period
    weight = _read(directory, "cpu.weight")
    if weight is not None:
        result["cpu_weight"] = int(weight)
    pids = _read(directory, "pids.max")
    if pids is not None:
        result["pids"] = _single(pids)
    cpus = _read(directory, "cpuset.cpus")
    if cpus is not None:
        # empty means "inherit the parent's": report what the processes actually may use
        result["cpuset"] = cpus.strip() or (_read(directory, "cpuset.cpus.effective") or "").strip()
    io = _read(directory, "io.max")
    if io is not None:
        result["io"] = [{"device": dev, "read_bps": values.get("rbps", MAX), "write_bps": values.get("wbps", MAX)}
                        for dev, values in sorted(files.parse_nested_keyed(io).items())]
    return result


def stats_from_dir(directory: str) -> dict:
    """The common stats dict from a v2 cgroup directory; None where a controller's file is missing."""
    stats = dict.fromkeys(STAT_KEYS)
    stats["memory_current"] = _single(_read(directory, "memory.current"))
    stats["memory_peak"] = _single(_read(directory, "memory.peak"))       # kernel 5.19+
    events = _read(directory, "memory.events")
    if events is not None:
        stats["oom_kills"] = files.parse_flat_keyed(events).get("oom_kill", 0)
    cpu = _read(directory, "cpu.stat")
    if cpu is not None:
        values = files.parse_flat_keyed(cpu)
        stats["cpu_usage_usec"] = values.get("usage_usec")
        stats["nr_periods"] = values.get("nr_periods")          # only with the cpu controller
        stats["throttled_periods"] = values.get("nr_throttled")
        stats["throttled_usec"] = values.get("throttled_usec")
    stats["pids_current"] = _single(_read(directory, "pids.current"))
    pid_events = _read(directory, "pids.events")
    if pid_events is not None:
        stats["pids_events_max"] = files.parse_flat_keyed(pid_events).get("max", 0)
    io = _read(directory, "io.stat")
    if io is not None:
        devices = files.parse_nested_keyed(io).values()
        stats["io_read_bytes"] = sum(d.get("rbytes", 0) for d in devices)
        stats["io_write_bytes"] = sum(d.get("wbytes", 0) for d in devices)
    return stats
