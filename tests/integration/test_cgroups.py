"""cgroups on the real kernel, checked from outside: /sys/fs/cgroup files and /proc/PID/{cgroup,status}.

Backend-agnostic: the same file runs here (hybrid host -> v1 backend) and inside a pure cgroup-v2
microVM (v2 backend). Where a check needs a version-specific file it branches on backend_name().
Processes are started by a tiny gate: a child that waits on a pipe until the test has put it into the
cgroup, then execs the program - so the program never runs outside its limits. No wall-clock
assertions: rates are the kernel's own counters divided by an interval, with loose bounds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import cleanup, loopdev
from labkit.cgroups import Cgroup, backend_name, find_leftovers, remove_leftover
from labkit.errors import InvalidValue, LabkitError

pytestmark = pytest.mark.root

ROOT = "/sys/fs/cgroup"
MiB = 1024 * 1024
GATE = "import os, sys; fd = int(sys.argv[1]); os.read(fd, 1); os.close(fd); os.execvp(sys.argv[2], sys.argv[2:])"
BUSY = ["sh", "-c", "while :; do :; done"]


# --- looking from outside ---------------------------------------------------------------------------

def v1() -> bool:
    return backend_name() == "v1"


def relpath(name: str) -> str:
    parent = os.environ.get("LABKIT_CGROUP_PARENT", "").strip("/")
    return f"{parent}/{name}" if parent else name


def cgdir(name: str, controller: str) -> str:
    """Where the kernel keeps this cgroup's files for `controller` (v1 names)."""
    if v1():
        return f"{ROOT}/{controller}/{relpath(name)}"
    return f"{ROOT}/{relpath(name)}"


def cgfile(name: str, controller: str, v1_file: str, v2_file: str) -> str:
    return os.path.join(cgdir(name, controller), v1_file if v1() else v2_file)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def keyed(path: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in read(path).splitlines())}


def cgroup_of(pid: int, controller: str) -> str:
    """The cgroup path /proc/PID/cgroup shows for `controller` (v2: the unified line)."""
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if (v1() and controller in controllers.split(",")) or (not v1() and controllers == ""):
            return path
    raise AssertionError(f"no {controller} line in /proc/{pid}/cgroup")


def dirs_of(name: str) -> list[str]:
    controllers = ["memory", "cpu", "cpuacct", "pids", "freezer", "blkio", "cpuset"] if v1() else ["memory"]
    return [cgdir(name, c) for c in controllers if not v1() or os.path.isdir(f"{ROOT}/{c}")]


def throttle_stats(name: str) -> dict[str, int]:
    return keyed(cgfile(name, "cpu", "cpu.stat", "cpu.stat"))


# --- starting processes inside ---------------------------------------------------------------------

def start_in(cg: Cgroup, argv: list[str], **popen) -> subprocess.Popen:
    """Start argv inside `cg`: the child waits on a pipe until it has been added, then execs."""
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-S", "-c", GATE, str(r), *argv], pass_fds=(r,), **popen)
    os.close(r)
    try:
        cg.add(proc.pid)
    except BaseException:
        proc.kill()
        proc.wait()
        os.close(w)
        raise
    os.write(w, b"go")
    os.close(w)
    return proc


@pytest.fixture
def cgroups():
    """Cgroup.create with cleanup: everything made in the test is deleted, and its processes reaped."""
    made: list[Cgroup] = []
    procs: list[subprocess.Popen] = []

    def create(**limits) -> Cgroup:
        cg = Cgroup.create(**limits)
        made.append(cg)
        return cg

    create.procs = procs
    yield create
    for cg in made:
        cg.delete()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run_in(cgroups, cg, argv, **popen):
    proc = start_in(cg, argv, **popen)
    cgroups.procs.append(proc)
    return proc


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def cpu_rate(cg: Cgroup, seconds: float = 1.0) -> tuple[float, int]:
    """(CPUs used on average, periods throttled) over `seconds`, from the kernel's counters."""
    name = cg.name
    t0, s0, th0 = time.monotonic(), cg.stats()["cpu_usage_usec"], throttle_stats(name)["nr_throttled"]
    time.sleep(seconds)
    t1, s1, th1 = time.monotonic(), cg.stats()["cpu_usage_usec"], throttle_stats(name)["nr_throttled"]
    return (s1 - s0) / ((t1 - t0) * 1e6), th1 - th0


