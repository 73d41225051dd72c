"""labkit.namespaces on the real kernel: every kind created for real and checked from OUTSIDE.

The checks read /proc/PID/ns/KIND (the inode is the namespace's identity), /proc/PID/status
(NSpid, Uid), /proc/PID/uid_map and /proc/PID/timens_offsets of the spawned process - never what
labkit believes it did.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess

import psutil
import pytest

from labkit import namespaces as ns
from labkit.errors import InvalidValue, NotFound

pytestmark = pytest.mark.root

KINDS = [k.name for k in ns.KINDS]


def host_inode(kind: str) -> int:
    return os.stat(f"/proc/self/ns/{kind}").st_ino


def proc_inode(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def status_field(pid: int, name: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1:]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def children_before():
    """Our child processes before the test; the test must leave exactly these behind."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield before
    after = {p.pid: p for p in me.children(recursive=True)}
    left = []
    for pid in set(after) - before:
        try:
            cmdline = after[pid].cmdline()
            if "labkit.watchdog" not in cmdline:   # started once per process by the first guard
                left.append((pid, after[pid].status(), cmdline))
        except psutil.NoSuchProcess:
            pass
    assert not left, f"child processes left behind: {left}"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_gives_the_process_a_new_namespace_and_shares_the_rest(kind, children_before):
    with ns.spawn(["sleep", "30"], kind) as proc:
        assert proc_inode(proc.pid, kind) != host_inode(kind)
        for other in KINDS:
            if other != kind:
                assert proc_inode(proc.pid, other) == host_inode(other), other


@pytest.mark.parametrize("kind", ["pid", "time"])
def test_pid_and_time_apply_to_children_of_the_unsharer(kind, children_before):
    """The process that called unshare stays where it was; /proc/PID/ns/KIND_for_children points to
    the new namespace, which the command (its child) is in."""
    with ns.spawn(["sleep", "30"], kind) as proc:
        unsharer = parent_of(proc.pid)
        assert proc_inode(unsharer, kind) == host_inode(kind)
        assert proc_inode(unsharer, f"{kind}_for_children") == proc_inode(proc.pid, kind)
        assert proc_inode(proc.pid, kind) != host_inode(kind)


def test_all_kinds_at_once(children_before):
    with ns.spawn(["sleep", "30"], "all") as proc:
        for kind in KINDS:
            assert proc_inode(proc.pid, kind) != host_inode(kind), kind


def test_hostname_inside_and_unchanged_outside(children_before):
    before = socket.gethostname()
    result = ns.run(["hostname"], "uts", hostname="labkit-box")
    assert result.stdout.strip() == "labkit-box"
    assert socket.gethostname() == before


def test_command_is_pid_1_inside_and_another_pid_outside(children_before):
    with ns.spawn(["sleep", "30"], "pid,mnt") as proc:
        outer, inner = (int(x) for x in status_field(proc.pid, "NSpid"))
        assert (outer, inner) == (proc.pid, 1)
        assert proc.pid != 1
    assert ns.run(["sh", "-c", "echo $$"], "pid,mnt").stdout.strip() == "1"


