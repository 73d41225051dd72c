"""What this machine can do, and the guard that keeps labkit off machines that are not lab hosts.

`probe()` answers the questions `labkit doctor` prints: kernel, cgroup mode (v1, hybrid or v2,
told apart by filesystem magic exactly as runc does), which controllers are mounted where, which
namespace kinds exist, root or not, lab host or not, and which optional tools are installed.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import syscalls
from .errors import NotPermitted

CGROUP_ROOT = "/sys/fs/cgroup"
LAB_HOST_MARKER = Path(os.environ.get("LABKIT_MARKER", "/etc/labkit/lab-host"))
ALLOW_ENV = "LABKIT_ALLOW_HOST"

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                  "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc")


@dataclass
class Controller:
    name: str
    version: int          # 1 or 2
    mountpoint: str


def cgroup_mode(root: str = CGROUP_ROOT) -> str:
    """'v2' (unified), 'hybrid' (v1 controllers plus an empty-ish v2 at unified/) or 'v1'."""
    magic = syscalls.filesystem_magic(root)
    if magic == syscalls.CGROUP2_SUPER_MAGIC:
        return "v2"
    unified = os.path.join(root, "unified")
    try:
        if syscalls.filesystem_magic(unified) == syscalls.CGROUP2_SUPER_MAGIC:
            return "hybrid"
    except OSError:
        pass
    return "v1"


def _cgroup_mounts() -> list[tuple[str, str, list[str]]]:
    """(fstype, mountpoint, super options) of every cgroup mount this process can see."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _source, superopts = right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((fstype, left.split()[4], superopts.split(",")))
    return mounts


def controllers() -> list[Controller]:
    """Every controller with the hierarchy version it is attached to and where it is mounted."""
    found: dict[str, Controller] = {}
    for fstype, mountpoint, opts in _cgroup_mounts():
        if fstype == "cgroup":
            for opt in opts:
                if opt in V1_CONTROLLERS:
                    found.setdefault(opt, Controller(opt, 1, mountpoint))
        else:
            try:
                names = Path(mountpoint, "cgroup.controllers").read_text().split()
            except OSError:
                names = []
            for name in names:
                found.setdefault(name, Controller(name, 2, mountpoint))
    return sorted(found.values(), key=lambda c: c.name)


def is_root() -> bool:
    return os.geteuid() == 0


def is_lab_host() -> bool:
    """A lab host has the marker provisioning writes, or the user opted in with LABKIT_ALLOW_HOST=1."""
    return os.environ.get(ALLOW_ENV) == "1" or LAB_HOST_MARKER.exists()


def tools() -> dict[str, str | None]:
    """Optional tools the later chapters use: path, or None when missing."""
    arch = os.uname().machine
    qemu = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}.get(arch, "qemu-system-" + arch)
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
    from .namespaces import KINDS, kind_available

    release = os.uname().release
    namespaces = [{"kind": k.name, "available": kind_available(k), "min_kernel": k.min_kernel,
                   "isolates": k.isolates} for k in KINDS]
    report = HostReport(
        kernel=release, arch=os.uname().machine, cgroup_mode=cgroup_mode(),
        controllers=controllers(), namespaces=namespaces, root=is_root(),
        lab_host=is_lab_host(), tools=tools(),
        kvm={"device": os.path.exists("/dev/kvm"), "usable": None},
    )
    if check_kvm and report.kvm["device"] and report.tools["qemu"]:
        try:
            from .vm import kvm_usable
            report.kvm["usable"] = kvm_usable()
        except ImportError:
            pass
    report.problems = _problems(report)
    return report


def _problems(report: HostReport) -> list[str]:
    """What stops the lab from working here, each with how to fix it."""
    problems = []
    if not report.root:
        problems.append("not running as root: the lab creates kernel objects; run as root (sudo)")
    if report.root and not report.lab_host:
        problems.append(f"not a lab host: run `make lab` (it writes {LAB_HOST_MARKER}) "
                        f"or set {ALLOW_ENV}=1 to opt in")
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


# --- the guard ------------------------------------------------------------------------------------

def require_lab_host(action: str = "create kernel objects") -> None:
    """Refuse, with a clear reason and the way out, unless this is root on a lab host.

    The first time it passes in a process it starts this process's watchdog (labkit/watchdog.py),
    which first sweeps what dead labkit processes left (a notebook kernel that was killed outright),
    then waits to clean up after this process if it is killed in turn. It runs beside us, so a
    container start never waits for a sweep.
    """
    if not is_root():
        raise NotPermitted(f"to {action} labkit needs root (the lab creates namespaces and cgroups); "
                           "run it as root, e.g. inside the lab VM or with sudo")
    if not is_lab_host():
        raise NotPermitted(f"to {action} labkit needs a lab host: this machine has no {LAB_HOST_MARKER}. "
                           f"Provision it with `make lab` (or vagrant up), or opt in with {ALLOW_ENV}=1")
    from . import watchdog
    watchdog.ensure_running()
