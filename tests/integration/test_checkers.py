"""Every notebook's exercise checker, on the real kernel: the instructor's solution (docs/instructor/
solutions/) must pass, and at least two plausible wrong answers must fail.

Each answer goes through SelfCheck.evaluate, as the widget's button does, and the test requires the
exact outcome: "correct" for the solution, "not yet" for a wrong answer. A checker that raises comes
back as "checker fault" and fails the test - the learner would have seen a bug, not a wrong answer.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest

from labkit import checkers, host, net, timens
from labkit.cgroups import Cgroup
from labkit.engine import views
from labkit.exercise import SelfCheck
from labkit.namespaces import enter, run, spawn
from labkit.propagation import is_mounted

pytestmark = pytest.mark.root
MiB = 2**20


def outcome(check, answer, parse=str) -> str:
    verdict = SelfCheck("?", check, hints=("-",), parse=parse).evaluate(str(answer))
    assert verdict.status != "checker fault", verdict.explanation
    return verdict.status


def assert_checker(check, solution, wrong, parse=str):
    """The solution is correct; every wrong answer is "not yet" (never a fault)."""
    assert len(wrong) >= 2
    assert outcome(check, solution, parse) == "correct", solution
    for answer in wrong:
        assert outcome(check, answer, parse) == "not yet", answer


@pytest.fixture
def group():
    with Cgroup.create() as cg:
        yield cg


@contextmanager
def started(*procs):
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def poll(find, seconds=10.0):
    """What `find` returns once it returns something: the kernel's state, polled with a deadline."""
    deadline = time.monotonic() + seconds
    while not (found := find()):
        assert time.monotonic() < deadline, "the kernel never showed it"
        time.sleep(0.02)
    return found


def sleeper(kinds, group, **options):
    return spawn(["sleep", "600"], kinds, cgroup=group, **options)


# --- 00 and chapter 1 ------------------------------------------------------------------------------

def test_00_cgroup_mode():
    mode = host.cgroup_mode()
    assert_checker(checkers.cgroup_mode, mode.upper(), [m for m in ("v1", "hybrid", "v2") if m != mode] + ["cgroup2"])


def test_01_new_uts_and_net(group):
    with started(sleeper("uts,net", group), sleeper("uts", group), sleeper("uts,net,ipc", group)) as (good, uts, more):
        check = lambda pid: checkers.new_namespaces(pid, "uts,net")
        assert_checker(check, good.pid, [uts.pid, more.pid, os.getpid(), 999999999, "abc"], parse=int)


def test_02_pid_two(group):
    box = spawn([sys.executable, "-m", "labkit.pidone", "sleep", "600"], "pid,mnt", cgroup=group)
    with started(box):
        two = poll(lambda: [p.pid for p in checkers.nsview.descendants(box.pid) if p.inner_pid == 2])[0]  # the solution
        check = lambda pid: checkers.pid_two(pid, box.pid)
        assert_checker(check, two, [box.pid, os.getpid(), 999999999], parse=int)


def test_03_own_hostname(group):
    name = os.uname().nodename
    with started(sleeper("uts", group, hostname="labkit-exercise"), sleeper("uts", group, hostname="other"),
                 sleeper("net", group)) as (good, other, shared):
        check = lambda pid: checkers.own_hostname(pid, "labkit-exercise", name)
        assert_checker(check, good.pid, [other.pid, shared.pid, os.getpid()], parse=int)


def test_04_private_mount(group, tmp_path):
    directory = str(tmp_path)
    good = spawn(["sh", "-c", f"mount -t tmpfs labkit-ex {directory} && exec sleep 600"], "mnt", cgroup=group)
    with started(good, sleeper("mnt", group), sleeper("uts", group)) as (_, unmounted, shared):
        check = lambda pid: checkers.private_mount(pid, directory)
        assert_checker(check, good.pid, [unmounted.pid, shared.pid], parse=int)
        # Mounted in this (the host's) namespace first, then a new mnt namespace copied it: the box sees
        # a tmpfs there, but so does everyone - not a private mount.
        subprocess.run(["mount", "-t", "tmpfs", "labkit-ex-host", directory], check=True)
        try:
            with started(sleeper("mnt", group)) as (copied,):
                assert is_mounted(directory, copied.pid)
                assert outcome(check, copied.pid, int) == "not yet"
        finally:
            subprocess.run(["umount", directory], check=True)