# --- tests ------------------------------------------------------------------------------------------

def test_create_then_delete_leaves_nothing(cgroups):
    cg = cgroups(memory="64M", pids=50, cpu=0.5)
    assert cg.name.startswith("labkit-") and cg.relpath == relpath(cg.name)
    for d in dirs_of(cg.name):
        assert os.path.isdir(d), d
    assert int(read(cgfile(cg.name, "memory", "memory.limit_in_bytes", "memory.max"))) == 64 * MiB
    assert read(cgfile(cg.name, "pids", "pids.max", "pids.max")) == "50"
    if v1():
        assert read(cgfile(cg.name, "cpu", "cpu.cfs_quota_us", "")) == "50000"
    else:
        assert read(cgfile(cg.name, "cpu", "", "cpu.max")) == "50000 100000"

    proc = run_in(cgroups, cg, ["sleep", "1000"])
    wait_for(lambda: read(f"/proc/{proc.pid}/comm") == "sleep", what="exec")
    for controller in ("memory", "pids", "cpu"):
        assert cgroup_of(proc.pid, controller) == "/" + relpath(cg.name)
    assert proc.pid in [int(p) for p in read(os.path.join(cgdir(cg.name, "pids"), "cgroup.procs")).split()]
    assert cg.procs() == [proc.pid]
    assert cg.exists()

    cg.delete()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    for d in dirs_of(cg.name):
        assert not os.path.exists(d), d
    assert not cg.exists()
    assert cg.name not in [item.name for item in find_leftovers()]
    assert cleanup.owner("cgroup", cg.name) == (None, False)


def test_memory_limit_oom_kills_a_hog(cgroups):
    swap = {"swap": 0} if len(read("/proc/swaps").splitlines()) > 1 else {}
    cg = cgroups(memory="32M", **swap)
    hog = run_in(cgroups, cg, [sys.executable, "-S", "-c", "b = bytearray(200 * 2**20)"],
                 stderr=subprocess.DEVNULL)
    assert hog.wait(timeout=30) == -signal.SIGKILL
    assert cg.oom_kills() >= 1
    if v1():
        outside = keyed(cgfile(cg.name, "memory", "memory.oom_control", ""))["oom_kill"]
        peak = int(read(cgfile(cg.name, "memory", "memory.max_usage_in_bytes", "")))
    else:
        outside = keyed(cgfile(cg.name, "memory", "", "memory.events"))["oom_kill"]
        peak = int(read(cgfile(cg.name, "memory", "", "memory.peak")))
    assert outside >= 1
    assert peak <= 32 * MiB                      # it never got past the limit
    stats = cg.stats()
    assert stats["oom_kills"] == outside and stats["memory_peak"] == peak


def test_cpu_quota_throttles_a_busy_loop(cgroups):
    cg = cgroups(cpu=0.2)
    run_in(cgroups, cg, BUSY)
    wait_for(lambda: cg.stats()["cpu_usage_usec"] > 20_000, what="the loop to run")
    rate, throttled = cpu_rate(cg, 1.0)
    assert throttled > 0
    assert 0 < rate < 0.4                       # limited to 0.2 of a CPU; unlimited it would be ~1
    stats = cg.stats()
    assert stats["throttled_periods"] > 0 and stats["throttled_usec"] > 0
    assert stats["nr_periods"] >= stats["throttled_periods"]


