"""What a pure cgroup-v2 hierarchy does, asserted on the kernel's own files.

These run inside the throwaway microVM of tests/v2tier/run.py, where /sys/fs/cgroup is a fresh
cgroup2 mount with every controller (this lab's host is hybrid, so v2 cannot be exercised there).
Each test makes a labkit- cgroup directly under the root, puts a real process in it and reads the
result back from the interface files: memory.events, cpu.stat, pids.events, io.stat,
cpuset.cpus.effective, cgroup.events. On a host that is not pure v2 they are skipped.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import cleanup
from labkit.host import cgroup_mode

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(cgroup_mode() != "v2",
                       reason="needs a pure cgroup-v2 hierarchy: run `python tests/v2tier/run.py`, "
                              "which boots a microVM that has one"),
]


# --- helpers: a cgroup is a directory; its interface files are read and written as text -------------

def read(cg: Path, name: str) -> str:
    return (cg / name).read_text().strip()


def keyed(cg: Path, name: str) -> dict[str, int]:
    """A flat-keyed file such as memory.events ('oom_kill 1') as a dict."""
    return {k: int(v) for k, v in (line.split() for line in read(cg, name).splitlines())}


def start_in(cg: Path, argv: list[str], **kw) -> subprocess.Popen:
    """Start argv already inside `cg`: the child moves itself ('0' = me) before it execs."""
    def join():
        with open(cg / "cgroup.procs", "w") as f:
            f.write("0")
    return subprocess.Popen(argv, preexec_fn=join, **kw)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def remove_tree(cg: Path) -> None:
    """Kill everything in the subtree (cgroup.kill), then rmdir the leaves first."""
    if not cg.exists():
        return
    (cg / "cgroup.kill").write_text("1")
    wait_until(lambda: read(cg, "cgroup.events").startswith("populated 0"))
    for sub in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        sub.rmdir()
    cg.rmdir()


@pytest.fixture
def cg():
    """A fresh labkit- cgroup under the root with every controller enabled for it."""
    enabled = read(ROOT, "cgroup.subtree_control").split()
    missing = [c for c in CONTROLLERS if c not in enabled]
    if missing:
        (ROOT / "cgroup.subtree_control").write_text(" ".join("+" + c for c in missing))
    path = ROOT / cleanup.unique_name("v2t")
    path.mkdir()
    try:
        yield path
    finally:
        remove_tree(path)


# --- the tests -----------------------------------------------------------------------------------------

def test_root_is_pure_v2_with_all_controllers():
    available = read(ROOT, "cgroup.controllers").split()
    assert set(CONTROLLERS) <= set(available), available
    assert not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()  # no v1 files anywhere


def test_memory_max_oom_kill_is_counted_in_memory_events(cg):
    (cg / "memory.max").write_text(str(32 * 2**20))
    if (cg / "memory.swap.max").exists():
        (cg / "memory.swap.max").write_text("0")
    hog = start_in(cg, python("b = b'x' * (200 << 20)"))  # touches 200 MiB: far over 32 MiB
    assert hog.wait(timeout=60) == -9  # SIGKILL from the OOM killer
    events = keyed(cg, "memory.events")
    assert events["oom_kill"] >= 1, events
    assert events["max"] >= 1, events
    assert int(read(cg, "memory.peak" if (cg / "memory.peak").exists() else "memory.max")) <= 32 * 2**20


def test_cpu_max_throttles_and_cpu_stat_counts_it(cg):
    (cg / "cpu.max").write_text("10000 100000")  # 10 ms of CPU every 100 ms: a tenth of one CPU
    assert read(cg, "cpu.max") == "10000 100000"
    spinner = start_in(cg, python("import time\nt = time.time()\nwhile time.time() - t < 1: pass"))
    assert spinner.wait(timeout=60) == 0
    stat = keyed(cg, "cpu.stat")
    assert stat["nr_throttled"] >= 1, stat
    assert stat["throttled_usec"] > 0, stat


def test_pids_max_refuses_a_fork_and_pids_events_counts_it(cg):
    (cg / "pids.max").write_text("4")
    forker = start_in(cg, python(
        "import os, sys, time\n"
        "kids = []\n"
        "for i in range(10):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"          # EAGAIN: the pids controller said no
        "        print('refused', len(kids)); break\n"
        "    if pid == 0:\n"
        "        time.sleep(30); os._exit(0)\n"
        "    kids.append(pid)\n"
        "else:\n"
        "    sys.exit(1)\n"
        "for pid in kids:\n"
        "    os.kill(pid, 9); os.waitpid(pid, 0)\n"), stdout=subprocess.PIPE, text=True)
    out, _ = forker.communicate(timeout=60)
    assert forker.returncode == 0, "every fork succeeded: pids.max did not bite"
    assert out.strip() == "refused 3"  # the forker itself + 3 children = 4 = pids.max
    assert keyed(cg, "pids.events")["max"] >= 1


@pytest.fixture
def loop_device(tmp_path):
    """A 32 MiB loop device backed by a file in the guest's tmpfs."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(32 * 2**20)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_io_max_on_a_loop_device_is_accounted_and_throttled(cg, loop_device):
    majmin = Path(f"/sys/block/{os.path.basename(loop_device)}/dev").read_text().strip()
    (cg / "io.max").write_text(f"{majmin} wbps={1 << 20}")  # 1 MiB/s of writes to this device
    assert f"{majmin} rbps=max wbps=1048576" in read(cg, "io.max")
    dd = start_in(cg, ["dd", "if=/dev/zero", f"of={loop_device}", "bs=256k", "count=8", "oflag=direct"],
                  stderr=subprocess.DEVNULL)
    assert dd.wait(timeout=60) == 0
    stats = {line.split()[0]: dict(kv.split("=") for kv in line.split()[1:])
             for line in read(cg, "io.stat").splitlines()}
    assert int(stats[majmin]["wbytes"]) >= 2 * 2**20, stats  # the 2 MiB written, charged to this cgroup
    # waiting in the throttle queue is io stall time the kernel counts for the cgroup (PSI)
    some = dict(kv.split("=") for kv in read(cg, "io.pressure").splitlines()[0].split()[1:])
    assert int(some["total"]) > 0, some