def test_05_loopback_up(group):
    good = spawn(["sh", "-c", "ip link set lo up && exec sleep 600"], "net", cgroup=group)
    with started(good, sleeper("net", group), sleeper("uts", group)) as (_, down, shared):
        assert_checker(checkers.loopback_up, good.pid, [down.pid, shared.pid], parse=int)


def test_06_private_message_queue(group):
    good = spawn(["sh", "-c", "ipcmk -Q >/dev/null && exec sleep 600"], "ipc", cgroup=group)
    with started(good, sleeper("ipc", group), sleeper("uts", group)) as (_, empty, shared):
        assert_checker(checkers.private_message_queue, good.pid, [empty.pid, shared.pid], parse=int)


def test_07_remapped_root(group):
    with started(sleeper("user", group, uid_map="0 200000 65536", gid_map="0 200000 65536"),
                 sleeper("user", group, uid_map="0 100000 65536", gid_map="0 100000 65536"),
                 sleeper("uts", group)) as (good, elsewhere, shared):
        check = lambda pid: checkers.remapped_root(pid, 200000)
        assert_checker(check, good.pid, [elsewhere.pid, shared.pid], parse=int)


def test_08_boottime_ahead(group):
    DAY = timens.DAY
    with started(sleeper("time", group, time_offsets={"boottime": 366 * DAY}),
                 sleeper("time", group, time_offsets={"monotonic": 366 * DAY}),
                 sleeper("uts", group)) as (good, monotonic, shared):
        check = lambda pid: checkers.boottime_ahead(pid, 365 * DAY)
        assert_checker(check, good.pid, [monotonic.pid, shared.pid], parse=int)


# --- chapter 2: cgroups ----------------------------------------------------------------------------

def test_10_memory_cgroup(group):
    with started(sleeper(None, group)) as (proc,):
        mine = checkers.cgroup_of("self", "memory")                       # the solution: read /proc/self/cgroup
        check = lambda path: checkers.memory_cgroup(path, os.getpid())
        assert_checker(check, mine, [checkers.cgroup_of(proc.pid, "memory"), "/", mine + "/"])


def test_11_memory_limit(group):
    check = lambda answer: checkers.memory_limit(answer, group, 48 * MiB)
    group.set(memory="64M")
    assert outcome(check, str(64 * MiB)) == "not yet"                      # the wrong limit, read right
    group.set(memory="48M")
    assert_checker(check, str(48 * MiB), ["48M", "48", str(48 * 1000 * 1000)])


def test_12_cpu_quota(group):
    check = lambda answer: checkers.cpu_quota(answer, group, 0.3)
    group.set(cpu=0.25)
    assert outcome(check, "25000 100000" if group.version == "v2" else "25000") == "not yet"
    group.set(cpu=0.3)
    solution = "30000 100000" if group.version == "v2" else "30000"
    assert_checker(check, solution, ["0.3", "30", "300000"])


def test_16_cap_peak(group):
    cap = 24 * MiB
    check = lambda mib: checkers.cap_peak(mib, group, cap)
    assert outcome(check, "0", int) == "not yet"                              # no cap yet
    if group.version == "v2":
        Path(group.path("memory"), "memory.high").write_text(str(cap))
    else:
        group.set(memory=cap, swap=0)
    assert outcome(check, "0", int) == "not yet"                              # capped, nothing ran
    writer = ("import os, sys\nkeep = b'a' * (8 << 20)\nwith open(sys.argv[1], 'wb') as f:\n"
              "    for i in range(48):\n        f.write(b'f' * (1 << 20))\n"
              "        if i % 4 == 3:\n            f.flush(); os.fsync(f.fileno())\n")
    target = Path("/var/tmp") / f"labkit-checker-{os.getpid()}"
    try:
        assert run([sys.executable, "-c", writer, str(target)], namespaces=None, cgroup=group,
                   timeout=60).returncode == 0
    finally:
        target.unlink(missing_ok=True)
    peak = group.stats()["memory_peak"] // MiB
    assert peak >= 12
    assert_checker(check, peak, [48, peak + 1, 0], parse=int)


