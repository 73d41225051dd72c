"""cgroup v1: one hierarchy per controller, each its own directory tree.

On v1 a "cgroup" is really one directory in *each* controller's hierarchy, all with the same name:

    /sys/fs/cgroup/memory/labkit-cg-1a2b3c/memory.limit_in_bytes
    /sys/fs/cgroup/cpu/labkit-cg-1a2b3c/cpu.cfs_quota_us
    /sys/fs/cgroup/pids/labkit-cg-1a2b3c/pids.max      ...

and a process is in it only once its pid was written to cgroup.procs in every one of them. labkit
joins cpu, cpuacct (CPU time used), memory, pids, freezer (to stop everything before killing it),
blkio and cpuset. cpuset is always joined, with the parent's CPUs and memory nodes copied in (a new
cpuset cgroup starts with none, and attaching a process to it fails with ENOSPC): a cpuset limit can
then be set later while processes run, without moving running processes into a new hierarchy - a
process that forks while being moved could escape.
"""
from __future__ import annotations

import errno
import os
import time

from .. import host
from ..errors import InvalidValue, NotFound, Unsupported
from . import files
from .base import STAT_KEYS, BaseCgroup, find_labkit_dirs
from .files import MAX
from .limits import CPU_PERIOD_US, Limits, cpu_quota_us, shares_to_weight, weight_to_shares

