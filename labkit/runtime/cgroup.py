"""The container's cgroup at config.json's linux.cgroupsPath (Docker: /docker/<id>, or with systemd
as the cgroup driver the scope unit system.slice:docker:<id>, which labkit.runtime.systemd asks for).

labkit.cgroups' backends write the limits (memory, swap, cpu, cpuset, pids) and join the usual
controllers; the runtime adds what a Docker container needs beyond a labkit one: the device rules
(which device nodes the container may open or mknod) - v1's `devices` controller, or on v2 an eBPF
program attached to the cgroup (labkit.runtime.devices) - and
memory.oom_control for `--oom-kill-disable`. The path belongs to whoever asked for it (containerd
removes nothing; `delete` does), so unlike a labkit cgroup it is not claimed for labkit's sweeps.

With the systemd driver (`unit` set) the directory is systemd's: it exists only once the scope has
started, and the scope starts with its first process, so `create` only checks and `add(pid)` starts
it (runc's Apply(pid) does the same); `destroy` stops the unit.
"""
from __future__ import annotations

import os

from ..cgroups import backend
from ..cgroups import files
from ..cgroups.base import LIMIT_CONTROLLER
from ..cgroups.v2 import enable_controllers
from ..errors import Conflict, Unsupported
from . import devices

DEVICES_ROOT = "/sys/fs/cgroup/devices"
# The nodes every container gets in /dev (labkit.pivot.populate_dev) and its pty devices: allowed
# after config.json's own rules, as runc adds them (Docker's list alone would forbid /dev/full).
DEFAULT_ALLOWED = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                   "c 5:2 rwm", "c 136:* rwm")


