"""Where the lab runs when it runs INSIDE a container (a classroom: one privileged container, or one
Kata microVM, per learner), and what that changes - the "in a container" part of `labkit doctor`.

Each check is a small function of what it reads, so that the unit tests can hand it text:
  - which engine made the container (its marker files, or `container=` in PID 1's environment);
  - whether the container has its own cgroup namespace (--cgroupns=private): then its cgroup is the
    root it sees, and labkit's cgroups go below it instead of beside other containers;
  - the cgroup view: runc mounts only the v1 hierarchies, so a hybrid host looks like v1 inside;
  - whether overlay can use labkit's image store (its 0:0 "whiteout" devices are refused when the
    store itself is on overlay - the container's root) and Docker's data root (else Docker falls
    back to the slow vfs driver);
  - loop device nodes: a container's /dev is a plain tmpfs, the kernel adds no node there.
"""
from __future__ import annotations

import os
import re
import stat

from . import mountinfo, syscalls

OVERLAYFS_SUPER_MAGIC = 0x794C7630
# Engines bind-mount the container's own /etc/hostname, /etc/hosts and /etc/resolv.conf from their
# state directory: the source path names the engine. (/.dockerenv is no proof: a VM whose disk was
# made from a container image keeps it.)
ENGINE_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
ENGINE_PATHS = (("kata-containers", "kata"), ("/kubelet/pods/", "kubernetes"), ("/docker/", "docker"),
                ("/containers/storage/", "podman"), ("/libpod/", "podman"), ("/lxc/", "lxc"))
# What a cgroup path looks like when the container shares the host's cgroup namespace.
_HOST_CGROUP_PATH = re.compile(r"(docker[-/]|libpod|kubepods|containerd|lxc/|machine\.slice)")


def engine(mounts: list[dict] | None = None, pid1_environ: bytes | None = None) -> str:
    """'docker', 'kubernetes', 'kata', 'podman', 'lxc', PID 1's container= value (systemd's
    convention), 'unknown' for an engine not named here, or '' when this does not look like a container."""
    if mounts is None:
        mounts = mountinfo.read()
    for m in mounts:
        if m["mountpoint"] in ENGINE_FILES and m["root"] != "/":
            return next((name for part, name in ENGINE_PATHS if part in m["root"]), "unknown")
    if pid1_environ is None:
        try:
            with open("/proc/1/environ", "rb") as f:
                pid1_environ = f.read()
        except OSError:
            pid1_environ = b""
    for entry in pid1_environ.split(b"\0"):
        if entry.startswith(b"container="):
            return entry.split(b"=", 1)[1].decode(errors="replace") or "unknown"
    return ""


def cgroup_paths(proc_cgroup: str) -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy: path}; the v2 line ("0::/path") under the key ''."""
    paths = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1].replace("name=", "")] = parts[2]
    return paths


def cgroup_namespace(proc_cgroup: str) -> str:
    """'private' when this process's cgroup paths show no trace of the host's tree, 'host' when they
    name the container's cgroup on the host (/docker/<id>, kubepods, ...)."""
    paths = cgroup_paths(proc_cgroup).values()
    return "host" if any(_HOST_CGROUP_PATH.search(p) for p in paths) else "private"


def cgroup_view(mode: str, proc_cgroup: str) -> str:
    """The hierarchy as mounted here versus what the kernel runs: a v1 view with a v2 line in
    /proc/self/cgroup means the kernel also has v2 in use (a hybrid host) that nobody mounted here."""
    if mode == "v1" and "" in cgroup_paths(proc_cgroup):
        return "v1 here, hybrid on the host (the unified v2 hierarchy is not mounted in this container)"
    return mode


def _existing(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def on_overlay(path: str) -> bool:
    """Whether `path` (or the nearest existing parent) lies on an overlay filesystem."""
    return syscalls.filesystem_magic(_existing(path)) == OVERLAYFS_SUPER_MAGIC


def whiteouts_work(store: str) -> tuple[bool, str]:
    """Can overlay use whiteouts (0:0 character devices) kept in `store`? (ok, why not)"""
    if on_overlay(store):
        return False, f"{store} is on overlay (the container's own root): overlay refuses whiteouts kept there"
    where = _existing(store)
    probe = os.path.join(where, f".labkit-whiteout-probe-{os.getpid()}")
    try:
        os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    except OSError as exc:
        return False, f"mknod of a 0:0 device in {where} failed: {exc.strerror}"
    os.unlink(probe)
    return True, ""


def overlay_in_kernel(filesystems: str | None = None) -> bool:
    if filesystems is None:
        with open("/proc/filesystems") as f:
            filesystems = f.read()
    return any(line.split()[-1] == "overlay" for line in filesystems.splitlines() if line.strip())


def findings(store: str, docker_root: str, mode: str, loops: dict, proc_cgroup: str,
             container: str) -> tuple[list[str], list[str]]:
    """(problems, notes): what stops a chapter here, and what works differently - each with its fix."""
    problems, notes = [], []
    ok, why = whiteouts_work(store)
    if not ok:
        problems.append(f"whiteouts impossible in labkit's image store: {why}; notebook 31 fails. Fix: "
                        f"give the container a volume there (docker run -v NAME:{store})")
    if not overlay_in_kernel():
        problems.append("the kernel has no overlay filesystem: modprobe overlay (on the host)")
    if os.path.isdir(docker_root) or container:
        if on_overlay(docker_root):
            notes.append(f"Docker cannot use overlay2 here ({docker_root} is on overlay): it falls back to "
                         f"vfs, slow and large. Fix: a volume at {docker_root}")
    if loops["control"] and loops["free"] == 0 and not loops["auto_nodes"]:
        problems.append("no free /dev/loopN node, and this /dev gets none by itself (not devtmpfs): "
                        "notebook 14's `mount -o loop` fails. Fix: mknod /dev/loopN b 7 N for a few more N")
    if not container:
        return problems, notes
    if cgroup_namespace(proc_cgroup) == "host":
        notes.append("this container shares the host's cgroup namespace: labkit's cgroups go beside "
                     "other containers' and learners see each other's. Fix: run it with --cgroupns=private")
    view = cgroup_view(mode, proc_cgroup)
    if view != mode:
        notes.append(f"cgroups: {view}; labkit uses the v1 controllers, as on a v1 host")
    notes.append("the kernel is shared with the machine's other containers: loop devices, the kernel "
                 "log and kernel settings are too (a learner who is root here is root on that kernel, "
                 "unless this container is a microVM such as Kata)")
    return problems, notes