# The controllers labkit puts its processes in, cpuset first (its values must be set before attaching).
JOINED = ("cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "blkio")
V2_NAMES = {"io": "blkio"}      # path("io") works on v1 too, so callers can use one name everywhere

UNLIMITED = 2 ** 62             # v1 reports "no limit" as 9223372036854771712 (PAGE_COUNTER_MAX pages)

HINTS = {
    "cpu.cfs_quota_us": {errno.EINVAL: "the quota must be >= 1000 us and the period 1000 us .. 1 s"},
    "memory.limit_in_bytes": {
        errno.EBUSY: "the cgroup uses more memory than that right now and the kernel could not reclaim "
                     "enough (no swap?)",
        errno.EINVAL: "memory.limit_in_bytes may not exceed memory.memsw.limit_in_bytes"},
    "memory.memsw.limit_in_bytes": {
        errno.EINVAL: "memory.memsw.limit_in_bytes (memory + swap) may not be below memory.limit_in_bytes"},
    "cgroup.procs": {errno.ENOSPC: "the cpuset cgroup has no cpuset.cpus or cpuset.mems set",
                     errno.ESRCH: "no such process"},
    "cpuset.cpus": {errno.EINVAL: "CPUs must be online and inside the parent's cpuset"},
    "blkio.throttle.read_bps_device": {errno.ENODEV: "not a whole disk (the kernel throttles whole devices)"},
    "blkio.throttle.write_bps_device": {errno.ENODEV: "not a whole disk (the kernel throttles whole devices)"},
}


def _mounts(root: str) -> dict[str, str]:
    """controller -> mountpoint of its v1 hierarchy.

    For the real root the mounts are read from /proc/self/mountinfo (cpu and cpuacct are often
    co-mounted at /sys/fs/cgroup/cpu,cpuacct); for any other root (a fake tree in a test) the
    conventional layout root/<controller> is assumed.
    """
    if root == BaseCgroup.DEFAULT_ROOT:
        return {c.name: c.mountpoint for c in host.controllers() if c.version == 1 and c.name in JOINED}
    return {c: os.path.join(root, c) for c in JOINED if os.path.isdir(os.path.join(root, c))}


def _v1_value(value) -> int:
    """A parsed limit as v1 writes it: MAX -> -1."""
    return -1 if value == MAX else int(value)


def _limit(value: int | None):
    """A v1 limit as read back: the huge 'unlimited' number -> MAX."""
    return MAX if value is None or value < 0 or value >= UNLIMITED else value


class V1Cgroup(BaseCgroup):
    version = "v1"

    def __init__(self, relpath: str, root: str | None = None):
        super().__init__(relpath, root)
        self.mounts = _mounts(self.root)

    # -- where ---------------------------------------------------------------------------------------

    @classmethod
    def available_controllers(cls, root: str | None = None) -> list[str]:
        return sorted(_mounts(root or cls.DEFAULT_ROOT))

    @classmethod
    def find_labkit(cls, root: str | None = None, keep: str = "") -> list[str]:
        found: set[str] = set()
        for mountpoint in set(_mounts(root or cls.DEFAULT_ROOT).values()):
            found |= find_labkit_dirs(mountpoint, keep)
        return sorted(found)

    def _hierarchies(self) -> list[tuple[str, str]]:
        """(controller, mountpoint) in JOINED order, one per distinct mountpoint."""
        seen, result = set(), []
        for controller in JOINED:
            mountpoint = self.mounts.get(controller)
            if mountpoint and mountpoint not in seen:
                seen.add(mountpoint)
                result.append((controller, mountpoint))
        return result

    def dirs(self) -> list[str]:
        return [os.path.join(m, self.relpath) for _, m in self._hierarchies()]

    def path(self, controller: str) -> str:
        name = V2_NAMES.get(controller, controller)
        if name not in JOINED:
            raise InvalidValue("controller", controller, "one of " + ", ".join(JOINED + tuple(V2_NAMES)))
        if name not in self.mounts:
            raise Unsupported(f"the {name} controller is not mounted on this host")
        return os.path.join(self.mounts[name], self.relpath)

    def _file(self, controller: str, name: str) -> str | None:
        """Path of an interface file, or None when the controller is not mounted."""
        mountpoint = self.mounts.get(controller)
        return os.path.join(mountpoint, self.relpath, name) if mountpoint else None

    def _write(self, controller: str, name: str, value) -> None:
        files.write(self._file(controller, name), value, HINTS.get(name))

    def _read_int(self, controller: str, name: str) -> int | None:
        path = self._file(controller, name)
        return files.read_int(path) if path else None

    def _controller_name(self, controller: str) -> str:
        return V2_NAMES.get(controller, controller)

    # -- lifecycle -----------------------------------------------------------------------------------

    def create(self, limits: Limits) -> None:
        parent = os.path.dirname(self.relpath)
        for controller, mountpoint in self._hierarchies():
            if not os.path.isdir(os.path.join(mountpoint, parent)):
                raise NotFound(f"parent cgroup {os.path.join(mountpoint, parent)} does not exist "
                               "(LABKIT_CGROUP_PARENT must name an existing cgroup in every v1 hierarchy)")
        for controller, mountpoint in self._hierarchies():
            directory = os.path.join(mountpoint, self.relpath)
            files.mkdir(directory)
            self.made.append(directory)
            if controller == "cpuset":
                # A fresh cpuset cgroup has empty cpus/mems; attaching would fail with ENOSPC.
                for name in ("cpuset.cpus", "cpuset.mems"):
                    value = files.read(os.path.join(mountpoint, parent, name)).strip() or \
                        files.read(os.path.join(mountpoint, parent, name.replace(".", ".effective_"))).strip()
                    files.write(os.path.join(directory, name), value, HINTS.get(name))
        self.apply(limits)

    def add(self, pid: int) -> None:
        pid = self._check_pid(pid)
        for controller, _ in self._hierarchies():
            self._write(controller, "cgroup.procs", pid)

    def apply(self, limits: Limits) -> None:
        if limits.cpuset is not None:
            self._write("cpuset", "cpuset.cpus", limits.cpuset)
        if limits.memory is not None or limits.swap is not None:
            self._apply_memory(limits)
        if limits.cpu is not None:
            # period first: the quota is checked against it
            self._write("cpu", "cpu.cfs_period_us", CPU_PERIOD_US)
            self._write("cpu", "cpu.cfs_quota_us", -1 if limits.cpu == MAX else cpu_quota_us(limits.cpu))
        if limits.cpu_weight is not None:
            self._write("cpu", "cpu.shares", weight_to_shares(limits.cpu_weight))
        if limits.pids is not None:
            self._write("pids", "pids.max", limits.pids)
        for io in limits.io or ():
            # 0 removes a device's rule on v1
            if io.read_bps is not None:
                self._write("blkio", "blkio.throttle.read_bps_device",
                            f"{io.device} {0 if io.read_bps == MAX else io.read_bps}")
            if io.write_bps is not None:
                self._write("blkio", "blkio.throttle.write_bps_device",
                            f"{io.device} {0 if io.write_bps == MAX else io.write_bps}")

    def _apply_memory(self, limits: Limits) -> None:
        """memory.limit_in_bytes and memory.memsw.limit_in_bytes (= memory + swap), in a safe order.

        The kernel insists limit_in_bytes <= memsw.limit_in_bytes at every moment, so when the total
        grows memsw is written first, and when it shrinks limit_in_bytes goes first.
        """
        current_mem = self._read_int("memory", "memory.limit_in_bytes")
        memory = _v1_value(limits.memory) if limits.memory is not None else current_mem
        memory = -1 if memory >= UNLIMITED else memory
        current_memsw = self._read_int("memory", "memory.memsw.limit_in_bytes")
        if current_memsw is None:                      # kernel without swap accounting
            if limits.swap is not None:
                raise Unsupported("a swap limit needs memory.memsw.limit_in_bytes (swap accounting, "
                                  "kernel option swapaccount=1), which this kernel lacks")
            self._write("memory", "memory.limit_in_bytes", memory)
            return
        if limits.swap is not None:
            swap = limits.swap
        else:                                          # keep the swap allowance already there
            had_limit = _limit(current_memsw) != MAX and _limit(current_mem) != MAX
            swap = current_memsw - current_mem if had_limit else MAX
        memsw = -1 if swap == MAX or memory == -1 else memory + swap

        def size(value):
            return float("inf") if value == -1 or value >= UNLIMITED else value

        if size(memsw) >= size(current_memsw):
            self._write("memory", "memory.memsw.limit_in_bytes", memsw)
            self._write("memory", "memory.limit_in_bytes", memory)
        else:
            self._write("memory", "memory.limit_in_bytes", memory)
            self._write("memory", "memory.memsw.limit_in_bytes", memsw)

    def limits(self) -> dict:
        result: dict = {}
        if "memory" in self.mounts:
            memory = self._read_int("memory", "memory.limit_in_bytes")
            result["memory"] = _limit(memory)
            memsw = self._read_int("memory", "memory.memsw.limit_in_bytes")
            if memsw is not None:
                result["swap"] = MAX if MAX in (_limit(memsw), _limit(memory)) else memsw - memory
        if "cpu" in self.mounts:
            quota = self._read_int("cpu", "cpu.cfs_quota_us")
            period = self._read_int("cpu", "cpu.cfs_period_us")
            result["cpu"] = MAX if quota is None or quota < 0 else quota / period
            result["cpu_weight"] = shares_to_weight(self._read_int("cpu", "cpu.shares"))
        if "pids" in self.mounts:
            text = files.read(self._file("pids", "pids.max")).strip()
            result["pids"] = MAX if text == MAX else int(text)
        if "cpuset" in self.mounts:
            result["cpuset"] = files.read(self._file("cpuset", "cpuset.cpus")).strip()
        if "blkio" in self.mounts:
            reads = files.parse_device_values(files.read(self._file("blkio", "blkio.throttle.read_bps_device")))
            writes = files.parse_device_values(files.read(self._file("blkio", "blkio.throttle.write_bps_device")))
            result["io"] = [{"device": dev, "read_bps": reads.get(dev, MAX), "write_bps": writes.get(dev, MAX)}
                            for dev in sorted(set(reads) | set(writes))]
        return result

    def stats(self) -> dict:
        return stats_from_files(self._file)

    # -- killing -------------------------------------------------------------------------------------

    def kill(self) -> None:
        """Freeze, SIGKILL everything, thaw (runc's way on v1): frozen processes cannot fork away
        while we read the list. Without the freezer: a kill loop until cgroup.procs stays empty."""
        self._lift_io_throttle()
        state = self._file("freezer", "freezer.state")
        if state and os.path.exists(state) and self.procs():
            files.write(state, "FROZEN")
            try:
                deadline = time.monotonic() + 1.0
                # a task in uninterruptible sleep keeps it FREEZING; we kill anyway after 1 s
                while files.read(state).strip() != "FROZEN" and time.monotonic() < deadline:
                    time.sleep(0.005)
                self.signal_all()
            finally:
                files.write(state, "THAWED")
        self._kill_until_empty()

    def _lift_io_throttle(self) -> None:
        """Remove IO limits so queued, throttled IO drains and its (killed) processes can exit."""
        for name in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
            path = self._file("blkio", name)
            text = files.read_or_none(path) if path else None
            for device in files.parse_device_values(text or ""):
                files.write(path, f"{device} 0", HINTS.get(name))


def stats_from_files(file) -> dict:
    """The common stats dict from v1 files; `file(controller, name)` gives a path or None."""

    def read(controller, name):
        path = file(controller, name)
        return files.read_or_none(path) if path else None

    def number(controller, name):
        text = read(controller, name)
        return int(text.split()[0]) if text else None

    stats = dict.fromkeys(STAT_KEYS)
    stats["memory_current"] = number("memory", "memory.usage_in_bytes")
    stats["memory_peak"] = number("memory", "memory.max_usage_in_bytes")
    oom = read("memory", "memory.oom_control")
    if oom is not None:
        stats["oom_kills"] = files.parse_flat_keyed(oom).get("oom_kill", 0)
    usage_ns = number("cpuacct", "cpuacct.usage")
    if usage_ns is not None:
        stats["cpu_usage_usec"] = usage_ns // 1000
    cpu = read("cpu", "cpu.stat")
    if cpu is not None:
        values = files.parse_flat_keyed(cpu)
        stats["nr_periods"] = values.get("nr_periods")
        stats["throttled_periods"] = values.get("nr_throttled")
        if "throttled_time" in values:
            stats["throttled_usec"] = values["throttled_time"] // 1000     # v1 reports ns
    stats["pids_current"] = number("pids", "pids.current")
    events = read("pids", "pids.events")
    if events is not None:
        stats["pids_events_max"] = files.parse_flat_keyed(events).get("max", 0)
    io = read("blkio", "blkio.throttle.io_service_bytes_recursive") or read("blkio", "blkio.throttle.io_service_bytes")
    if io is not None:
        totals = files.parse_blkio_bytes(io)
        stats["io_read_bytes"], stats["io_write_bytes"] = totals.get("Read", 0), totals.get("Write", 0)
    return stats
