"""From an API request to a real container: the engine's runtime, a labkit Container per start.

In Docker, dockerd does not make namespaces itself: it asks containerd to create a *task*, and
containerd runs ``runc create`` (namespaces, cgroup, pivot_root; the process waits) and then
``runc start`` (the process execs the command). Here the same two steps are
`Container.create()` and `Container.start()` from chapter 4 - so a container made through the
Docker API is exactly the container of `labkit.container`, with its namespaces and its cgroup.

Docker's mapping, field by field::

    Config.Cmd / Entrypoint   -> command          HostConfig.Memory     -> mem_limit (bytes)
    Config.Env                -> environment      HostConfig.NanoCpus   -> cpu (fraction of a CPU)
    Config.Hostname           -> hostname         HostConfig.CpuQuota/Period -> cpu = quota/period
    Config.WorkingDir         -> working_dir      HostConfig.PidsLimit  -> pids_limit
    HostConfig.NetworkMode none -> a net namespace with only loopback (no network attached)

The container's stdout and stderr go to two files in its work directory (as Docker's json-file log
driver writes files); the engine follows them while the container runs.
"""
from __future__ import annotations

import signal
from pathlib import Path

from .spec import ContainerSpec


class Running:
    """What the engine holds while a container runs: a labkit Container, started."""

    def __init__(self, container):
        self.container = container
        self.pid = container.pid
        self._details = self._read_details()
        self.stdout_path = Path(container.rootfs.dir, "stdout")
        self.stderr_path = Path(container.rootfs.dir, "stderr")

    def poll(self) -> int | None:
        return self.container.process.poll()

    def wait(self) -> int:
        """Exit status, Popen-style: negative when a signal killed it."""
        return self.container.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.container.kill(sig)

    def oom_killed(self) -> bool:
        try:
            return self.container.oom_killed()
        except Exception:       # the cgroup is gone already: no OOM kill to report
            return False

    def release(self) -> None:
        """Kill what is left in the cgroup, remove cgroup, mounts and work directory."""
        self.container.delete(force=True)

    def details(self) -> dict:
        """What `inspect` shows of the kernel side: namespaces (by inode) and the cgroup."""
        return self._details

    def _read_details(self) -> dict:
        """Read while the process waits between create and start: a fast command may be gone after."""
        from ..errors import LabkitError
        from ..namespaces import identity

        container = self.container
        try:
            namespaces = identity(self.pid)
        except (OSError, LabkitError):
            namespaces = {}
        cgroup = container.cgroup
        return {"LabkitName": container.name, "Namespaces": namespaces,
                "Cgroup": cgroup.relpath if cgroup is not None else "",
                "CgroupPaths": {c: cgroup.path(c) for c in ("memory", "cpu", "pids")} if cgroup else {},
                "RootFS": str(container.rootfs.path), "Init": container._argv()[0]}


def _limits(spec: ContainerSpec) -> dict:
    limits = {}
    if spec.memory is not None:
        limits["mem_limit"] = spec.memory
    if spec.cpu is not None:
        limits["cpu"] = spec.cpu
    if spec.pids is not None:
        limits["pids_limit"] = spec.pids
    return limits


def validate(spec: ContainerSpec) -> None:
    """Refuse limits this host cannot apply (e.g. more CPUs than it has) at create time, as a 400."""
    from ..cgroups.limits import parse

    limits = _limits(spec)
    parse({"memory": limits.get("mem_limit"), "cpu": limits.get("cpu"), "pids": limits.get("pids_limit")})


def launch(spec: ContainerSpec, image, hostname: str = "") -> Running:
    """Create and start a labkit Container for `spec` on `image` (an engine Image)."""
    from ..container import Container

    options = dict(hostname=spec.hostname or hostname or None, environment=spec.env,
                   working_dir=spec.working_dir or "/", **_limits(spec))
    container = Container(image.labkit_image(), spec.argv, **options)   # name: a fresh labkit-ctr-...
    try:
        container.create()          # like `runc create`: namespaces, cgroup, root; the process waits
        running = Running(container)
        container.start()           # like `runc start`: the command runs
    except BaseException:
        container.delete(force=True)
        raise
    return running