def test_set_changes_limits_while_the_process_runs(cgroups):
    cg = cgroups(cpu=1.5, memory="64M")
    proc = run_in(cgroups, cg, BUSY)
    wait_for(lambda: cg.stats()["cpu_usage_usec"] > 20_000, what="the loop to run")

    cg.set(cpu=0.1, memory="48M")
    if v1():
        assert read(cgfile(cg.name, "cpu", "cpu.cfs_quota_us", "")) == "10000"
    else:
        assert read(cgfile(cg.name, "cpu", "", "cpu.max")) == "10000 100000"
    assert int(read(cgfile(cg.name, "memory", "memory.limit_in_bytes", "memory.max"))) == 48 * MiB
    assert cg.limits()["cpu"] == pytest.approx(0.1) and cg.limits()["memory"] == 48 * MiB
    rate, throttled = cpu_rate(cg, 1.0)
    assert throttled > 0 and rate < 0.25
    assert proc.poll() is None                  # it kept running, only slower

    with pytest.raises(InvalidValue, match="12Q"):
        cg.set(memory="12Q", cpu=0.5)
    assert read(cgfile(cg.name, "cpu", "cpu.cfs_quota_us", "cpu.max")).split()[0] == "10000"

    cg.set(cpu="max", memory="max")
    assert cg.limits()["cpu"] == "max" and cg.limits()["memory"] == "max"


def test_pids_limit_makes_fork_fail(cgroups):
    cg = cgroups(pids=5)
    run_in(cgroups, cg, ["sh", "-c", "for i in $(seq 20); do sleep 30 & done; wait"],
           stderr=subprocess.DEVNULL)
    wait_for(lambda: (cg.stats()["pids_events_max"] or 0) > 0, what="a refused fork")
    if v1():
        refused = keyed(cgfile(cg.name, "pids", "pids.events", ""))["max"]
    else:
        refused = keyed(cgfile(cg.name, "pids", "", "pids.events"))["max"]
    assert refused > 0
    assert int(read(cgfile(cg.name, "pids", "pids.current", "pids.current"))) <= 5
    assert len(cg.procs()) <= 5


