"""The workbook's table of contents: one place that the welcome notebook, the instructor guide and the
handouts index all read, so the map a learner sees is the map that exists.

`minutes` is the time a learner needs to read, run and try the exercise (the instructor guide adds
the measured execution time of each notebook next to it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass(frozen=True)
class Notebook:
    file: str          # name in notebooks/
    chapter: str
    title: str
    minutes: int       # for a learner, reading and trying the exercise
    needs: str = ""    # anything beyond root + a lab host

    @property
    def path(self) -> Path:
        return NOTEBOOKS_DIR / self.file


NOTEBOOKS = (
    Notebook("00-welcome.ipynb", "0 welcome", "The big picture, and is my machine ready?", 10),
    Notebook("01-namespaces.ipynb", "1 namespaces", "The eight kinds, and who shares what", 15),
    Notebook("02-pid.ipynb", "1 namespaces", "pid: being pid 1", 15),
    Notebook("03-uts.ipynb", "1 namespaces", "uts: a hostname of its own", 5),
    Notebook("04-mount.ipynb", "1 namespaces", "mnt: private mounts and propagation", 15),
    Notebook("05-net.ipynb", "1 namespaces", "net: an empty network stack", 10),
    Notebook("06-ipc.ipynb", "1 namespaces", "ipc: shared memory that stays inside", 5),
    Notebook("07-user.ipynb", "1 namespaces", "user: root inside, nobody outside", 15),
    Notebook("08-cgroup-and-time.ipynb", "1 namespaces", "cgroup and time namespaces", 10),
    Notebook("10-cgroups.ipynb", "2 cgroups", "What a cgroup is; v1 and v2", 15),
    Notebook("11-memory.ipynb", "2 cgroups", "memory: the limit and the OOM killer", 20),
    Notebook("12-cpu.ipynb", "2 cgroups", "cpu: quota, period, throttling, weights", 20),
    Notebook("13-pids.ipynb", "2 cgroups", "pids: a fork bomb contained", 15),
    Notebook("14-io.ipynb", "2 cgroups", "io: throttled writes on a loop device", 15, "a loop device"),
    Notebook("15-cpuset.ipynb", "2 cgroups", "cpuset: pinned to a CPU", 10),
    Notebook("16-pressure.ipynb", "2 cgroups", "Pressure, not just limits: throttling, PSI, latency", 20),
    Notebook("20-networking.ipynb", "3 networking", "Containers on a bridge", 35),
    Notebook("21-nat-and-ports.ipynb", "3 networking", "NAT and published ports, inside the lab", 30,
             "iptables (nftables) and conntrack"),
    Notebook("30-container-from-scratch.ipynb", "4 from scratch", "A container, one primitive at a time", 30,
             "busybox-static"),
    Notebook("31-image-layers.ipynb", "4 from scratch", "Image layers and copy-on-write", 15, "overlayfs"),
    Notebook("32-security.ipynb", "4 from scratch", "Why a container's root is not the host's root", 40,
             "uidmap and the labkit-learner user (provisioning); docker.io for the Docker comparison"),
    Notebook("33-oci-images.ipynb", "4 from scratch", "The OCI image format: layers are tars, names are digests",
             30, "docker.io for the docker save half"),
    Notebook("40-docker-engine.ipynb", "5 the engine", "docker run, traced on the wire; exec, pause, stats as primitives", 30,
             "docker.io for the real-Docker half"),
    Notebook("41-swap-the-runtime.ipynb", "5 the engine", "Swap the runtime: labkit behind the real Docker", 25,
             "docker.io, runc and strace; labkit-runtime registered in daemon.json (provisioning)"),
    Notebook("50-containers-vs-hypervisors.ipynb", "6 VMs", "A VM booted beside a container; its emulated NIC beside a veth",
             20, "qemu and a guest kernel (with virtio_net); ethtool"),
)


def present() -> list[Notebook]:
    """The notebooks of the map that exist in this checkout."""
    return [nb for nb in NOTEBOOKS if nb.path.exists()]
