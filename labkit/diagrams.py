"""Pictures of the seed's ideas, drawn with matplotlib from this machine's real state.

The seed's slides are images on the web; the workbook draws its own, so that the kernel release in
the picture is the learner's kernel, and the namespace inodes are the ones /proc reports right now.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

_COLORS = {"kernel": "#d9e7f5", "ns": "#fde9c9", "cg": "#e3f1da", "app": "#ffffff", "hw": "#e6e6e6",
           "vm": "#f3e0ef", "hyp": "#f6d5d5"}


def _box(ax, x, y, w, h, text, color, fontsize=9, weight="normal", edge="#555555", style="round,pad=0.02"):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=color, edgecolor=edge, lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, weight=weight, wrap=True)


def containers_vs_vms(kernel_release: str, containers: list[dict], cgroup_mode: str):
    """Left: containers - isolated areas of ONE kernel, each with namespaces and a cgroup.
    Right: a hypervisor carving a machine into VMs, each with its own kernel.

    `containers` are dicts with "name", "pid" and "limits" (text) describing real processes.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax in (left, right):
        ax.set_xlim(0, 10), ax.set_ylim(0, 10), ax.axis("off")

    left.set_title("Containers: isolated areas of one OS", fontsize=11, weight="bold")
    _box(left, 0.2, 0.2, 9.6, 1.2, "hardware: CPUs, RAM, disks, NICs", _COLORS["hw"])
    _box(left, 0.2, 1.6, 9.6, 1.6, f"ONE Linux kernel  {kernel_release}\n"
                                   f"namespaces isolate - cgroups ({cgroup_mode}) limit", _COLORS["kernel"],
         weight="bold")
    width = 9.6 / max(len(containers), 1)
    for i, c in enumerate(containers):
        x = 0.2 + i * width
        _box(left, x + 0.1, 3.5, width - 0.2, 1.4, f"cgroup\n{c['limits']}", _COLORS["cg"], fontsize=8)
        _box(left, x + 0.1, 5.1, width - 0.2, 2.2, "namespaces\npid mnt net uts\nipc user cgroup time",
             _COLORS["ns"], fontsize=8)
        _box(left, x + 0.1, 7.5, width - 0.2, 1.9, f"{c['name']}\nhost pid {c['pid']}", _COLORS["app"],
             fontsize=8)

    right.set_title("Virtual machines: a machine carved by a hypervisor", fontsize=11, weight="bold")
    _box(right, 0.2, 0.2, 9.6, 1.2, "hardware: CPUs, RAM, disks, NICs", _COLORS["hw"])
    _box(right, 0.2, 1.6, 9.6, 1.3, "hypervisor (qemu + KVM or TCG)", _COLORS["hyp"], weight="bold")
    for i in range(2):
        x = 0.2 + i * 4.8
        _box(right, x + 0.1, 3.1, 4.6, 1.8, "virtual CPU, virtual RAM,\nvirtual disk, virtual NIC",
             _COLORS["vm"], fontsize=8)
        _box(right, x + 0.1, 5.1, 4.6, 2.2, "its OWN kernel\n(boots, seconds)", _COLORS["kernel"], fontsize=9)
        _box(right, x + 0.1, 7.5, 4.6, 1.9, f"VM {i + 1}: apps", _COLORS["app"], fontsize=8)
    fig.tight_layout()
    return fig


def engine_stack(highlight: str | None = None):
    """The seed's workflow: CLI -> REST API (containers/create) -> engine -> runtime -> kernel."""
    layers = [
        ("docker CLI", "`docker container run ...`"),
        ("REST API", "POST /containers/create, /start, /wait"),
        ("engine (dockerd)", "images, names, logs, API"),
        ("containerd + shim", "container lifecycle"),
        ("runc (OCI runtime)", "clone(), unshare(), cgroups, pivot_root"),
        ("Linux kernel", "namespaces + cgroups: pop! a container"),
    ]
    fig, ax = plt.subplots(figsize=(7, 4.6))
    ax.set_xlim(0, 10), ax.set_ylim(0, len(layers) * 1.4 + 0.2), ax.axis("off")
    for i, (name, what) in enumerate(layers):
        y = (len(layers) - 1 - i) * 1.4 + 0.2
        color = "#ffe08a" if highlight and highlight.lower() in name.lower() else _COLORS["kernel"]
        _box(ax, 0.3, y, 9.4, 1.0, f"{name}\n{what}", color, fontsize=9)
        if i < len(layers) - 1:
            ax.annotate("", xy=(5, y - 0.37), xytext=(5, y + 0.02),
                        arrowprops=dict(arrowstyle="->", color="#333333"))
    ax.set_title("The Docker engine is modular", fontsize=11, weight="bold")
    fig.tight_layout()
    return fig
