"""Mount propagation, shown with a real mount made on each side of a mount namespace.

A new mount namespace starts as a *copy* of its parent's mount table. Whether a mount made later on
one side appears on the other depends on the propagation type of the mount it is made under
(mount_namespaces(7); the optional fields of /proc/PID/mountinfo show it):

    shared:N   a peer group: mounts and unmounts under it propagate to every peer, both ways
    master:N   a slave of peer group N: receives from it, sends nothing back
    (none)     private: nothing goes in or out

`PropagationDemo(mode)` makes one tmpfs of ours (under /run/labkit/work/labkit-prop-...) shared on the
host, starts a process in a new mount namespace whose copy of it is a peer, turns that copy into
`mode` from inside (`mount --make-private|--make-slave`), then mounts a tmpfs on each side and reads
both mount tables from /proc to see what crossed.

`pivot_root_refusal()` shows why `/` is made private before pivot_root: the kernel refuses to pivot
while the mounts involved are shared (EINVAL), because the old root's unmount would propagate.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from . import cleanup, host, namespaces, syscalls
from .errors import InvalidValue
from .mountinfo import read as read_mountinfo

MODES = ("shared", "private", "slave")


def mountinfo(pid: int | str = "self") -> dict[str, str]:
    """{mountpoint: propagation} for every mount `pid` sees; propagation is the optional fields
    of /proc/PID/mountinfo ("shared:5", "master:5", "shared:7 master:5") or "private"."""
    return {m["mountpoint"]: m["propagation"] or "private" for m in read_mountinfo(pid)}


def is_mounted(path: str | os.PathLike, pid: int | str = "self") -> bool:
    """Is something mounted exactly at `path` in the mount namespace of `pid`?"""
    return str(path) in mountinfo(pid)


def _unshare_mounts() -> None:
    """Setup step for spawn (runs in the child): a new mount namespace, propagation left as copied.
    (spawn's own "mnt" kind would make / private at once, which is right for containers but
    would hide the very thing this demo shows.)"""
    syscalls.unshare(syscalls.CLONE_NEWNS)


class PropagationDemo:
    """A tmpfs shared with a process in a new mount namespace, whose copy is turned into `mode`.

    >>> with PropagationDemo("slave") as demo:
    ...     demo.mount_on_host(); demo.mount_in_box()
    ...     demo.crossed()      # {'host -> box': True, 'box -> host': False}
    """

    def __init__(self, mode: str, cgroup=None):
        if mode not in MODES:
            raise InvalidValue("propagation mode", mode, "one of " + ", ".join(MODES))
        self.mode, self.cgroup = mode, cgroup   # cgroup: where the box goes (a sweep kills it there)
        self.name = cleanup.unique_name("prop")
        self.path = cleanup.WORK_DIR / self.name
        self.box: namespaces.Process | None = None
        self._mounted = False

    @property
    def from_host(self) -> Path:
        return self.path / "from-host"

    @property
    def from_box(self) -> Path:
        return self.path / "from-box"

    def __enter__(self) -> "PropagationDemo":
        host.require_lab_host("make mounts for the propagation demo")
        cleanup.claim("dir", self.name)
        cleanup.claim("mount", self.name)
        try:
            cleanup.work_dir(self.name)
            syscalls.mount("labkit-prop", str(self.path), "tmpfs", 0, "size=1m")
            self._mounted = True
            syscalls.mount(None, str(self.path), None, syscalls.MS_SHARED)  # our mount only
            self.from_host.mkdir()
            self.from_box.mkdir()
            self.box = namespaces.spawn(["sleep", "600"], None, setup=[_unshare_mounts], cgroup=self.cgroup,
                                        stdout=namespaces.DEVNULL, stderr=namespaces.DEVNULL)
            if self.mode != "shared":
                self.run_in_box("mount", f"--make-{self.mode}", str(self.path))
        except BaseException:
            self.close()
            raise
        return self

    def run_in_box(self, *argv: str) -> str:
        result = namespaces.enter(self.box.pid, "mnt", list(argv))
        if result.returncode != 0:
            raise OSError(f"{' '.join(argv)} in the box failed: {result.stderr.strip()}")
        return result.stdout

    def mount_on_host(self) -> None:
        """A tmpfs on <demo>/from-host, made in the host's (the notebook's) mount namespace."""
        syscalls.mount("labkit-host-side", str(self.from_host), "tmpfs", 0, "size=1m")

    def mount_in_box(self) -> None:
        """A tmpfs on <demo>/from-box, made inside the box's mount namespace (mount(8) via setns)."""
        self.run_in_box("mount", "-t", "tmpfs", "-o", "size=1m", "labkit-box-side", str(self.from_box))

    def propagation(self) -> dict[str, str]:
        """The demo mount's propagation as each side's /proc/PID/mountinfo reports it."""
        return {"host": mountinfo("self").get(str(self.path), "?"),
                "box": mountinfo(self.box.pid).get(str(self.path), "?")}

    def crossed(self) -> dict[str, bool]:
        """Which mount reached the other side, read from both mount tables."""
        return {"host -> box": is_mounted(self.from_host, self.box.pid),
                "box -> host": is_mounted(self.from_box, "self")}

    def close(self) -> None:
        if self.box is not None:
            self.box.kill(signal.SIGKILL)
            self.box.wait()
            self.box = None
        if self._mounted:  # detach the tmpfs and everything mounted under it, on our side
            syscalls.umount2(str(self.path), syscalls.MNT_DETACH)
            self._mounted = False
        cleanup.release("mount", self.name)
        if self.path.exists():
            self.path.rmdir()
        cleanup.release("dir", self.name)

    def __exit__(self, *exc) -> None:
        self.close()


def propagation_table(cgroup=None) -> list[dict]:
    """Run the demo once per mode; one row per mode: what each side's mountinfo says and what crossed."""
    rows = []
    for mode in MODES:
        with PropagationDemo(mode, cgroup=cgroup) as demo:
            demo.mount_on_host()
            demo.mount_in_box()
            rows.append({"mode": mode, **demo.propagation(), **demo.crossed()})
    return rows


_PIVOT_SCRIPT = r"""
new=$1
mount -t tmpfs -o size=1m labkit-newroot "$new" && mkdir "$new/old"
mount --make-rshared /
if err=$(pivot_root "$new" "$new/old" 2>&1); then echo "shared: ok"; else echo "shared: refused: ${err##*: }"; fi
mount --make-rprivate /
if err=$(pivot_root "$new" "$new/old" 2>&1); then echo "private: ok"; else echo "private: refused: ${err##*: }"; fi
"""


def pivot_root_refusal() -> dict[str, str]:
    """In a throwaway mount namespace, try pivot_root(2) with / shared, then with / private.

    Returns {"shared": ..., "private": ...}, each "ok" or "refused: <the kernel's error>".
    Nothing reaches the host: the namespace starts rprivate (spawn's "mnt"), `--make-rshared` there
    creates peer groups of its own, and every mount dies with the namespace.
    """
    name = cleanup.unique_name("pivot")
    cleanup.claim("dir", name)
    path = cleanup.work_dir(name)
    try:
        result = namespaces.run(["sh", "-c", _PIVOT_SCRIPT, "pivot", str(path)], "mnt")
    finally:
        path.rmdir()
        cleanup.release("dir", name)
    outcome = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    if set(outcome) != {"shared", "private"}:
        raise OSError(f"pivot_root demo did not finish: {result.stdout!r} {result.stderr!r}")
    return outcome
