"""The machine report `labkit doctor` prints: what this machine can do for the lab, and what is missing.

`probe()` answers: kernel, cgroup mode, which controllers are mounted where, which namespace kinds
exist, root or not, lab host or not, which optional tools are installed and (on request) whether
KVM really boots a VM, and - inside a container - what that changes (labkit.incontainer). It sits
at the top of labkit: it asks host, namespaces, vm, loopdev and incontainer.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field

from . import binaries, host, incontainer, loopdev, vm
from .errors import NotFound
from .host import Controller
from .cgroups.base import PARENT_ENV, parent_from_env
from .nskinds import KINDS, kind_available


def tools() -> dict[str, str | None]:
    """Optional tools the later chapters use: path, or None when missing."""
    arch = os.uname().machine
    qemu = vm.ARCHES.get(arch, {}).get("qemu", "qemu-system-" + arch)
    names = {"qemu": qemu, "docker": "docker", "dockerd": "dockerd", "busybox": "busybox",
             "runc": "runc", "unshare": "unshare", "ip": "ip", "vagrant": "vagrant"}
    found = {key: shutil.which(cmd) or (f"/usr/bin/{cmd}" if os.path.exists(f"/usr/bin/{cmd}") else None)
             for key, cmd in names.items()}
    found["busybox"] = _static_busybox()    # any busybox on PATH is not enough: the one labkit's roots use
    return found


def _static_busybox() -> str | None:
    try:
        return str(binaries.find_busybox())
    except NotFound:
        return None


@dataclass
class HostReport:
    kernel: str
    arch: str
    cgroup_mode: str
    controllers: list[Controller]
    namespaces: list[dict]
    root: bool
    lab_host: bool
    tools: dict
    kvm: dict = field(default_factory=dict)
    init: str = ""                                    # "systemd" or the name of PID 1
    cgroup_parent: dict = field(default_factory=dict)  # v2: where labkit's cgroups go (cgroup_parent())
    container: dict = field(default_factory=dict)      # "in a container": engine, cgroup namespace, ...
    loops: dict = field(default_factory=dict)          # loop device nodes (loopdev.node_report())
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)     # what works differently here, with fixes

    def as_dict(self) -> dict:
        return {**asdict(self), "controllers": [c._asdict() for c in self.controllers]}   # named tuples


def probe(check_kvm: bool = False) -> HostReport:
    """Look at the machine; `check_kvm` also boots a tiny VM to see whether KVM really works."""
    release = os.uname().release
    namespaces = [{"kind": k.name, "available": kind_available(k), "min_kernel": k.min_kernel,
                   "isolates": k.isolates} for k in KINDS]
    report = HostReport(
        kernel=release, arch=os.uname().machine, cgroup_mode=host.cgroup_mode(),
        controllers=host.controllers(), namespaces=namespaces, root=host.is_root(),
        lab_host=host.is_lab_host(), tools=tools(),
        kvm={"device": os.path.exists("/dev/kvm"), "usable": None},
        init=init_system(), cgroup_parent=cgroup_parent(),
    )
    if check_kvm and report.kvm["device"] and report.tools["qemu"]:
        report.kvm["usable"] = vm.kvm_usable()
    report.problems = _problems(report)
    _where(report)
    return report


DOCKER_ROOT = "/var/lib/docker"


def _where(report: HostReport) -> None:
    """The checks that matter most inside a container (they run everywhere: a store can be on overlay
    on any machine)."""
    from .rootfs import IMAGE_STORE

    with open("/proc/self/cgroup") as f:
        proc_cgroup = f.read()
    engine = incontainer.engine()
    report.loops = loopdev.node_report()
    report.container = {"engine": engine, "cgroup_namespace": incontainer.cgroup_namespace(proc_cgroup),
                        "cgroup_view": incontainer.cgroup_view(report.cgroup_mode, proc_cgroup),
                        "image_store": str(IMAGE_STORE), "docker_root": DOCKER_ROOT} if engine else {}
    problems, notes = incontainer.findings(str(IMAGE_STORE), DOCKER_ROOT, report.cgroup_mode,
                                           report.loops, proc_cgroup, engine)
    report.problems += problems
    report.notes += notes


def _problems(report: HostReport) -> list[str]:
    """What stops the lab from working here, each with how to fix it."""
    problems = []
    if not report.root:
        problems.append("not running as root: the lab creates kernel objects; run as root (sudo)")
    if report.root and not report.lab_host:
        problems.append(f"not a lab host: run `make lab` (it writes {host.LAB_HOST_MARKER}) "
                        f"or set {host.ALLOW_ENV}=1 to opt in")
    names = {c.name for c in report.controllers}
    for needed in ("memory", "cpu", "pids"):
        if needed not in names:
            problems.append(f"cgroup controller {needed!r} is not available: chapter 2 needs it")
    missing_ns = [n["kind"] for n in report.namespaces if not n["available"]]
    if missing_ns:
        problems.append("namespace kinds missing from this kernel: " + ", ".join(missing_ns))
    parent = report.cgroup_parent
    if parent and not parent["exists"]:
        problems.append(f"{parent['source']} names {parent['path']}, which does not exist")
    elif parent:
        lacking = [c for c in ("memory", "cpu", "pids") if c not in parent["controllers"]]
        if lacking:
            problems.append(f"the cgroup parent {parent['path']} cannot give labkit's cgroups "
                            f"{', '.join(lacking)}: its parent has not enabled them for it")
        if parent["processes"] and parent["path"] != "/":
            problems.append(f"the cgroup parent {parent['path']} holds processes: cgroup v2 gives "
                            "controllers only to the children of a cgroup without processes; "
                            f"point {PARENT_ENV} at an empty cgroup")
    if not report.tools.get("busybox"):
        problems.append("no statically linked busybox: `apt-get install busybox-static` (chapter 4 rootfs)")
    return problems


def init_system() -> str:
    """'systemd' when PID 1 is systemd (its own test, sd_booted(): /run/systemd/system exists), else
    the name of PID 1 - on the build machine something else, and then the lab runs without a unit."""
    if os.path.isdir("/run/systemd/system"):
        return "systemd"
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def cgroup_parent() -> dict:
    """cgroup v2: where labkit will make its cgroups (LABKIT_CGROUP_PARENT, else the root), which
    controllers its cgroups can get there, whether a systemd unit delegated it, and its processes."""
    if host.cgroup_mode() != "v2":
        return {}
    rel = parent_from_env()
    path = os.path.join(host.CGROUP_ROOT, rel)
    info = {"path": "/" + rel, "source": PARENT_ENV if rel else "the root of the hierarchy",
            "exists": os.path.isdir(path), "controllers": [], "processes": 0, "delegated_by": ""}
    if not info["exists"]:
        return info
    try:
        with open(os.path.join(path, "cgroup.controllers")) as f:
            info["controllers"] = f.read().split()
        with open(os.path.join(path, "cgroup.procs")) as f:
            info["processes"] = len(f.read().split())
    except OSError:
        pass
    info["delegated_by"] = host.delegated_by(path)
    return info
