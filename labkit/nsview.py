"""Looking at namespaces from the outside: who shares what, read live from /proc.

Everything here only *reads* the kernel's state - it creates nothing:

- /proc/PID/ns/KIND     a namespace's identity is the inode of this file; equal inodes = shared
- /proc/PID/status      NSpid: the process's pid in every pid namespace it is visible in,
                        outermost first ("NSpid: 48213 1" = host pid 48213, pid 1 inside)
- /proc/PID/stat        state (R, S, Z for a zombie ...) and the parent's pid

The notebooks of chapter 1 draw their tables and pictures from these functions, and their
exercises check the learner's process with `check_namespaces`.
"""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Iterable, Mapping

import psutil

from . import cleanup, host
from .binaries import find_busybox
from .errors import LabkitError
from .namespaces import identity
from .nskinds import KINDS, parse_kinds

KIND_NAMES = tuple(k.name for k in KINDS)
# psutil names the state letter of /proc/PID/stat; the tables show the kernel's letter (Z, S, R, ...)
_STATE_LETTER = {psutil.STATUS_RUNNING: "R", psutil.STATUS_SLEEPING: "S", psutil.STATUS_DISK_SLEEP: "D",
                 psutil.STATUS_STOPPED: "T", psutil.STATUS_TRACING_STOP: "t", psutil.STATUS_ZOMBIE: "Z",
                 psutil.STATUS_DEAD: "X", psutil.STATUS_WAKING: "W",
                 psutil.STATUS_IDLE: "I", psutil.STATUS_PARKED: "P"}


# --- who shares which namespace --------------------------------------------------------------------

def sharing(processes: Mapping[str, int | str]) -> dict[str, dict[str, int]]:
    """{label: {kind: inode}} for a set of labelled processes, e.g. {"notebook": "self", "box": 4242}."""
    return {label: identity(pid) for label, pid in processes.items()}


def differing_kinds(pid: int | str, reference: int | str = "self") -> set[str]:
    """The kinds in which `pid` is in a different namespace from `reference`."""
    mine, theirs = identity(pid), identity(reference)
    return {kind for kind in mine if mine[kind] != theirs.get(kind)}


def format_table(processes: Mapping[str, int | str]) -> str:
    """A text table: one row per kind, one column per process; each cell is the namespace's inode,
    followed by "=" when it is the same namespace as the first column's and "NEW" when not."""
    ids = sharing(processes)
    labels = list(ids)
    first = labels[0]
    rows = []
    for kind in KIND_NAMES:
        cells = []
        for label in labels:
            inode = ids[label].get(kind)
            mark = "" if label == first else ("=" if inode == ids[first].get(kind) else "NEW")
            cells.append(f"{kind}:[{inode}] {mark}".rstrip())
        rows.append((kind, cells))
    width = max(len(label) for label in labels)
    width = max(width, *(len(cell) for _, cells in rows for cell in cells)) + 3
    lines = ["kind    " + "".join(f"{label:<{width}}" for label in labels).rstrip()]
    lines += [f"{kind:<8}" + "".join(f"{cell:<{width}}" for cell in cells).rstrip() for kind, cells in rows]
    return "\n".join(lines)


def sharing_summary(processes: Mapping[str, int | str]) -> str:
    """Deterministic lines (no inode numbers): which kinds each process has of its own, compared
    with the first process. Good for a checked notebook cell."""
    ids = sharing(processes)
    labels = list(ids)
    first = labels[0]
    lines = []
    for label in labels[1:]:
        new = [k for k in KIND_NAMES if ids[label].get(k) != ids[first].get(k)]
        lines.append(f"{label}: own {', '.join(new) if new else 'nothing'}; "
                     f"shares with {first}: {', '.join(k for k in KIND_NAMES if k not in new) or 'nothing'}")
    return "\n".join(lines)


_PALETTE = ("#f4a261", "#2a9d8f", "#e76f51", "#8ab17d", "#e9c46a", "#9b5de5", "#00bbf9", "#f15bb5")


