"""What the runtime remembers between two of its invocations: one directory per container under --root.

    ROOT/ID/state.json   pid and its start time, bundle, cgroup path (and systemd scope unit and slice
                         with --systemd-cgroup), created time, annotations, hooks
    ROOT/ID/facts        the same, but the hooks and annotations, as plain `key value` lines (plus which
                         hook kinds `start` and `delete` must run): `start`, `delete` and `state` read
                         only this unless there are hooks or annotations, so they import no json
    ROOT/ID/exec.fifo    exists while the container is "created": its process is blocked opening
                         the FIFO for writing; `start` opens it for reading, which lets it exec

That is runc's design too: every verb is a fresh process, and the kernel (the pid, the FIFO, the
freezer) is the state; the files only say where to look. The status is never stored, it is read:

    created   the process lives and exec.fifo still exists
    running   the process lives, the FIFO is gone            paused   ... and its cgroup is frozen
    stopped   the process is gone (or a zombie)

This module imports only os: `state`, `start` and `delete` are called for every container.
"""
from __future__ import annotations

import os

from ..errors import NotFound
from ..pidstart import start_time

DEFAULT_ROOT = "/run/labkit-runtime"
OCI_VERSION = "1.0.2"
FIFO = "exec.fifo"
LATE_HOOKS = ("poststart", "poststop")      # the hook kinds run after `create` (by start and delete)


def _facts(data: dict) -> dict[str, str]:
    late = ",".join(k for k in LATE_HOOKS if (data.get("hooks") or {}).get(k)) or "-"
    return {"pid": str(data["pid"]), "pid_start": data["pid_start"], "cgroup": data["cgroup"],
            "unit": data.get("unit") or "-", "slice": data.get("slice") or "-", "late_hooks": late, "bundle": data["bundle"], "rootfs": data["rootfs"],
            "created": data["created"], "annotated": "yes" if data.get("annotations") else "no"}


class Container:
    """One container's state directory."""

    def __init__(self, root: str, cid: str):
        if not cid or "/" in cid or cid in (".", ".."):
            from ..errors import InvalidValue
            raise InvalidValue("container id", cid, "a name without '/'")
        self.id = cid
        self.dir = os.path.join(root, cid)
        self.fifo = os.path.join(self.dir, FIFO)
        self._data: dict | None = None
        self._facts: dict[str, str] | None = None

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.dir, "facts")) or \
            os.path.exists(os.path.join(self.dir, "state.json"))

    @property
    def facts(self) -> dict[str, str]:
        """ROOT/ID/facts as a dict. A container created by an older labkit-runtime has only
        state.json: the same facts from there."""
        if self._facts is None:
            try:
                with open(os.path.join(self.dir, "facts")) as f:
                    self._facts = dict(line.rstrip("\n").split(" ", 1) for line in f)
            except FileNotFoundError:
                self._facts = _facts(self.data)
        return self._facts

    @property
    def pid(self) -> int:
        return int(self.facts["pid"])

    @property
    def cgroup_path(self) -> str:
        return self.facts["cgroup"]

    @property
    def unit(self) -> tuple[str, str] | None:
        """(scope unit, slice) when systemd made the cgroup (--systemd-cgroup), else None."""
        unit = self.facts.get("unit", "-")
        return None if unit == "-" else (unit, self.facts.get("slice", "-"))

    def runtime_cgroup(self):
        """labkit.runtime.cgroup's view of it: what `delete` and `update` change (systemd: via the unit)."""
        from .cgroup import RuntimeCgroup
        unit, slice_name = self.unit or (None, None)
        return RuntimeCgroup(self.cgroup_path, unit=unit, slice_name=slice_name)

    def has_hooks(self, kind: str) -> bool:
        return kind in self.facts["late_hooks"].split(",")

    @property
    def data(self) -> dict:
        """Everything state.json holds (json is imported only by the verbs that need it)."""
        if self._data is None:
            import json
            try:
                with open(os.path.join(self.dir, "state.json")) as f:
                    self._data = json.load(f)
            except FileNotFoundError:
                raise NotFound("container does not exist") from None
        return self._data

    def save(self, data: dict) -> None:
        """state.json, then the facts: each written whole and renamed into place, the facts last -
        the container "exists" for the other verbs only once both are there."""
        import json
        facts = _facts(data)
        if any("\n" in value for value in facts.values()):
            from ..errors import InvalidValue
            raise InvalidValue("container facts", facts, "values without a newline")
        for name, text in (("state.json", json.dumps(data)),
                           ("facts", "".join(f"{key} {value}\n" for key, value in facts.items()))):
            partial = os.path.join(self.dir, f".{name}.tmp")
            with open(partial, "w") as f:
                f.write(text)
            os.replace(partial, os.path.join(self.dir, name))
        self._data, self._facts = data, None

    def remove(self) -> None:
        """The state directory and its few files (flat: no shutil needed)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        os.rmdir(self.dir)

    def alive(self) -> bool:
        return start_time(self.pid) == self.facts["pid_start"]

    def cgroup(self):
        """The backend object (labkit.cgroups v1 or v2) for this container's cgroup."""
        from ..cgroups import backend
        return backend()(self.cgroup_path)

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
        if os.path.exists(self.fifo):
            return "created"
        return "paused" if self.frozen() else "running"

    def oci_state(self) -> dict:
        """The runtime-spec state (plus runc's rootfs, created and owner fields)."""
        status, facts = self.status(), self.facts
        annotations = self.data.get("annotations") or {} if facts["annotated"] == "yes" else {}
        return {"ociVersion": OCI_VERSION, "id": self.id,
                "pid": self.pid if status != "stopped" else 0, "status": status,
                "bundle": facts["bundle"], "rootfs": facts["rootfs"], "created": facts["created"],
                "owner": "", "annotations": annotations}


def all_containers(root: str) -> list[Container]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [c for c in (Container(root, n) for n in names) if c.exists()]
