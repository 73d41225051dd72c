"""Chapter 1's helpers on the real kernel: nsview, pidone, propagation, timens - checked from /proc."""
from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
import time

import pytest

from labkit import cleanup, namespaces as ns, nsview, propagation, timens
from labkit.cgroups import Cgroup

pytestmark = pytest.mark.root

ORPHAN = ["sh", "-c", "(sleep 0.1 &) </dev/null >/dev/null 2>&1"]


def test_check_namespaces_against_a_real_process():
    with ns.spawn(["sleep", "30"], "uts,net") as box:
        assert nsview.check_namespaces(box.pid, "uts,net")[0]
        ok, why = nsview.check_namespaces(box.pid, "uts")
        assert not ok and "net" in why
        assert nsview.differing_kinds(box.pid) == {"uts", "net"}
        summary = nsview.sharing_summary({"notebook": "self", "box": box.pid})
        assert summary.startswith("box: own net, uts;")


def test_nspid_shows_pid_1_inside():
    with ns.spawn(["sleep", "30"], "pid,mnt") as box:
        assert nsview.nspid(box.pid) == (box.pid, 1)
        assert nsview.proc_info(box.pid).inner_pid == 1


def _running(pid: int) -> int:
    return len([p for p in nsview.descendants(pid) if p.state != "Z"])


def _wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def _orphans_then_zombies(init: list[str], settled: int, rounds: int = 3) -> list[int]:
    """Start `init` as pid 1 (`settled` processes once started), leave `rounds` orphans inside,
    count zombies after each has exited."""
    counts = []
    with ns.spawn(init, "pid,mnt") as box:
        _wait_until(lambda: _running(box.pid) == settled)
        base = _running(box.pid)
        for _ in range(rounds):
            ns.enter(box.pid, "pid", ORPHAN)
            _wait_until(lambda: _running(box.pid) == base)               # the orphan has exited ...
            _wait_until(lambda: not nsview.zombies(box.pid), timeout=1)  # ... a reaper had time to reap
            counts.append(len(nsview.zombies(box.pid)))
    return counts


def test_zombies_pile_up_under_a_pid_1_that_does_not_reap():
    assert _orphans_then_zombies(["sleep", "60"], settled=1) == [1, 2, 3]


def test_pidone_reaps_orphans_and_forwards_sigterm():
    assert _orphans_then_zombies([sys.executable, "-m", "labkit.pidone", "sleep", "60"], settled=2) == [0, 0, 0]
    with ns.spawn([sys.executable, "-m", "labkit.pidone", "sleep", "60"], "pid,mnt") as box:
        for _ in range(100):   # wait until pidone has installed its handlers and started sleep
            if len(nsview.descendants(box.pid)) == 2:
                break
            time.sleep(0.05)
        box.send_signal(signal.SIGTERM)
        assert box.wait(timeout=10) == 128 + signal.SIGTERM


def test_when_pid_1_dies_everything_in_the_namespace_dies():
    with ns.spawn(["sleep", "60"], "pid,mnt") as box:
        with ns.spawn(["sleep", "60"], None, join=(box.pid, "pid"), stdout=ns.DEVNULL) as second:
            inside = [pid for pid in os.listdir("/proc") if pid.isdigit() and _pid_ns(pid) == _pid_ns(box.pid)]
            assert sorted(int(p) for p in inside) == sorted([box.pid, second.pid])
            box.kill()
            box.wait(timeout=10)
            assert second.wait(timeout=10) == -signal.SIGKILL    # the kernel killed it


def _pid_ns(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _state(pid):
    try:
        return nsview.proc_info(int(pid)).state
    except OSError:
        return None


@pytest.mark.parametrize("mode, host_to_box, box_to_host", [
    ("shared", True, True), ("private", False, False), ("slave", True, False)])
def test_propagation_modes_read_from_both_mount_tables(mode, host_to_box, box_to_host):
    with Cgroup.create() as group, propagation.PropagationDemo(mode, cgroup=group) as demo:
        assert demo.box.pid in group.procs()
        demo.mount_on_host()
        demo.mount_in_box()
        assert demo.crossed() == {"host -> box": host_to_box, "box -> host": box_to_host}
        seen = demo.propagation()
        assert seen["host"].startswith("shared:")
        expected_box = {"shared": seen["host"], "private": "private",
                        "slave": "master:" + seen["host"].split(":")[1]}[mode]
        assert seen["box"] == expected_box
        path = demo.path
    assert not path.exists()
    assert not any(mp.startswith(str(path)) for mp in propagation.mountinfo())


def test_pivot_root_is_refused_while_root_is_shared():
    assert propagation.pivot_root_refusal() == {"shared": "refused: Invalid argument", "private": "ok"}
    assert not any(name.startswith("labkit-pivot") for name in os.listdir(cleanup.WORK_DIR))


def test_time_offsets_apply_to_children_only_and_freeze_after_the_first():
    seen = timens.late_offset_experiment(boottime=timens.DAY)
    assert seen["first_write"] == "ok"
    assert abs(seen["uptime_self_after_unshare"] - seen["uptime_before"]) < 60
    assert seen["uptime_child"] - seen["uptime_before"] > timens.DAY - 60
    assert "errno 13" in seen["second_write"]      # EACCES


@pytest.mark.skipif(shutil.which("dockerd") is None, reason="docker.io is not installed")
def test_a_docker_container_has_its_own_namespaces():
    from labkit.dockerd import Dockerd

    with Dockerd():                              # uses a running daemon, or starts one for the test
        with nsview.DockerSleeper() as box:
            own = nsview.differing_kinds(box.pid)
            assert {"pid", "mnt", "net", "uts", "ipc"} <= own
            name = box.name
        listed = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"],
                                capture_output=True, text=True)
    assert name not in listed.stdout.split()