def test_13_fork_refusals(group):
    check = lambda count: checkers.fork_refusals(count, group, 5)
    assert outcome(check, "0", int) == "not yet"                           # no limit, nothing refused
    group.set(pids=5)
    forker = "import os, sys\nfor _ in range(int(sys.argv[1])):\n    try:\n        pid = os.fork()\n" \
             "    except OSError:\n        continue\n    if pid == 0:\n        import time; time.sleep(3); os._exit(0)\n"
    run([sys.executable, "-c", forker, "10"], namespaces=None, cgroup=group, timeout=30)
    refused = group.stats()["pids_events_max"]
    assert refused > 0
    assert_checker(check, refused, [refused + 1, 5, "five"], parse=int)


def test_14_io_write_cap(group):
    rdev = os.stat("/dev/loop0").st_rdev if os.path.exists("/dev/loop0") else os.makedev(7, 0)
    device = f"{os.major(rdev)}:{os.minor(rdev)}"
    check = lambda answer: checkers.io_write_cap(answer, group, rdev, 2 * MiB)
    group.set(io={"device": device, "write_bps": "4M"})
    assert outcome(check, str(4 * MiB)) == "not yet"
    group.set(io={"device": device, "write_bps": "2M"})
    assert_checker(check, str(2 * MiB), ["2M", f"{device} {2 * MiB}", "2000000"])


def test_15_cpuset_pin(group):
    with started(sleeper(None, group)) as (proc,):
        check = lambda answer: checkers.cpuset_pin(answer, group, proc.pid, "0")
        if len(os.sched_getaffinity(0)) > 1:
            assert outcome(check, checkers.Path(group.path("cpuset"), "cpuset.cpus").read_text().strip()) == "not yet"
        group.set(cpuset="0")
        assert_checker(check, "0", ["1", "0-1", "{0}"])


# --- chapters 3 to 6 -------------------------------------------------------------------------------

def test_20_isolated_on_a_second_bridge(group):
    boxes = {f"c{i}": sleeper(("net", "uts"), group, hostname=f"c{i}") for i in (1, 2, 3)}
    with started(*boxes.values()), net.Network() as first:
        for label, box in boxes.items():
            first.connect(box, label=label)
        check = lambda answer: net.check_isolation_answer(answer, boxes, timeout=0.5)
        c1_ip, c3_ip = first.endpoint("c1").ip, first.endpoint("c3").ip
        assert outcome(check, c3_ip) == "not yet"                           # still on the first bridge
        first.disconnect("c3")
        with net.Network() as second:
            second.connect(boxes["c3"], address="198.18.0.9/24", label="c3")
            assert_checker(check, "198.18.0.9", [c1_ip, "198.18.0.77", "c3"])


def test_21_second_published_port():
    from labkit.container import Container
    from labkit.net import nat

    with nat.NatLab() as lab, Container("busybox", ["sleep", "300"]).start() as web:
        web_ip = lab.connect(web.pid).ip
        check = lambda port: checkers.second_port(port, lab, web_ip)
        lab.publish(8082, web_ip, 82)                            # a rule, nothing listening behind it
        web.exec(["httpd", "-p", "83", "-h", "/tmp"])            # a server, no rule for it
        lab.publish(8081, web_ip, 81)                            # the solution: rule and server
        web.exec(["httpd", "-p", "81", "-h", "/tmp"])
        assert_checker(check, 8081, [8080, 8082, 8083, "http"], parse=int)


def test_30_busybox_container():
    from labkit.container import Container

    check = lambda pid: checkers.busybox_container(pid, "quiz", 24 * MiB)
    with ExitStack() as stack:
        good = stack.enter_context(Container("busybox", ["sleep", "300"], hostname="quiz", mem_limit="24M").start())
        other = stack.enter_context(Container("busybox", ["sleep", "300"], hostname="quiz", mem_limit="32M").start())
        named = stack.enter_context(Container("busybox", ["sleep", "300"], hostname="web", mem_limit="24M").start())
        assert_checker(check, good.pid, [other.pid, named.pid, os.getpid()], parse=int)


