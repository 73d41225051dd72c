"""The container's cgroup at config.json's linux.cgroupsPath (Docker: /docker/<id>).

labkit.cgroups' backends write the limits (memory, swap, cpu, cpuset, pids) and join the usual
controllers; the runtime adds what a Docker container needs beyond a labkit one: the device rules
(which device nodes the container may open or mknod) - v1's `devices` controller, or on v2 an eBPF
program attached to the cgroup (labkit.runtime.devices) - and
memory.oom_control for `--oom-kill-disable`. The path belongs to whoever asked for it (containerd
removes nothing; `delete` does), so unlike a labkit cgroup it is not claimed for labkit's sweeps.
"""
from __future__ import annotations

import os

from ..cgroups import backend
from ..cgroups import files
from ..cgroups.v2 import enable_controllers
from ..errors import Conflict, Unsupported
from . import devices

DEVICES_ROOT = "/sys/fs/cgroup/devices"
# The nodes every container gets in /dev (labkit.rootfs.populate_dev) and its pty devices: allowed
# after config.json's own rules, as runc adds them (Docker's list alone would forbid /dev/full).
DEFAULT_ALLOWED = ("c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                   "c 5:2 rwm", "c 136:* rwm")


class RuntimeCgroup:
    def __init__(self, relpath: str):
        self.relpath = relpath.strip("/")
        self.impl = backend()(self.relpath)
        self.version = self.impl.version
        self.devices = f"{DEVICES_ROOT}/{self.relpath}" if self.version == "v1" and \
            os.path.isdir(DEVICES_ROOT) else None

    def create(self, limits, device_rules: list[str], oom_kill_disable: bool) -> None:
        if device_rules and self.version == "v1" and self.devices is None:
            raise Unsupported("linux.resources.devices: this cgroup v1 host has no devices hierarchy")
        self.impl.check_supported(limits)
        if self.impl.exists():
            raise Conflict(f"cgroup {self.relpath} exists already ({', '.join(self.impl.dirs())})")
        self._make_parents()
        self.impl.create(limits)
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
        self.impl.add(pid)
        if self.devices and os.path.isdir(self.devices):
            files.write(f"{self.devices}/cgroup.procs", pid)

    def destroy(self) -> None:
        """Kill whatever is left inside, then remove the directories."""
        if self.impl.exists():
            self.impl.kill()
            self.impl.remove()
        if self.devices and os.path.isdir(self.devices):
            files.rmdir_tree(self.devices)
