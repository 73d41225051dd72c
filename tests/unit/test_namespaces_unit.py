"""Unit tests (no root) for namespace parsing and validation, and the read-only helpers of chapter 1."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labkit import namespaces as ns
from labkit import nskinds, nssetup, nsview, propagation, syscalls, timens
from labkit.errors import InvalidValue


def test_kinds_are_the_eight_of_proc_self_ns_with_distinct_flags():
    names = [k.name for k in ns.KINDS]
    assert sorted(names) == ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"]
    assert len({k.flag for k in ns.KINDS}) == 8
    for kind in ns.KINDS:
        assert os.path.exists(f"/proc/self/ns/{kind.name}")
        assert kind.unshare_option.startswith("--")


FLAG_PROBE = """
import os, sys
from labkit import syscalls
flag = int(sys.argv[1])
if os.geteuid() != 0:
    flag |= syscalls.CLONE_NEWUSER            # unprivileged: inside a user namespace of our own
names = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts", "pid_for_children", "time_for_children"]
def inode(n):
    try:
        return os.stat(f"/proc/self/ns/{n}").st_ino
    except FileNotFoundError:       # a new pid namespace has no inode to show before its first process
        return None
before = {n: inode(n) for n in names}
syscalls.unshare(flag)
print(" ".join(sorted(n for n in names if inode(n) != before[n])))
"""


@pytest.mark.parametrize("kind", ns.KINDS, ids=lambda k: k.name)
def test_each_kinds_flag_makes_the_kernel_create_that_namespace(kind):
    """Unshare with the kind's flag in a fresh process and see which /proc/self/ns links changed."""
    probe = subprocess.run([sys.executable, "-c", FLAG_PROBE, str(kind.flag)], capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 0, probe.stderr
    changed = set(probe.stdout.split()) - ({"user"} if os.geteuid() != 0 else set())
    expected = {f"{kind.name}_for_children"} if kind.name in ("pid", "time") else {kind.name}
    assert changed == expected


@pytest.mark.parametrize("spec, expected", [
    ("pid,uts", ["pid", "uts"]),
    (["net"], ["net"]),
    ("mount,network,hostname", ["mnt", "net", "uts"]),
    (" pid , pid ", ["pid"]),
    (None, []),
    ("", []),
])
def test_parse_kinds(spec, expected):
    assert [k.name for k in ns.parse_kinds(spec)] == expected


def test_parse_all_is_every_kind():
    assert ns.parse_kinds("all") == ns.KINDS
    assert ns.parse_kinds(["all"]) == ns.KINDS


@pytest.mark.parametrize("bad", ["bogus", "pid,", "PID", "all,pid", ["uts", 3]])
def test_parse_kinds_refuses_unknown_names_and_names_them(bad):
    with pytest.raises(InvalidValue) as err:
        ns.parse_kinds(bad)
    assert "expected one of cgroup, ipc" in str(err.value)


@pytest.mark.parametrize("kwargs, word", [
    (dict(namespaces="pid", hostname="box"), "hostname"),
    (dict(namespaces="uts", hostname="x" * 65), "hostname"),
    (dict(namespaces="pid", time_offsets={"boottime": 5}), "time_offsets"),
    (dict(namespaces="pid", uid_map="0 1000 1"), "uid_map"),
    (dict(namespaces="nope"), "namespace kind"),
    (dict(namespaces="time", time_offsets={"realtime": 5}), "time offset clock"),
    (dict(namespaces="time", time_offsets={"boottime": "soon"}), "time offset of boottime"),
])
def test_spawn_validates_before_the_guard(kwargs, word, monkeypatch):
    """Bad input is refused before the lab-host guard, i.e. before anything could be created."""
    monkeypatch.setattr(ns.os, "fork", lambda: pytest.fail("spawn forked on bad input"))
    with pytest.raises(InvalidValue, match=word):
        ns.spawn(["true"], **kwargs)


def test_spawn_refuses_an_empty_command(monkeypatch):
    monkeypatch.setattr(ns.os, "fork", lambda: pytest.fail("spawn forked on bad input"))
    with pytest.raises(InvalidValue, match="command"):
        ns.spawn([], "uts")


@pytest.mark.parametrize("seconds, line", [
    (1.5, "monotonic 1 500000000"), (-1.5, "monotonic -2 500000000"), (-0.25, "monotonic -1 750000000"),
    (3, "monotonic 3 0"), (-3, "monotonic -3 0"),
])
def test_time_offsets_keep_the_nanoseconds_between_0_and_a_second(seconds, line):
    """timens_offsets refuses a negative nanosecond field: -1.5 s is -2 s + 0.5 s."""
    assert nssetup.time_offset_lines({"monotonic": seconds}) == line


def test_no_file_descriptor_is_left_open_when_the_guard_refuses(monkeypatch):
    from labkit import host
    from labkit.errors import NotPermitted

    def refuse(action):
        raise NotPermitted(f"to {action} labkit needs root")
    monkeypatch.setattr(host, "require_lab_host", refuse)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(NotPermitted):
        ns.spawn(["true"], None, join=(os.getpid(), "uts,ipc"))
    assert set(os.listdir("/proc/self/fd")) == before


def test_an_exit_status_collected_elsewhere_is_an_error_not_a_zero():
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    os.waitpid(child.pid, 0)                 # someone else reaps it (as SIGCHLD=SIG_IGN would)
    child.returncode = 3                     # (so that Popen does not try again)
    proc = ns.Process(["sh"], child.pid, child.pid, None, None, None)
    with pytest.raises(ns.LabkitError, match=f"exit status of 'sh' .*lost.*pid {child.pid}"):
        proc.wait()
    assert proc.returncode is None


def test_identity_of_self_matches_readlink():
    ids = ns.identity()
    for kind, inode in ids.items():
        assert os.readlink(f"/proc/self/ns/{kind}") == f"{kind}:[{inode}]"
    assert set(ns.children_identity()) == {"pid", "time"}


# --- nsview ----------------------------------------------------------------------------------------

def test_sharing_summary_and_table_mark_new_namespaces(monkeypatch):
    fake = {"self": {k: 100 + i for i, k in enumerate(nsview.KIND_NAMES)}}
    fake["42"] = dict(fake["self"], uts=999, net=998)
    monkeypatch.setattr(nsview, "identity", lambda pid: fake[str(pid)])
    summary = nsview.sharing_summary({"notebook": "self", "box": 42})
    assert summary.startswith("box: own net, uts; shares with notebook: cgroup, ipc, mnt, pid, time, user")
    table = nsview.format_table({"notebook": "self", "box": 42})
    assert "uts:[999] NEW" in table and "ipc:[101] =" in table
    assert nsview.differing_kinds(42) == {"uts", "net"}


def test_check_namespaces_explains_what_is_wrong(monkeypatch):
    fake = {"self": {k: 1 for k in nsview.KIND_NAMES}, "7": dict({k: 1 for k in nsview.KIND_NAMES}, uts=2)}
    monkeypatch.setattr(nsview, "identity", lambda pid: fake[str(pid)])
    monkeypatch.setattr(nsview.os.path, "exists", lambda path: True)
    assert nsview.check_namespaces(7, "uts")[0] is True
    ok, why = nsview.check_namespaces(7, "uts,net")
    assert not ok and "should be new): net" in why
    ok, why = nsview.check_namespaces(7, [])
    assert not ok and "should be shared): uts" in why


def test_check_namespaces_on_a_missing_process():
    ok, why = nsview.check_namespaces(2**22 + 12345, "uts")
    assert not ok and "no process" in why


def test_proc_info_of_ourselves():
    me = nsview.proc_info(os.getpid())
    assert me.ppid == os.getppid() and me.state in "RS" and me.nspid[0] == os.getpid()


def test_draw_makes_one_cell_per_kind_and_process():
    import matplotlib
    matplotlib.use("Agg")
    fig = nsview.draw({"a": "self", "b": "self"})
    assert len(fig.axes[0].patches) == 2 * len(nsview.KIND_NAMES)


def test_zombies_found_below_a_parent_that_does_not_wait():
    """A child that exits while its parent (here: a sleeping sh after exec) never waits is a zombie."""
    parent = subprocess.Popen(["sh", "-c", "true & exec sleep 5"])
    try:
        for _ in range(100):
            if nsview.zombies(parent.pid):
                break
            __import__("time").sleep(0.02)
        assert [z.state for z in nsview.zombies(parent.pid)] == ["Z"]
    finally:
        parent.kill()
        parent.wait()


# --- pidone, propagation, timens -----------------------------------------------------------------

def test_pidone_passes_the_exit_status_and_reaps():
    run = lambda *argv: subprocess.run([sys.executable, "-m", "labkit.pidone", *argv], capture_output=True)
    assert run("sh", "-c", "exit 5").returncode == 5
    assert run().returncode == 2
    assert run("labkit-no-such-command").returncode == 127


def test_propagation_demo_refuses_unknown_modes():
    with pytest.raises(InvalidValue, match="propagation mode"):
        propagation.PropagationDemo("rslave")


def test_mountinfo_reads_propagation_of_root():
    """Compared with util-linux's findmnt, which reads the same kernel table its own way."""
    table = propagation.mountinfo()
    findmnt = subprocess.run(["findmnt", "-n", "-o", "PROPAGATION", "/"], capture_output=True, text=True)
    words = {"shared": "shared:", "slave": "master:", "private": "private"}
    expected = [words[w.strip()] for w in findmnt.stdout.split(",") if w.strip() in words]
    assert expected, findmnt
    assert all(part in table["/"] for part in expected) and \
        all(word in expected for word in ("shared:", "master:") if word in table["/"]), (table["/"], findmnt.stdout)


def test_timens_offsets_of_the_host_are_zero():
    assert timens.offsets() == {"monotonic": 0.0, "boottime": 0.0}
    assert timens.uptime() > 0
