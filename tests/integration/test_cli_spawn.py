"""`labkit spawn` and `labkit doctor` as a learner runs them: whole processes, checked from outside."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cleanup

pytestmark = pytest.mark.root

LABKIT = [str(Path(sys.executable).with_name("labkit"))]
KINDS = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"]


def labkit(*args, timeout=60):
    env = dict(os.environ, LABKIT_ALLOW_HOST="1")
    return subprocess.run(LABKIT + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def test_doctor_json_reports_this_hosts_cgroups_and_namespaces():
    report = json.loads(labkit("doctor", "--json").stdout)
    assert report["cgroup_mode"] == __import__("labkit.host", fromlist=["x"]).cgroup_mode()
    versions = {c["name"]: c["version"] for c in report["controllers"]}
    for name in ("memory", "cpu", "pids", "cpuset"):
        assert name in versions
    assert [n["kind"] for n in report["namespaces"] if n["available"]] == KINDS
    assert report["root"] is True


@pytest.mark.parametrize("kind", KINDS)
def test_spawn_puts_the_command_in_a_new_namespace_of_each_kind(kind):
    result = labkit("spawn", "--ns", kind, "--", "readlink", f"/proc/self/ns/{kind}")
    assert result.returncode == 0, result.stderr
    inside = result.stdout.strip()
    assert inside.startswith(f"{kind}:[")
    assert inside != os.readlink(f"/proc/self/ns/{kind}")


def test_spawn_passes_the_exit_status_through():
    assert labkit("spawn", "--ns", "pid", "--", "sh", "-c", "exit 7").returncode == 7


def test_spawn_reports_an_oom_kill_with_status_137():
    result = labkit("spawn", "--memory", "32M", "--", sys.executable, "-c", "b = bytearray(200 * 2**20)")
    assert result.returncode == 137, result.stderr
    assert "OOM killer" in result.stderr


def test_spawn_pids_limit_stops_fifty_sleepers():
    result = labkit("spawn", "--pids", "10", "--", "sh", "-c",
                    "for i in $(seq 50); do sleep 5 & done; wait")
    assert "fork" in result.stderr.lower(), result.stderr  # the shell was refused a fork (EAGAIN)


def _labkit_cgroups() -> set[str]:
    root = "/sys/fs/cgroup/memory" if os.path.isdir("/sys/fs/cgroup/memory") else "/sys/fs/cgroup"
    return {name for name in os.listdir(root) if name.startswith("labkit-")}


def test_spawn_refuses_a_bad_memory_limit_naming_it_and_creates_nothing():
    before = _labkit_cgroups()
    result = labkit("spawn", "--memory", "12Q", "--", "true")
    assert result.returncode == 2
    assert "12Q" in result.stderr
    # Anything new that no live process owns would be ours (other notebooks' groups may come and go).
    new = [name for name in _labkit_cgroups() - before if not cleanup.owner("cgroup", name)[1]]
    assert new == []


def test_spawn_sets_the_hostname_only_inside():
    outside = os.uname().nodename
    result = labkit("spawn", "--ns", "uts", "--hostname", "labkit-box", "--", "hostname")
    assert result.stdout.strip() == "labkit-box"
    assert os.uname().nodename == outside


def test_cleanup_check_passes_after_spawns():
    result = labkit("cleanup", "--check")
    assert result.returncode == 0, result.stdout
