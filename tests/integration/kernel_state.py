"""What the kernel says exists right now - read from /sys/fs/cgroup, /proc, /run/netns and sysfs,
never from labkit's own bookkeeping - for the fault, bad-input and security tests.

    before = snapshot()
    ...inject a fault...
    assert_gone(names)                       # every object the experiment named is gone
    assert new_objects(before, snapshot(), owners={child_pid}) == []

Other engineers run the suite on this machine at the same time, so a plain before/after diff would
see their objects come and go. `new_objects` therefore keeps only objects that are new AND belong
to the processes under test (by the owner record labkit writes before it creates anything), or to
nobody, or to a dead process (what a leak looks like once its owner is gone).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from labkit import cleanup, watchdog
from labkit.emulation import scaled

PREFIX = cleanup.PREFIX
NAME = re.compile(r"labkit-[A-Za-z0-9_-]+")      # labkit's generated names have no '.'; files may
STATE = cleanup.STATE_DIR


def _cgroup_mounts() -> list[str]:
    roots = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] in ("cgroup", "cgroup2"):
                roots.append(left.split()[4])
    return roots


def cgroups() -> set[str]:
    """Every labkit-* cgroup directory (and everything below one) in every hierarchy."""
    found = set()
    parent = os.environ.get("LABKIT_CGROUP_PARENT", "").strip("/")
    for root in _cgroup_mounts():
        starts = [root] + ([os.path.join(root, parent)] if parent else [])
        for start in starts:
            try:
                entries = os.scandir(start)
            except OSError:
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name.startswith(PREFIX):
                    for dirpath, _dirs, _files in os.walk(entry.path):
                        found.add(dirpath)
    return found


def mounts() -> set[str]:
    """Mount points of labkit objects in this process's mount table."""
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split(" - ", 1)[0].split()[4]
            if f"/{PREFIX}" in mountpoint:
                found.add(mountpoint)
    return found


def netns() -> set[str]:
    path = Path("/run/netns")
    return {p.name for p in path.iterdir() if p.name.startswith(PREFIX)} if path.is_dir() else set()


def links() -> set[str]:
    """labkit-* network interfaces in the host's network namespace (sysfs lists them)."""
    return {name for name in os.listdir("/sys/class/net") if name.startswith(PREFIX)}


def processes() -> set[str]:
    """'PID CGROUP' of every process inside a labkit cgroup, and 'PID qemu NAME' for labkit VMs."""
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cgroup_lines = Path(entry.path, "cgroup").read_text().splitlines()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        for line in cgroup_lines:
            match = NAME.search(line.split(":", 2)[2])
            if match:
                found.add(f"{entry.name} {match.group()}")
                break
        if b"qemu-system" in cmdline.split(b"\0")[0]:
            match = NAME.search(cmdline.decode(errors="replace"))
            if match:
                found.add(f"{entry.name} qemu {match.group()}")
    return found


def state_dirs() -> set[str]:
    """labkit-* entries in /run/labkit/work and /run/labkit/vm, and engine records (the record names
    the server's socket; a socket outliving its server is a leftover the record leads to)."""
    found = set()
    for sub in ("work", "vm"):
        path = STATE / sub
        if path.is_dir():
            found |= {str(p) for p in path.iterdir() if p.name.startswith(PREFIX)}
    engines = STATE / "engine"
    if engines.is_dir():
        found |= {str(p) for p in engines.glob(f"{PREFIX}*.json")}
    return found


def snapshot() -> dict[str, set[str]]:
    return {"cgroup": cgroups(), "mount": mounts(), "netns": netns(), "link": links(),
            "process": processes(), "state": state_dirs()}


def count(snap: dict[str, set[str]]) -> int:
    return sum(len(v) for v in snap.values())


def _owner_of(name: str) -> tuple[int | None, bool]:
    """The owner record for a labkit name, whatever kind claimed it."""
    owners = cleanup.OWNERS_DIR
    if owners.is_dir():
        for kind_dir in owners.iterdir():
            if (kind_dir / name).exists():
                return cleanup.owner(kind_dir.name, name)
    return None, False


def new_objects(before: dict, after: dict, owners: set[int] | None = None) -> list[str]:
    """Objects in `after` but not `before` that belong to `owners` (default: this process) or to
    nobody - not to another notebook or test run, alive or dead (their own checks catch theirs).

    An object another process is removing right now can lose its owner record between our two
    looks; so an object counts only if it still exists after its owner was looked up (labkit
    claims before it creates and releases after it removed, so a record outlives its object)."""
    owners = owners if owners is not None else {os.getpid()}
    candidates = []
    for kind, items in after.items():
        for item in sorted(items - before.get(kind, set())):
            match = NAME.search(item)
            pid, _alive = _owner_of(match.group()) if match else (None, False)
            if pid in owners or pid is None:
                candidates.append((kind, item, pid))
    fresh = snapshot() if candidates else {}
    return [f"{kind}: {item}" + (f" (owner {pid})" if pid else " (no owner)")
            for kind, item, pid in candidates if item in fresh.get(kind, ())]


def present(names) -> list[str]:
    """Every kernel object (of any kind) whose path or name mentions one of `names`."""
    names = [n for n in names if n]
    snap = snapshot()
    return [f"{kind}: {item}" for kind, items in snap.items() for item in sorted(items)
            if any(re.search(re.escape(n) + r"(?![A-Za-z0-9])", item) for n in names)]


def alive(pids) -> list[int]:
    """Which of `pids` still exist as processes (zombies count as gone)."""
    result = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            result.append(pid)
    return result


def wait_until(condition, timeout: float = 20.0, interval: float = 0.1) -> bool:
    """Poll `condition` until it holds or `timeout` seconds (on hardware; labkit.emulation stretches
    it on an emulated CPU) have passed; its last answer."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def assert_gone(names=(), pids=(), timeout: float = 0.0) -> None:
    """Fail unless no kernel object names any of `names` and none of `pids` runs (after `timeout`)."""
    if timeout:
        wait_until(lambda: not present(names) and not alive(pids), timeout)
    left, running = present(names), alive(pids)
    assert not left and not running, (f"left behind: {left}" if left else "") + \
        (f" processes still running: {running}" if running else "")


def watchdog_of(owner: int, timeout: float = 10.0) -> int | None:
    """The pid of the watchdog labkit started for the live process `owner`: its child named
    labkit-watchdog (a fork of the owner or a fresh interpreter: either names itself so, once
    started - hence the wait), or None."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        for pid, (parent, _) in watchdog.running().items():
            if parent == owner:
                return pid
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
