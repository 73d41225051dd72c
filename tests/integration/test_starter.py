"""labkit.starter on the real kernel: who forks a container, when it joins its cgroup, and what is
left when its owner dies - read from /proc and cgroupfs, not from labkit's bookkeeping."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kernel_state as ks
from labkit import starter
from labkit.container import Container
from labkit.errors import LabkitError, NotFound

pytestmark = pytest.mark.root

PY = sys.executable
ENV = dict(os.environ, LABKIT_ALLOW_HOST="1", PYTHONUNBUFFERED="1")
ENV.pop("LABKIT_NO_WATCHDOG", None)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie has exited; only its parent has not collected it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if status(int(entry.name))["PPid"] == str(pid):
                    found.append(int(entry.name))
            except (OSError, KeyError):
                continue
    return found


def until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_the_processes_that_fork_a_container_are_single_threaded_and_not_this_one():
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)   # this process: threaded, like a kernel
    busy.start()
    try:
        assert int(status(os.getpid())["Threads"]) >= 2
        with Container("busybox", ["sleep", "30"], mem_limit="32M") as running, \
                Container("busybox", ["sleep", "30"], mem_limit="32M") as created:
            running.start()                 # started at once: the starter forks it itself
            waiter = int(status(running.pid)["PPid"])         # spawn's waiter, outside the pid ns
            boss = int(status(waiter)["PPid"])
            assert boss == starter.pid() and int(status(boss)["PPid"]) == os.getpid()
            created.create()                # waits before exec: a shim of the starter holds it
            waiter2 = int(status(created.pid)["PPid"])
            shim = int(status(waiter2)["PPid"])
            assert shim != boss and int(status(shim)["PPid"]) == boss
            for pid in (waiter, boss, waiter2, shim):          # every fork happened in one thread
                assert status(pid)["Threads"] == "1", (pid, status(pid))
    finally:
        stop.set()
        busy.join()


def test_the_container_is_in_its_cgroup_before_it_execs():
    threads = threading.active_count()
    with Container("busybox", ["sleep", "30"], mem_limit="32M", pids_limit=16) as box:
        box.create()                          # set up, waiting just before exec
        assert threading.active_count() == threads   # no thread in this process holds it
        exe = os.readlink(f"/proc/{box.pid}/exe")
        assert os.path.basename(exe).startswith("python"), exe   # not exec'd yet
        cgroups = Path(f"/proc/{box.pid}/cgroup").read_text()
        for controller in ("memory", "pids"):
            assert box.cgroup.relpath in Path(box.cgroup.path(controller)).as_posix()
            assert any(box.cgroup.relpath in line and (controller in line.split(":")[1] or
                                                       line.startswith("0::"))
                       for line in cgroups.splitlines()), cgroups
        box.start()
        assert until(lambda: os.readlink(f"/proc/{box.pid}/exe") == "/sbin/tini")


OWNER = r"""
import json, os, sys, threading
from labkit import starter
from labkit.container import Container
boxes = []
def start():
    box = Container("busybox", ["sleep", "300"], mem_limit="32M")
    box.start()
    boxes.append(box)
if sys.argv[1] == "thread":      # started from a thread that then ends: PDEATHSIG would fire now
    t = threading.Thread(target=start)
    t.start()
    t.join()
else:
    start()
