"""What the runtime remembers between two of its invocations: one directory per container under --root.

    ROOT/ID/state.json   pid and its start time, bundle, cgroup path, created time, annotations
    ROOT/ID/exec.fifo    exists while the container is "created": its process is blocked opening
                         the FIFO for writing; `start` opens it for reading, which lets it exec

That is runc's design too: every verb is a fresh process, and the kernel (the pid, the FIFO, the
freezer) is the state; state.json only says where to look. The status is never stored, it is read:

    created   the process lives and exec.fifo still exists
    running   the process lives, the FIFO is gone            paused   ... and its cgroup is frozen
    stopped   the process is gone (or a zombie)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import NotFound

DEFAULT_ROOT = "/run/labkit-runtime"
OCI_VERSION = "1.0.2"
FIFO = "exec.fifo"


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in ticks), or None if gone or a zombie: a pid names the
    same process only together with its start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


class Container:
    """One container's state directory."""

    def __init__(self, root: str, cid: str):
        if not cid or "/" in cid or cid in (".", ".."):
            from ..errors import InvalidValue
            raise InvalidValue("container id", cid, "a name without '/'")
        self.id = cid
        self.dir = Path(root) / cid
        self._data: dict | None = None

    @property
    def fifo(self) -> Path:
        return self.dir / FIFO

    def exists(self) -> bool:
        return (self.dir / "state.json").exists()

    @property
    def data(self) -> dict:
        if self._data is None:
            try:
                self._data = json.loads((self.dir / "state.json").read_text())
            except FileNotFoundError:
                raise NotFound("container does not exist") from None
        return self._data

    def save(self, data: dict) -> None:
        partial = self.dir / ".state.json.tmp"
        partial.write_text(json.dumps(data))
        os.replace(partial, self.dir / "state.json")
        self._data = data

    @property
    def pid(self) -> int:
        return self.data["pid"]

    def alive(self) -> bool:
        return start_time(self.pid) == self.data["pid_start"]

    def cgroup(self):
        """The backend object (labkit.cgroups v1 or v2) for this container's cgroup."""
        from ..cgroups import backend
        return backend()(self.data["cgroup"])

    def frozen(self) -> bool:
        """Read from the freezer of the cgroup /proc/PID/cgroup names (v1: freezer.state is FROZEN;
        v2: cgroup.freeze is 1) - without importing labkit.cgroups: `state` is called often."""
        try:
            with open(f"/proc/{self.pid}/cgroup") as f:
                lines = [line.rstrip("\n").split(":", 2) for line in f]
            v1 = [path for _, controllers, path in lines if "freezer" in controllers.split(",")]
            if v1:
                with open(f"/sys/fs/cgroup/freezer{v1[0]}/freezer.state") as f:
                    return f.read().strip() == "FROZEN"
            v2 = [path for hierarchy, _, path in lines if hierarchy == "0"]
            with open(f"/sys/fs/cgroup{v2[0]}/cgroup.freeze") as f:
                return f.read().strip() == "1"
        except (OSError, IndexError):
            return False

    def status(self) -> str:
        if not self.alive():
            return "stopped"
        if self.fifo.exists():
            return "created"
        return "paused" if self.frozen() else "running"

    def oci_state(self) -> dict:
        """The runtime-spec state (plus runc's rootfs, created and owner fields)."""
        status = self.status()
        data = self.data
        return {"ociVersion": OCI_VERSION, "id": self.id,
                "pid": data["pid"] if status != "stopped" else 0, "status": status,
                "bundle": data["bundle"], "rootfs": data["rootfs"], "created": data["created"],
                "owner": "", "annotations": data.get("annotations") or {}}


def all_containers(root: str) -> list[Container]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [c for c in (Container(root, n) for n in names) if c.exists()]