def test_31_whiteout():
    from labkit.container import Container

    with Container("busybox", ["sleep", "300"]).start() as ex:
        check = lambda answer: checkers.whiteout(answer, ex.rootfs.upper, "etc/group")
        assert outcome(check, "0:0") == "not yet"                          # nothing deleted yet
        ex.exec(["rm", "/etc/group"])
        assert_checker(check, "0:0", ["0", "7:0", "c"])
    with Container("busybox", ["sleep", "300"]).start() as written:      # written to, not deleted
        written.exec(["sh", "-c", "echo x >> /etc/group"])
        assert outcome(lambda a: checkers.whiteout(a, written.rootfs.upper, "etc/group"), "0:0") == "not yet"


def test_32_least_privilege():
    from labkit import seccomp
    from labkit.container import Container

    up = ["sh", "-c", "ip link set lo up && exec sleep 300"]
    with ExitStack() as stack:
        def box(command=up, **options):
            return stack.enter_context(Container("busybox", command, **options).start())
        good = box(cap_add=["NET_ADMIN"], seccomp=seccomp.Filter(["unshare"]))
        no_filter = box(cap_add=["NET_ADMIN"])
        everything = box(cap_add=["ALL"], seccomp=seccomp.Filter(["unshare"]))
        lo_down = box(["sleep", "300"], cap_add=["NET_ADMIN"], seccomp=seccomp.Filter(["unshare"]))
        for started_box in (good, no_filter, everything, lo_down):     # the command has run `ip link`
            poll(lambda: "sleep" in [p.name() for p in psutil.Process(started_box.pid).children(recursive=True)]
                 or psutil.Process(started_box.pid).name() == "sleep")
        assert_checker(checkers.least_privilege, good.pid,
                       [no_filter.pid, everything.pid, lo_down.pid, os.getpid()], parse=int)


def test_33_own_oci_layer(tmp_path):
    from labkit import ociimage, rootfs

    base = ociimage.directory_tar(rootfs.base_layer().path)
    mine = ociimage.layer_tar(ociimage.LayerSpec(files={"etc/greeting": "hello\n"}, delete=("etc/hostname",)))
    ociimage.write_layout(tmp_path / "good", [base, mine], cmd=["sh"])
    no_whiteout = ociimage.layer_tar(ociimage.LayerSpec(files={"etc/greeting": "hello\n"}))
    ociimage.write_layout(tmp_path / "kept", [base, no_whiteout], cmd=["sh"])
    index = (tmp_path / "good" / "index.json").read_text()
    manifest_digest = index.split('"digest": "')[1].split('"')[0]
    assert_checker(lambda d: checkers.own_layer(d, tmp_path / "good"), ociimage.sha256(mine),
                   [ociimage.sha256(base), manifest_digest, "sha256:" + "0" * 64, "hello"])
    assert outcome(lambda d: checkers.own_layer(d, tmp_path / "kept"), ociimage.sha256(no_whiteout)) == "not yet"


def test_40_memory_limit_of_a_container(group):
    group.set(memory="48M")
    with started(sleeper(None, group)) as (proc,):
        check = lambda answer: views.check_memory_limit(proc.pid, answer)
        assert_checker(check, 48 * MiB, ["48", 64 * MiB, "48M"], parse=int)


def test_50_memtotal_in_a_64m_container(group):
    group.set(memory="64M")
    with started(sleeper("pid,mnt,uts,ipc,net", group)) as (proc,):
        seen = int(enter(proc.pid, "mnt", ["head", "-1", "/proc/meminfo"]).stdout.split()[1])   # the solution
        check = lambda kb: checkers.container_memtotal(kb, 64 * MiB)
        assert_checker(check, f"{seen} kB", ["65536", "64 MiB", str(seen // 2)], parse=checkers.parse_kb)