def test_pid_1_ignores_sigterm_without_a_handler_but_not_sigkill(children_before):
    with ns.spawn(["sleep", "30"], "pid") as proc:
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        assert os.path.exists(f"/proc/{proc.pid}")
        proc.kill(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL


def test_user_namespace_maps_root_inside_to_an_unprivileged_uid_outside(children_before):
    with ns.spawn(["sleep", "30"], "user", uid_map="0 100000 1", gid_map="0 100000 1") as proc:
        with open(f"/proc/{proc.pid}/uid_map") as f:
            assert f.read().split() == ["0", "100000", "1"]
        with open(f"/proc/{proc.pid}/gid_map") as f:
            assert f.read().split() == ["0", "100000", "1"]
        assert status_field(proc.pid, "Uid")[0] == "100000"     # as the host sees it
    assert ns.run(["id", "-u"], "user", uid_map="0 100000 1", gid_map="0 100000 1").stdout.strip() == "0"


def test_time_offsets_are_visible_in_timens_offsets(children_before):
    with ns.spawn(["sleep", "30"], "time", time_offsets={"boottime": 86400, "monotonic": 3600}) as proc:
        with open(f"/proc/{proc.pid}/timens_offsets") as f:
            offsets = {line.split()[0]: int(line.split()[1]) for line in f}
        assert offsets == {"monotonic": 3600, "boottime": 86400}
    inside = float(ns.run(["cat", "/proc/uptime"], "time", time_offsets={"boottime": 86400}).stdout.split()[0])
    with open("/proc/uptime") as f:
        outside = float(f.read().split()[0])
    assert inside - outside > 86400 - 60


def test_enter_joins_an_existing_process_namespaces(children_before):
    with ns.spawn(["sleep", "30"], "uts,net,ipc", hostname="labkit-join") as box:
        result = ns.enter(box.pid, "uts,net", ["sh", "-c", "hostname; readlink /proc/self/ns/uts /proc/self/ns/net"])
        lines = result.stdout.split()
        assert lines[0] == "labkit-join"
        assert lines[1] == f"uts:[{proc_inode(box.pid, 'uts')}]"
        assert lines[2] == f"net:[{proc_inode(box.pid, 'net')}]"
        # checked from outside too: a joined process has exactly the box's inodes for those kinds
        with ns.spawn(["sleep", "30"], None, join=(box.pid, "uts,net")) as joined:
            assert proc_inode(joined.pid, "uts") == proc_inode(box.pid, "uts")
            assert proc_inode(joined.pid, "net") == proc_inode(box.pid, "net")
            assert proc_inode(joined.pid, "ipc") == host_inode("ipc")     # not asked for


def test_enter_a_pid_namespace_lands_inside_it(children_before):
    with ns.spawn(["sleep", "30"], "pid,mnt") as box:
        result = ns.enter(box.pid, "pid", ["sh", "-c", "echo $$"])
        assert int(result.stdout) > 1          # a second process of that namespace
        assert result.returncode == 0


def test_spawn_never_changes_the_calling_process(children_before):
    before, before_children = ns.identity(), ns.children_identity()
    for kinds in ("all", "pid,time", "user,mnt"):
        ns.run(["true"], kinds)
    assert ns.identity() == before
    assert ns.children_identity() == before_children
    with open(f"/proc/self/uid_map") as f:
        assert f.read().split() == ["0", "0", "4294967295"]


@pytest.mark.parametrize("bad", ["pid,bogus", "uts,", ["net", "nope"], "ALL"])
def test_bad_kinds_are_refused_before_anything_is_created(bad, children_before):
    with pytest.raises(InvalidValue) as err:
        ns.spawn(["sleep", "30"], bad)
    assert "namespace kind" in str(err.value)


def test_hostname_without_a_uts_namespace_is_refused(children_before):
    before = socket.gethostname()
    with pytest.raises(InvalidValue, match="uts"):
        ns.spawn(["true"], "pid", hostname="labkit-nope")
    assert socket.gethostname() == before


def test_exit_status_and_signals_pass_through(children_before):
    assert ns.run(["sh", "-c", "exit 3"], "uts").returncode == 3
    assert ns.run(["sh", "-c", "exit 7"], "pid,mnt").returncode == 7   # through the waiter
    for kinds in ("uts", "pid"):                                       # direct, and through the waiter
        with ns.spawn(["sleep", "30"], kinds) as proc:
            proc.kill(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
    with ns.spawn(["sh", "-c", "kill -TERM $$"], "uts") as proc:
        assert proc.wait(timeout=10) == -signal.SIGTERM


def test_a_missing_command_raises_not_found(children_before):
    with pytest.raises(NotFound, match="labkit-no-such-command"):
        ns.spawn(["labkit-no-such-command"], "pid,uts")
    with pytest.raises(NotFound):
        ns.run(["labkit-no-such-command"], "uts")


def test_namespaces_die_with_their_last_process(children_before):
    """Nothing leaks: once the process is reaped, it is gone and no process is in its namespaces.

    (A freed namespace's inode number may be reused by a new one made concurrently, so a holder must
    match all four kinds at once.)"""
    kinds = ("uts", "ipc", "net", "mnt")
    with ns.spawn(["sleep", "30"], "all") as proc:
        inodes = ns.identity(proc.pid)
        unsharer = parent_of(proc.pid)
    assert not os.path.exists(f"/proc/{proc.pid}") and not os.path.exists(f"/proc/{unsharer}")
    wanted = tuple(inodes[k] for k in kinds)
    for p in psutil.process_iter():
        try:
            held = tuple(os.stat(f"/proc/{p.pid}/ns/{k}").st_ino for k in kinds)
        except OSError:
            continue
        assert held != wanted, f"process {p.pid} is still in the spawned namespaces"
