"""The machine report `labkit doctor` prints: what this machine can do for the lab, and what is missing.

`probe()` answers: kernel, cgroup mode, which controllers are mounted where, which namespace kinds
exist, root or not, lab host or not, which optional tools are installed and (on request) whether
KVM really boots a VM. It sits at the top of labkit: it asks host, namespaces and vm.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field

from . import host, vm
from .host import Controller
from .namespaces import KINDS, kind_available


def tools() -> dict[str, str | None]:
    """Optional tools the later chapters use: path, or None when missing."""
    arch = os.uname().machine
    qemu = vm.ARCHES.get(arch, {}).get("qemu", "qemu-system-" + arch)
    names = {"qemu": qemu, "docker": "docker", "dockerd": "dockerd", "busybox": "busybox",
             "runc": "runc", "unshare": "unshare", "ip": "ip", "vagrant": "vagrant"}
    return {key: shutil.which(cmd) or (f"/usr/bin/{cmd}" if os.path.exists(f"/usr/bin/{cmd}") else None)
            for key, cmd in names.items()}


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
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


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
    )
    if check_kvm and report.kvm["device"] and report.tools["qemu"]:
        report.kvm["usable"] = vm.kvm_usable()
    report.problems = _problems(report)
    return report


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
    if not report.tools.get("busybox"):
        problems.append("busybox is missing: `apt-get install busybox-static` (chapter 4 rootfs)")
    return problems
