"""Learner containers as the classroom runs them, and what each leaves in the kernel.

A learner is `docker run --privileged --cgroupns=private` with its own volumes for /var/lib/labkit and
/var/lib/docker (deploy/jupyterhub_config.py gives the same) and 1 CPU, 2 GB, 2048 pids - but
`--network none` here instead of the hub's internal network: nbval needs no network at all.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from labkit import loopdev, mountinfo
from tests.classroom.daemon import OwnDockerd

CGROUP_ROOT = Path("/sys/fs/cgroup")
NS_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def host_namespaces() -> set[int]:
    """This process's namespaces (the host's): a learner shares some of them (user, time)."""
    return {ino for kind in NS_KINDS if (ino := _ns_inode(f"/proc/self/ns/{kind}"))}


def _nsfs_mounts(pid: int) -> list[tuple[int, str]]:
    """(namespace inode, mount point) of every namespace bind mount (`ip netns add`) `pid` sees."""
    try:
        mounts = mountinfo.read(pid)
    except OSError:
        return []
    return [(int(m.group(1)), mount["mountpoint"]) for mount in mounts if mount["fstype"] == "nsfs"
            and (m := re.fullmatch(r"[a-z_]+:\[(\d+)\]", mount["root"]))]


def namespaces_of(pids: list[int]) -> set[int]:
    """Every namespace these processes are in, or keep mounted."""
    found = set()
    for pid in pids:
        found |= {ino for kind in NS_KINDS if (ino := _ns_inode(f"/proc/{pid}/ns/{kind}"))}
        found |= {ino for ino, _ in _nsfs_mounts(pid)}
    return found


def namespaces_alive(inodes: set[int], since: float, under: Path) -> set[int]:
    """Which of these namespaces the kernel still has after the learners stopped at `since`
    (time.time()): a process is in one, or a mount below `under` (the stage's Docker data root, where
    the learners' root filesystems and volumes are on the host) keeps one.

    Only what could be the learners' counts: the kernel hands a freed namespace's inode number to the
    next new namespace, and on a shared machine other tests make namespaces all the time - a process
    started after the stop, or their `ip netns add` mounts elsewhere, may carry one of these numbers."""
    alive = set()
    for proc in psutil.process_iter(["create_time"]):
        if (proc.info["create_time"] or since) >= since:
            continue
        alive |= {ino for kind in NS_KINDS if (ino := _ns_inode(f"/proc/{proc.pid}/ns/{kind}"))} & inodes
        alive |= {ino for ino, where in _nsfs_mounts(proc.pid) if ino in inodes and Path(where).is_relative_to(under)}
    return alive


def cgroup_dirs(container_id: str) -> list[Path]:
    """The container's cgroup in every hierarchy (dockerd's cgroupfs driver: docker/<id>)."""
    return [d for d in CGROUP_ROOT.glob(f"*/docker/{container_id}") if d.is_dir()] + \
        [d for d in [CGROUP_ROOT / "docker" / container_id] if d.is_dir()]


def cgroup_pids(container_id: str) -> list[int]:
    pids = set()
    for top in cgroup_dirs(container_id):
        for procs in top.rglob("cgroup.procs"):
            try:
                pids |= {int(p) for p in procs.read_text().split()}
            except OSError:
                continue
    return sorted(pids)


def memory_of(container_id: str) -> dict[str, int]:
    """A container's memory cgroup: usage now and peak, in bytes (cgroup v1 here; v2 names otherwise)."""
    for d in cgroup_dirs(container_id):
        if (d / "memory.usage_in_bytes").exists():
            return {"now": int((d / "memory.usage_in_bytes").read_text()),
                    "peak": int((d / "memory.max_usage_in_bytes").read_text())}
        if (d / "memory.current").exists():
            peak = d / "memory.peak"
            return {"now": int((d / "memory.current").read_text()),
                    "peak": int(peak.read_text()) if peak.exists() else 0}
    return {}


@dataclass
class Learner:
    daemon: OwnDockerd
    image: str
    name: str = field(default_factory=lambda: f"labkit-classroom-{secrets.token_hex(3)}")
    id: str = ""
    pid: int = 0
    root_dev: int = 0

    @property
    def volumes(self) -> dict[str, str]:
        return {f"{self.name}-store": "/var/lib/labkit", f"{self.name}-docker": "/var/lib/docker"}

    def start(self) -> "Learner":
        argv = ["run", "-d", "--name", self.name, "--init", "--privileged", "--cgroupns=private",
                "--network", "none", "--cpus", "1", "--memory", "2g", "--pids-limit", "2048"]
        for volume, target in self.volumes.items():
            argv += ["-v", f"{volume}:{target}"]
        self.id = self.daemon.docker(*argv, self.image, "sleep", "infinity").stdout.strip()
        state = json.loads(self.daemon.docker("inspect", self.id).stdout)[0]["State"]
        self.pid = state["Pid"]
        self.root_dev = os.stat(f"/proc/{self.pid}/root/run").st_dev   # its overlay root, from here
        return self

    def exec_argv(self, *command: str, workdir: str = "/opt/labkit") -> list[str]:
        return ["exec", "-w", workdir, self.name, *command]

    def exec(self, *command: str, timeout: float = 300, check: bool = True):
        return self.daemon.docker(*self.exec_argv(*command), timeout=timeout, check=check)

    def volume_dirs(self) -> list[Path]:
        out = []
        for volume in self.volumes:
            info = json.loads(self.daemon.docker("volume", "inspect", volume).stdout)[0]
            out.append(Path(info["Mountpoint"]))
        return out

    def stop(self) -> None:
        self.daemon.docker("stop", "-t", "10", self.name, check=False, timeout=60)
        self.daemon.docker("rm", "-f", self.name, check=False, timeout=60)

    def remove_volumes(self) -> None:
        for volume in self.volumes:
            self.daemon.docker("volume", "rm", "-f", volume, check=False)


def loops_backed_by(devices: set[int], files: set[tuple[int, int]]) -> list[str]:
    """Attached loop devices whose backing file is on one of `devices` or is one of `files` (dev, ino)."""
    found = []
    for dev in loopdev.attached_devices():
        held = loopdev.kernel_file(dev["name"])
        if held and (held[0] in devices or held in files):
            found.append(f"/dev/{dev['name']} ({dev['backing']})")
    return found


def files_in(dirs: list[Path]) -> set[tuple[int, int]]:
    found = set()
    for top in dirs:
        for root, _, names in os.walk(top):
            for n in names:
                try:
                    st = os.lstat(os.path.join(root, n))
                except OSError:
                    continue
                found.add((st.st_dev, st.st_ino))
    return found
