"""What notebook 40 shows: API calls as a timeline, a container's kernel side, and the engine's stack.

Everything is drawn from real state: the calls a `Tracer` recorded on the wire, the namespaces and
cgroup of a container's process as /proc and /sys/fs/cgroup show them, and the chain of parent
processes above a container (who really runs it: containerd-shim for Docker, the engine for labkit).
"""
from __future__ import annotations

import os
from pathlib import Path

import psutil

from .tracer import Call

NAMESPACE_KINDS = ("pid", "mnt", "uts", "ipc", "net", "user", "cgroup", "time")
_ENDPOINT_COLORS = {"/_ping": "#bbbbbb", "/containers/create": "#e07b39", "/containers/{id}/attach": "#6a9fd8",
                    "/containers/{id}/wait": "#9b7fd1", "/containers/{id}/start": "#4caf50"}


# --- the wire --------------------------------------------------------------------------------------

def sequence(calls: list[Call]) -> list[str]:
    """'METHOD /endpoint -> status' for each call, in the order the requests were sent."""
    return [f"{c.method} {c.endpoint} -> {c.status}" for c in sorted(calls, key=lambda c: c.started)]


def plot_timeline(ax, calls: list[Call], title: str) -> None:
    """One bar per call, from request sent to answer ended; a tick where the answer's headers came.

    The shape tells the story: /wait's bar is open before /start is even sent, and ends when the
    container exits; /attach's bar is the container's output stream.
    """
    calls = sorted(calls, key=lambda c: c.started)
    if not calls:
        ax.text(0.5, 0.5, "no calls recorded", ha="center", va="center", transform=ax.transAxes)
        return
    t0 = calls[0].started
    end = max((c.finished or c.started) for c in calls)
    for row, call in enumerate(calls):
        start = (call.started - t0) * 1000
        stop = ((call.finished or end) - t0) * 1000
        color = _ENDPOINT_COLORS.get(call.endpoint, "#999999")
        ax.barh(row, max(stop - start, 0.3), left=start, height=0.6, color=color, edgecolor="#333333")
        if call.answered is not None:
            ax.plot([(call.answered - t0) * 1000] * 2, [row - 0.3, row + 0.3], color="black", lw=1.5)
        label = f"{call.method} {call.endpoint} -> {call.status}"
        ax.text(stop + (end - t0) * 1000 * 0.01, row, label, va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(len(calls) - 0.4, -0.6)
    ax.set_xlim(0, (end - t0) * 1000 * 1.6 + 1)
    ax.set_xlabel("milliseconds since the first request (black tick: answer's headers)")
    ax.set_title(title, fontsize=10, weight="bold")


# --- the kernel side of a container -----------------------------------------------------------------

def namespaces(pid: int) -> dict[str, tuple[str, str]]:
    """kind -> (the container's namespace, this process's), as /proc/PID/ns links read them."""
    found = {}
    for kind in NAMESPACE_KINDS:
        try:
            found[kind] = (os.readlink(f"/proc/{pid}/ns/{kind}"), os.readlink(f"/proc/self/ns/{kind}"))
        except FileNotFoundError:
            continue
    return found


def cgroups(pid: int) -> dict[str, str]:
    """controller -> cgroup path of the process, from /proc/PID/cgroup (v1 lines and the v2 line)."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in (controllers.split(",") if controllers else ["unified"]):
            found[controller] = path
    return found


def memory_limit(pid: int) -> int | None:
    """The memory limit in force for the process, read from its cgroup's file (v1 or v2)."""
    paths = cgroups(pid)
    candidates = []
    if "memory" in paths:
        candidates.append(Path("/sys/fs/cgroup/memory", paths["memory"].lstrip("/"), "memory.limit_in_bytes"))
    if "unified" in paths:
        candidates.append(Path("/sys/fs/cgroup", paths["unified"].lstrip("/"), "memory.max"))
    for path in candidates:
        if path.exists():
            text = path.read_text().strip()
            return None if text == "max" else int(text)
    return None


def _controller_dir(pid: int, v1: str) -> Path:
    """The process's cgroup directory for a v1 controller, or its v2 directory."""
    paths = cgroups(pid)
    if v1 in paths and Path("/sys/fs/cgroup", v1).is_dir():
        return Path("/sys/fs/cgroup", v1, paths[v1].lstrip("/"))
    return Path("/sys/fs/cgroup", paths["unified"].lstrip("/"))


def freezer_state(pid: int) -> str:
    """What the freezer says of the process's cgroup: v1 freezer.state (THAWED / FREEZING / FROZEN),
    or v2's cgroup.freeze (0 / 1) as FROZEN / THAWED."""
    directory = _controller_dir(pid, "freezer")
    if (directory / "freezer.state").exists():
        return (directory / "freezer.state").read_text().strip()
    return "FROZEN" if (directory / "cgroup.freeze").read_text().strip() == "1" else "THAWED"


def cpu_usage_ns(pid: int) -> int:
    """CPU time the process's cgroup has used, in ns: v1 cpuacct.usage, v2 cpu.stat's usage_usec."""
    directory = _controller_dir(pid, "cpuacct")
    if (directory / "cpuacct.usage").exists():
        return int((directory / "cpuacct.usage").read_text())
    stat = dict(line.split() for line in (directory / "cpu.stat").read_text().splitlines())
    return int(stat["usage_usec"]) * 1000


def memory_usage(pid: int) -> int:
    """Bytes the process's cgroup uses now: v1 memory.usage_in_bytes, v2 memory.current."""
    directory = _controller_dir(pid, "memory")
    name = "memory.usage_in_bytes" if (directory / "memory.usage_in_bytes").exists() else "memory.current"
    return int((directory / name).read_text())


def check_memory_limit(pid: int, answer: str) -> tuple[bool, str]:
    """Exercise checker: is `answer` the memory limit (bytes) the kernel enforces on `pid` right now?"""
    try:
        limit = memory_limit(pid)
    except FileNotFoundError:
        limit = None
    if limit is None:
        return False, "the container is gone (or has no limit): run the exercise's setup cell again"
    given = int(str(answer).strip().replace("_", ""))
    if given == limit:
        return True, (f"the kernel enforces {limit} bytes ({limit // 2**20} MiB): the same number the CLI "
                      "sent as HostConfig.Memory in its create call, written by the engine into the "
                      "container's cgroup")
    if given == limit // 2**20:
        return False, f"{given} is the limit in MiB; the API and the kernel count bytes"
    return False, f"{given} bytes is not the limit the kernel enforces on that container"


def kernel_table(pid: int) -> str:
    """A text table: which namespaces differ from ours, and which cgroups hold the process."""
    rows = [f"{'namespace':<10} {'container':<22} {'this notebook':<22} new?"]
    for kind, (theirs, ours) in namespaces(pid).items():
        rows.append(f"{kind:<10} {theirs:<22} {ours:<22} {'yes' if theirs != ours else 'no (shared)'}")
    groups = cgroups(pid)
    rows.append("")
    rows.append(f"{'controller':<10} cgroup")
    for controller in ("memory", "cpu", "pids"):
        if controller in groups:
            rows.append(f"{controller:<10} {groups[controller]}")
    limit = memory_limit(pid)
    rows.append(f"memory limit in force: {limit if limit is not None else 'none'} bytes")
    return "\n".join(rows)


# --- who runs the container: the process chain --------------------------------------------------------

def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _cmdline(pid: int, width: int = 48) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    return text if len(text) <= width else text[:width - 3] + "..."


def ancestry(pid: int, stop_at: int | None = None) -> list[dict]:
    """The container's process and its parents, up to `stop_at` (included) or pid 1 (not included)."""
    chain = []
    while pid > 1:
        try:
            chain.append({"pid": pid, "comm": _comm(pid), "cmdline": _cmdline(pid)})
            if pid == stop_at:
                break
            pid = psutil.Process(pid).ppid()      # /proc/PID/stat's 4th field, parsed by psutil
        except (OSError, psutil.Error):
            break
    return chain


def plot_stack(ax, title: str, layers: list[tuple[str, str, str]]) -> None:
    """Boxes top to bottom: (name, what it does, what was seen on this machine)."""
    from matplotlib.patches import FancyBboxPatch

    n = len(layers)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, n * 1.3)
    ax.axis("off")
    palette = ["#ffffff", "#fde9c9", "#fff3b0", "#e3f1da", "#e3f1da", "#d9e7f5", "#d9e7f5"]
    for i, (name, what, seen) in enumerate(layers):
        y = (n - 1 - i) * 1.3 + 0.15
        color = "#d9e7f5" if "kernel" in name.lower() else palette[min(i, len(palette) - 1)]
        ax.add_patch(FancyBboxPatch((0.2, y), 9.6, 1.0, boxstyle="round,pad=0.02", facecolor=color,
                                    edgecolor="#555555"))
        ax.text(0.4, y + 0.68, name, fontsize=9, weight="bold", va="center")
        ax.text(0.4, y + 0.30, what, fontsize=8, va="center")
        if seen:
            ax.text(9.6, y + 0.5, seen, fontsize=7.5, va="center", ha="right", family="monospace",
                    color="#1f4e79")
        if i < n - 1:
            ax.annotate("", xy=(5, y - 0.28), xytext=(5, y + 0.02), arrowprops=dict(arrowstyle="->"))
    ax.set_title(title, fontsize=10, weight="bold")