box = boxes[0]
waiter = int(open(f"/proc/{box.pid}/status").read().split("PPid:")[1].split()[0])
print("READY " + json.dumps({"starter": starter.pid(), "waiter": waiter, "pid": box.pid,
                             "names": [box.name]}), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_the_starter_dies_with_its_owner_and_nothing_is_left(started_from):
    before = ks.snapshot()
    owner = subprocess.Popen([PY, "-c", OWNER, started_from], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = owner.stdout.readline()
        assert line.startswith("READY "), owner.stderr.read()[-2000:]
        made = json.loads(line[6:])
        assert alive(made["starter"]) and alive(made["pid"])   # the thread's end did not kill it
        boss = made["starter"]
        assert status(boss)["Threads"] == "1"
        if started_from == "thread":     # a threaded owner: a fresh interpreter, never a fork of it
            assert b"labkit.starter" in Path(f"/proc/{boss}/cmdline").read_bytes()
        else:                            # small and single-threaded: a fork, holding none of its files
            assert Path(f"/proc/{boss}/cmdline").read_bytes() == Path(f"/proc/{owner.pid}/cmdline").read_bytes()
            held = {int(fd): os.readlink(f"/proc/{boss}/fd/{fd}") for fd in os.listdir(f"/proc/{boss}/fd")}
            assert held[0] == held[1] == "/dev/null", held
            # beyond stderr only its own: sockets (to the owner) and pidfds (the owner, its containers)
            assert all(target.startswith(("socket:", "anon_inode:")) for fd, target in held.items() if fd > 2), held
        owner.kill()                                           # SIGKILL: no cleanup code runs
        owner.wait()
        assert until(lambda: not alive(made["starter"])), "the starter outlived its owner"
        # the owner's watchdog kills the container; its waiter (the starter's child) ends with it
        assert made["waiter"] != made["starter"]
        assert until(lambda: not alive(made["pid"]) and not alive(made["waiter"]), 30)
        assert until(lambda: not ks.new_objects(before, ks.snapshot(), owners={owner.pid}), 30), \
            ks.new_objects(before, ks.snapshot(), owners={owner.pid})
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def open_fds(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_many_starts_leak_no_process_and_no_descriptor():
    from labkit import container
    container.run("busybox", ["true"])              # the starter exists from here on
    boss = starter.pid()
    assert until(lambda: not children(boss))
    ours, theirs = len(os.listdir("/proc/self/fd")), len(os.listdir(f"/proc/{boss}/fd"))
    for _ in range(3):
        assert container.run("busybox", ["sh", "-c", "exit 3"]).returncode == 3
    with Container("busybox", ["true"]) as box:      # created, never started
        box.create()
    with pytest.raises(NotFound):
        container.run("busybox", ["/no/such/command"], init=False)
    assert starter.pid() == boss                     # one starter, still the same
    assert until(lambda: not children(boss)), [status(p) for p in children(boss)]   # no shim, no zombie
    assert len(os.listdir("/proc/self/fd")) == ours
    assert len(os.listdir(f"/proc/{boss}/fd")) == theirs, open_fds(boss)


def test_child_side_errors_come_back_with_their_reason():
    from labkit import container
    with pytest.raises(NotFound, match="no-such-binary"):
        container.run("busybox", ["no-such-binary"], init=False)
    with pytest.raises(LabkitError, match="/etc/passwd/below"):   # a missing one is made, as Docker does
        container.run("busybox", ["true"], working_dir="/etc/passwd/below")


def test_a_step_that_cannot_travel_is_refused_by_name_before_anything_starts():
    boss = starter.pid()
    with pytest.raises(LabkitError, match="module-level function"):
        starter.spawn(["true"], None, setup=[lambda: None])
    assert not children(boss)


def test_signals_go_through_the_pidfd_taken_at_start():
    with Container("busybox", ["sleep", "30"], init=False) as box:
        box.start()
        box.process.send_signal(signal.SIGKILL)
        assert box.wait(10) == -signal.SIGKILL


def test_a_created_process_is_signalled_through_a_pidfd_too():
    """Before release() the process waits before exec; it has a pidfd all the same, so a kill
    before start reaches it (as `runc kill` of a created container does) instead of going nowhere."""
    process = starter.spawn(["sleep", "30"], ["pid", "mnt"], gate=True)
    try:
        pid = process.pid
        assert alive(pid)
        process.send_signal(signal.SIGKILL)
        assert until(lambda: not alive(pid))
        assert process.wait(10) == -signal.SIGKILL
    finally:
        process.close()


def test_a_container_that_cannot_join_its_cgroup_never_runs():
    """v1: the process moves itself into its cgroup (labkit.start_stamps.join_itself); when the kernel
    refuses (a cpuset cgroup without CPUs: ENOSPC), it must not exec outside its limits."""
    from labkit.cgroups import Cgroup
    with Cgroup.create(pids=8) as group:
        if group.version != "v1":
            pytest.skip("the self-join path is v1's (v2 places the process from its parent)")
        Path(group.path("cpuset"), "cpuset.cpus").write_text("\n")     # nowhere to run: attach fails
        marker = "4242.5"
        with pytest.raises(LabkitError, match="cpuset/.*tasks"):
            starter.spawn(["sleep", marker], ["mnt", "pid"], cgroup=group)
        assert group.procs() == []
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and marker.encode() in cmdline(pid)]


def cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