def draw(processes: Mapping[str, int | str], ax=None, title: str | None = None):
    """Draw the sharing table: one column per process, one row per kind. Cells of the same colour are
    the same namespace (same inode); grey is the first column's namespace. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ids = sharing(processes)
    labels = list(ids)
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.4 + 2.3 * len(labels), 4.6))
    else:
        fig = ax.figure
    colors: dict[tuple[str, int], str] = {}
    for row, kind in enumerate(KIND_NAMES):
        y = len(KIND_NAMES) - 1 - row
        ax.text(-0.1, y + 0.5, kind, ha="right", va="center", fontsize=10, family="monospace")
        for col, label in enumerate(labels):
            inode = ids[label].get(kind)
            if inode == ids[labels[0]].get(kind):
                color = "#d9d9d9"
            else:
                color = colors.setdefault((kind, inode), _PALETTE[len(colors) % len(_PALETTE)])
            ax.add_patch(Rectangle((col + 0.04, y + 0.06), 0.92, 0.88, facecolor=color, edgecolor="#555555"))
            ax.text(col + 0.5, y + 0.5, str(inode), ha="center", va="center", fontsize=8, family="monospace")
    for col, label in enumerate(labels):
        ax.text(col + 0.5, len(KIND_NAMES) + 0.2, label, ha="center", va="bottom", fontsize=10, weight="bold")
    ax.set_xlim(-1.1, len(labels))
    ax.set_ylim(0, len(KIND_NAMES) + 0.9)
    ax.axis("off")
    ax.set_title(title or "Namespaces by inode: grey = same as " + labels[0] + ", colour = a namespace of its own",
                 fontsize=10)
    return fig


def check_namespaces(pid: int | str, new: str | Iterable[str], reference: int | str = "self") -> tuple[bool, str]:
    """Exercise checker: is `pid` a live process in new namespaces of exactly the kinds `new`,
    sharing every other kind with `reference`? Read from /proc/PID/ns; returns (ok, explanation)."""
    wanted = {k.name for k in parse_kinds(new)}
    pid = int(pid)
    if not os.path.exists(f"/proc/{pid}/ns"):
        return False, f"there is no process {pid} (has it exited already?)"
    own = differing_kinds(pid, reference)
    if own == wanted:
        return True, f"/proc/{pid}/ns shows new namespaces exactly for: {', '.join(sorted(own))}"
    missing, extra = wanted - own, own - wanted
    parts = []
    if missing:
        parts.append("still shared (should be new): " + ", ".join(sorted(missing)))
    if extra:
        parts.append("new (should be shared): " + ", ".join(sorted(extra)))
    return False, f"/proc/{pid}/ns: " + "; ".join(parts)


# --- processes, as the kernel sees them ----------------------------------------------------------

@dataclass(frozen=True)
class ProcInfo:
    pid: int             # host pid (as we, outside, see it)
    ppid: int
    state: str           # one letter: R running, S sleeping, Z zombie, ...
    comm: str
    nspid: tuple         # pids from outermost to innermost namespace

    @property
    def inner_pid(self) -> int:
        return self.nspid[-1]


def proc_info(pid: int) -> ProcInfo:
    """State, parent and NSpid of one process: /proc/PID/stat (read by psutil) and /proc/PID/status."""
    try:
        proc = psutil.Process(int(pid))
        with proc.oneshot():
            ppid, status, comm = proc.ppid(), proc.status(), proc.name()
    except psutil.NoSuchProcess:
        raise FileNotFoundError(f"/proc/{pid}") from None
    return ProcInfo(int(pid), ppid, _STATE_LETTER.get(status, "?"), comm, nspid(pid))


def nspid(pid: int | str) -> tuple[int, ...]:
    """The NSpid line of /proc/PID/status: this process's pid in each nested pid namespace."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return tuple(int(x) for x in line.split()[1:])
    return (int(pid),)


def descendants(pid: int) -> list[ProcInfo]:
    """`pid` and every process below it (zombies included), by walking the parent links in /proc.

    For pid 1 of a pid namespace these are the processes of that namespace: an orphan inside is
    re-parented to pid 1, never to anything outside."""
    children: dict[int, list[ProcInfo]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                info = proc_info(int(entry))
            except (OSError, ValueError):
                continue  # it exited while we looked
            children.setdefault(info.ppid, []).append(info)
    found, todo = [], [pid]
    try:
        found.append(proc_info(pid))
    except OSError:
        return []
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def zombies(pid: int) -> list[ProcInfo]:
    """The zombies (state Z: exited, nobody has collected their exit status yet) below `pid`."""
    return [p for p in descendants(pid) if p.state == "Z"]


# --- a real Docker container, where Docker runs --------------------------------------------------

def docker_running(timeout: float = 10) -> bool:
    """Does `docker info` succeed (a client and a daemon that answers)?"""
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _busybox_tar() -> bytes:
    """A one-binary root filesystem (static busybox as /bin/sleep) as a tar, for `docker import`."""
    busybox = find_busybox()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        link = tarfile.TarInfo("bin/sleep")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    return buf.getvalue()


class DockerSleeper:
    """A real Docker container (`--network none`) running `sleep`, for as long as the `with` lasts.

    >>> with DockerSleeper() as box:
    ...     identity(box.pid)

    The image is imported from the host's static busybox (no registry needed) and removed after,
    with the container. Both are named labkit-... and claimed, so a sweep finds them after a crash.
    """

    def __init__(self, seconds: int = 120):
        self.seconds = seconds
        self.name = cleanup.unique_name("nsbox")
        self.image = cleanup.unique_name("nsimg")
        self.pid: int | None = None

    def _docker(self, *args, input=None):
        result = subprocess.run(["docker", *args], input=input, capture_output=True, timeout=120)
        if result.returncode != 0:
            raise LabkitError(f"docker {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode().strip()

    def __enter__(self) -> "DockerSleeper":
        host.require_lab_host("start a Docker container")
        cleanup.claim("docker-image", self.image)
        cleanup.claim("docker-container", self.name)
        try:
            self._docker("import", "-", f"{self.image}:latest", input=_busybox_tar())
            self._docker("run", "-d", "--network", "none", "--name", self.name, f"{self.image}:latest",
                         "/bin/sleep", str(self.seconds))
            self.pid = int(self._docker("inspect", "-f", "{{.State.Pid}}", self.name))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)
        cleanup.release("docker-container", self.name)
        subprocess.run(["docker", "rmi", "-f", f"{self.image}:latest"], capture_output=True, timeout=60)
        cleanup.release("docker-image", self.image)