def _pidfile(path: str) -> int | None:
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def docker_layers(container_pid: int | None, socket: str = "/var/run/docker.sock") -> list[tuple[str, str, str]]:
    """Docker's stack, each layer with the process or file that is it on this machine right now."""
    chain = ancestry(container_pid) if container_pid else []
    shim = next((p for p in chain if p["comm"].startswith("containerd-shim")), None)
    dockerd = _pidfile("/var/run/docker.pid")
    containerd = _pidfile("/var/run/docker/containerd/containerd.pid") or _pidfile("/run/containerd/containerd.pid")
    return [
        ("docker CLI (client)", "`docker container run` -> HTTP requests", "/usr/bin/docker"),
        ("REST API", "POST /containers/create, /attach, /wait, /start", socket),
        ("dockerd (engine)", "images, names, logs, networks; the API", f"pid {dockerd}" if dockerd else "not running"),
        ("containerd", "container lifecycle (tasks), over gRPC", f"pid {containerd}" if containerd else "?"),
        ("containerd-shim + runc", "the shim parents the container; runc makes it, then exits",
         f"shim pid {shim['pid']}" if shim else "?"),
        ("Linux kernel", "namespaces + cgroups: pop! a container",
         f"container pid {container_pid}" if container_pid else ""),
    ]


def labkit_layers(container_pid: int | None, engine_pid: int | None, socket: str) -> list[tuple[str, str, str]]:
    """labkit's stack: the same API, then labkit's own modules where Docker has containerd and runc."""
    return [
        ("docker CLI (client)", "the very same binary and requests", "/usr/bin/docker"),
        ("REST API: labkit.engine.api", "the same paths, Docker's JSON and stream formats", socket),
        ("engine: labkit.engine.state", "names, logs, waits; in memory",
         f"pid {engine_pid}" if engine_pid else ""),
        ("runtime: labkit.engine.runtime -> Container", "create (process waits) + start, like runc", ""),
        ("labkit.namespaces / cgroups / rootfs", "clone + unshare, cgroup files, overlay + pivot_root", ""),
        ("Linux kernel", "the same namespaces + cgroups",
         f"container pid {container_pid}" if container_pid else ""),
    ]