def test_cpuset_pins_the_process(cgroups):
    with open("/sys/devices/system/cpu/online") as f:
        from labkit.cgroups.files import parse_cpu_list
        online = parse_cpu_list(f.read())
    first, last = str(online[0]), str(online[-1])
    cg = cgroups(cpuset=first)
    proc = run_in(cgroups, cg, ["sleep", "1000"])
    wait_for(lambda: read(f"/proc/{proc.pid}/comm") == "sleep", what="exec")

    def allowed():
        status = read(f"/proc/{proc.pid}/status")
        return next(line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list"))

    assert allowed() == first
    assert read(cgfile(cg.name, "cpuset", "cpuset.cpus", "cpuset.cpus")) == first
    if len(online) > 1:
        cg.set(cpuset=last)                      # moved while it runs
        assert allowed() == last


@pytest.fixture
def loop_device(tmp_path):
    """A loop device over a sparse file named labkit-..., with autoclear: it goes when we close it
    (or die)."""
    if not os.path.exists(loopdev.LOOP_CONTROL):
        pytest.skip("no loop device support here")
    backing = tmp_path / f"{cleanup.unique_name('io')}.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    with loopdev.attached(backing) as device:
        yield device.path


def test_io_write_throttle_on_a_loop_device(cgroups, loop_device):
    limit = MiB                                  # 1 MiB/s
    cg = cgroups(io={"device": loop_device, "write_bps": "1M"})
    devnum = cg.limits()["io"][0]["device"]
    st = os.stat(loop_device)
    assert devnum == f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if v1():
        assert read(cgfile(cg.name, "blkio", "blkio.throttle.write_bps_device", "")) == f"{devnum} {limit}"
    else:
        assert f"wbps={limit}" in read(cgfile(cg.name, "blkio", "", "io.max"))

    # O_DIRECT: v1 blkio cannot throttle buffered writeback, so write around the page cache
    blocks, size = 24, 64 * 1024                 # 1.5 MiB
    start = time.monotonic()
    dd = run_in(cgroups, cg, ["dd", "if=/dev/zero", f"of={loop_device}", f"bs={size}", f"count={blocks}",
                              "oflag=direct"], stderr=subprocess.DEVNULL)
    assert dd.wait(timeout=30) == 0
    rate = blocks * size / (time.monotonic() - start)
    written = cg.stats()["io_write_bytes"]
    assert written >= blocks * size
    if v1():
        outside = sum(int(line.split()[2]) for line in read(cgfile(
            cg.name, "blkio", "blkio.throttle.io_service_bytes", "")).splitlines() if " Write " in line)
    else:
        outside = sum(int(kv.split("=")[1]) for line in read(cgfile(cg.name, "blkio", "", "io.stat")).splitlines()
                      for kv in line.split()[1:] if kv.startswith("wbytes="))
    assert outside >= blocks * size
    assert 0.2 * limit < rate < 2 * limit, f"{rate / MiB:.2f} MiB/s with a 1 MiB/s limit"


def test_delete_kills_sub_cgroups_and_processes_that_ignore_sigterm(cgroups):
    cg = cgroups(pids=20)
    proc = run_in(cgroups, cg, ["sh", "-c", "trap '' TERM; sleep 1000 & wait; sleep 1000"])
    wait_for(lambda: len(cg.procs()) == 2, what="sh and sleep")
    # sub-cgroups made from outside, as a learner with mkdir would; the processes move down into them
    for d in dirs_of(cg.name):
        if d.startswith(f"{ROOT}/cpuset/"):
            continue                             # v1 cpuset children would need cpus/mems copied
        os.makedirs(os.path.join(d, "sub", "deeper"))
        with open(os.path.join(d, "sub", "deeper", "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
    assert cgroup_of(proc.pid, "memory") == f"/{relpath(cg.name)}/sub/deeper"
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.1)
    assert proc.poll() is None                   # it ignores SIGTERM
    assert proc.pid in cg.procs()                # procs() is recursive

    cg.delete()
    assert proc.wait(timeout=5) == -signal.SIGKILL
    for d in dirs_of(cg.name):
        assert not os.path.exists(d), d


def test_bad_limits_create_nothing():
    name = cleanup.unique_name("bad")
    bad = [dict(memory="12Q"), dict(memory="64M", cpu=99), dict(pids=0), dict(cpuset="4096"),
           dict(io={"device": "/dev/null", "write_bps": "1M"}), dict(memory="64M", cpu_weight=0)]
    for limits in bad:
        with pytest.raises(InvalidValue):
            Cgroup.create(name, **limits)
        for d in dirs_of(name):
            assert not os.path.exists(d)
        assert cleanup.owner("cgroup", name) == (None, False)


def test_kernel_refusal_names_file_and_value(cgroups):
    from labkit.cgroups import files
    cg = cgroups()
    path = cgfile(cg.name, "cpu", "cpu.cfs_quota_us", "cpu.max")
    value = "500" if v1() else "500 100000"
    from labkit.cgroups import v1 as v1mod, v2 as v2mod
    hints = (v1mod.HINTS if v1() else v2mod.HINTS)[os.path.basename(path)]
    with pytest.raises(LabkitError, match=rf"write {value} to {path}: Invalid argument.*1000 us"):
        files.write(path, value, hints)


def test_open_and_the_cleanup_hooks(cgroups):
    cg = Cgroup.create(memory="64M")
    try:
        proc = start_in(cg, ["sleep", "1000"])
        same = Cgroup.open(cg.name)
        assert same.procs() == [proc.pid] and same.limits()["memory"] == 64 * MiB
        (item,) = [i for i in find_leftovers() if i.name == cg.name]
        assert item.kind == "cgroup" and item.owner_pid == os.getpid() and item.owner_alive
        remove_leftover(item)                    # what `labkit cleanup` does to a dead owner's cgroup
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert not any(os.path.exists(d) for d in dirs_of(cg.name))
        assert cg.name not in [i.name for i in find_leftovers()]
    finally:
        cg.delete()


def test_wait_for_command_skips_members_that_come_and_go(cgroups):
    """A shell that forks short-lived children (most gone before anyone reads their names), then execs
    sleep: wait_for_command finds the sleep, never trips on a vanished member, and times out when
    no member ever has the name."""
    cg = cgroups(pids=50)
    churn = "for i in $(seq 20); do /bin/true; done; exec sleep 1000"   # one short child at a time
    proc = run_in(cgroups, cg, ["sh", "-c", churn])
    assert cg.wait_for_command("sleep", timeout=60) == proc.pid
    assert read(f"/proc/{proc.pid}/comm") == "sleep"
    with pytest.raises(TimeoutError, match="no process named 'nothing-like-this'"):
        cg.wait_for_command("nothing-like-this", timeout=0.2)