def test_cpuset_pins_a_process_to_the_chosen_cpu(cg):
    cpus = read(ROOT, "cpuset.cpus.effective")
    last = cpus.replace("-", ",").split(",")[-1]
    (cg / "cpuset.cpus").write_text(last)
    assert read(cg, "cpuset.cpus.effective") == last
    probe = start_in(cg, ["grep", "Cpus_allowed_list", "/proc/self/status"], stdout=subprocess.PIPE, text=True)
    out, _ = probe.communicate(timeout=30)
    assert out.split() == ["Cpus_allowed_list:", last]
    with pytest.raises(OSError) as refused:  # a CPU this machine does not have is refused
        (cg / "cpuset.cpus").write_text("63")
    assert refused.value.errno in (errno.EINVAL, errno.ERANGE)


def test_cgroup_kill_kills_every_process_at_once(cg):
    shell = start_in(cg, ["sh", "-c", "sleep 100 & sleep 100 & sleep 100 & wait"])
    assert wait_until(lambda: len(read(cg, "cgroup.procs").split()) == 4)
    (cg / "cgroup.kill").write_text("1")
    assert shell.wait(timeout=30) == -9
    assert wait_until(lambda: read(cg, "cgroup.events").startswith("populated 0"))
    assert read(cg, "cgroup.procs") == ""


def test_delete_with_sub_cgroups_needs_kill_then_leaves_first(cg):
    leaf = cg / "a" / "b"
    (cg / "cgroup.subtree_control").write_text("+pids")
    (cg / "a").mkdir()
    (cg / "a" / "cgroup.subtree_control").write_text("+pids")
    leaf.mkdir()
    (cg / "a2").mkdir()
    sleepers = [start_in(leaf, ["sleep", "100"]), start_in(cg / "a2", ["sleep", "100"])]
    with pytest.raises(OSError) as busy:  # a cgroup with children cannot be removed
        cg.rmdir()
    assert busy.value.errno == errno.EBUSY
    with pytest.raises(OSError) as busy:  # nor a leaf with processes in it
        leaf.rmdir()
    assert busy.value.errno == errno.EBUSY
    (cg / "cgroup.kill").write_text("1")  # kills the whole subtree
    assert [s.wait(timeout=30) for s in sleepers] == [-9, -9]
    assert wait_until(lambda: read(cg, "cgroup.events").startswith("populated 0"))
    for path in (leaf, cg / "a", cg / "a2", cg):
        path.rmdir()
    assert not cg.exists()


def test_labkit_cgroups_picks_its_v2_backend_and_sees_the_oom_kill():
    """labkit's own Cgroup API on this pure v2 host (the hybrid host exercises its v1 backend)."""
    from labkit import cgroups

    assert cgroups.backend_name() == "v2"
    with cgroups.Cgroup.create(memory="32M", pids=10) as group:
        path = Path(group.path("memory"))
        assert path.parent == ROOT and read(path, "memory.max") == str(32 * 2**20)
        assert read(path, "pids.max") == "10"
        hog = start_in(path, python("b = b'x' * (200 << 20)"))
        assert hog.wait(timeout=60) == -9
        assert keyed(path, "memory.events")["oom_kill"] >= 1
        assert group.oom_kills() >= 1
    assert not path.exists()