class RuntimeCgroup:
    def __init__(self, relpath: str, unit: str | None = None, slice_name: str | None = None):
        self.relpath = relpath.strip("/")
        self.unit, self.slice = unit, slice_name        # the systemd scope, with the systemd driver
        self.impl = backend()(self.relpath)
        self.version = self.impl.version
        self.devices = f"{DEVICES_ROOT}/{self.relpath}" if self.version == "v1" and \
            os.path.isdir(DEVICES_ROOT) else None
        self._pending = None             # systemd: what to apply once the scope exists (see add)

    @classmethod
    def of_scope(cls, scope) -> "RuntimeCgroup":
        """The cgroup of a systemd scope (labkit.runtime.systemd.Scope)."""
        return cls(scope.relpath, unit=scope.unit, slice_name=scope.slice)

    def create(self, limits, device_rules: list[str], oom_kill_disable: bool) -> None:
        if device_rules and self.version == "v1" and self.devices is None:
            raise Unsupported("linux.resources.devices: this cgroup v1 host has no devices hierarchy")
        if self.unit:
            self._check_systemd(limits, oom_kill_disable)
        else:
            self.impl.check_supported(limits)
        if self.impl.exists():
            raise Conflict(f"cgroup {self.relpath} exists already ({', '.join(self.impl.dirs())})")
        if self.unit:
            self._pending = (limits, device_rules, oom_kill_disable)
            return
        self._make_parents()
        self.impl.create(limits)
        self._configure(device_rules, oom_kill_disable)

    def _check_systemd(self, limits, oom_kill_disable: bool) -> None:
        from . import systemd
        if self.version != "v2":
            raise Unsupported("--systemd-cgroup: labkit-runtime's systemd driver works on cgroup v2 only "
                              "(this host's controllers are on v1)")
        if oom_kill_disable:
            raise Unsupported("linux.resources.memory.disableOOMKiller exists only on cgroup v1")
        systemd.require_systemd()
        systemd.resource_properties(limits)           # refuses what systemd cannot be told, by name
        # systemd enables a controller down to the scope when a property needs it: what counts is
        # what the kernel offers at the root, not what the slice has enabled so far
        offered = files.read(os.path.join(self.impl.root, "cgroup.controllers")).split()
        for name in limits.given():
            if LIMIT_CONTROLLER[name] not in offered:
                raise Unsupported(f"the {name} limit needs the {LIMIT_CONTROLLER[name]} cgroup controller, "
                                  f"which this kernel does not offer (available: {', '.join(offered) or 'none'})")

    def _configure(self, device_rules: list[str], oom_kill_disable: bool) -> None:
        """Device rules and the OOM killer switch, once the directory exists."""
        try:
            rules = [*device_rules, *("allow " + r for r in DEFAULT_ALLOWED)]
            if device_rules and self.version == "v2":     # an eBPF program judges each device access
                devices.restrict(self.impl.dir, rules)
            elif device_rules:
                os.makedirs(os.path.dirname(self.devices), exist_ok=True)
                files.mkdir(self.devices)
                for rule in rules:                # "allow c 1:3 rwm" -> devices.allow <- "c 1:3 rwm"
                    verb, _, entry = rule.partition(" ")
                    files.write(f"{self.devices}/devices.{verb}", entry)
            if oom_kill_disable:
                if self.version != "v1":
                    raise Unsupported("linux.resources.memory.disableOOMKiller exists only on cgroup v1")
                files.write(f"{self.impl.path('memory')}/memory.oom_control", 1)
        except BaseException:
            self.destroy()
            raise

    def _make_parents(self) -> None:
        """mkdir -p of cgroupsPath's parents, as runc does: /docker does not exist before a fresh
        dockerd's first container. Like runc, `delete` leaves them (they are Docker's, not labkit's)."""
        parts = self.relpath.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            for directory in backend()("/".join(parts[:depth])).dirs():
                if os.path.isdir(directory):
                    continue
                parent = os.path.dirname(directory)
                if self.version == "v2":      # the controllers must reach the container's level
                    enable_controllers(parent)
                os.mkdir(directory)
                if self.version == "v1" and os.path.exists(f"{directory}/cpuset.cpus"):
                    for name in ("cpuset.cpus", "cpuset.mems"):   # a new v1 cpuset group starts empty
                        files.write(f"{directory}/{name}", files.read(f"{parent}/{name}").strip())

    def add(self, pid: int) -> None:
        """Before the process runs a single instruction of its own (spawn calls this)."""
        if self._pending is not None:
            self._start_scope(pid)
            return
        self.impl.add(pid)
        if self.devices and os.path.isdir(self.devices):
            files.write(f"{self.devices}/cgroup.procs", pid)

    def _start_scope(self, pid: int) -> None:
        """systemd makes the scope with `pid` inside; then the same limits go into its files (what
        systemd wrote from the properties, now also exactly what config.json said) and the device rules."""
        from . import systemd
        limits, device_rules, oom_kill_disable = self._pending
        self._pending = None
        scope = systemd.Scope(self.slice, self.unit)
        properties = systemd.scope_properties(scope, pid, limits,
                                              f"labkit-runtime container {os.path.basename(self.relpath)}")
        with systemd.Systemd() as bus:
            bus.start_scope(scope, properties)
        try:
            self.impl.apply(limits)
            self._configure(device_rules, oom_kill_disable)
        except BaseException:
            self.destroy()
            raise

    def update(self, limits) -> None:
        """New limits while it runs: systemd's properties first (they outlive a daemon-reload), then the files."""
        if self.unit:
            from . import systemd
            with systemd.Systemd() as bus:
                bus.set_properties(self.unit, systemd.resource_properties(limits))
        self.impl.apply(limits)

    def destroy(self) -> None:
        """Kill whatever is left inside, then remove the directories (systemd: stop the scope)."""
        if self.impl.exists():
            self.impl.kill()
        if self.unit:
            from . import systemd
            with systemd.Systemd() as bus:
                bus.stop(self.unit)
        if self.impl.exists():
            self.impl.remove()
        if self.devices and os.path.isdir(self.devices):
            files.rmdir_tree(self.devices)
