"""labkit-runtime's device rules on pure cgroup v2: an eBPF program attached to the container's
cgroup (labkit/runtime/devices.py), and the kernel's answer when the container opens a device node.

Runs in the microVM of tests/v2tier/run.py. The container (labkit-runtime `run`: create, start, wait,
delete) opens two character devices its root filesystem holds, /nodes/null (1:3, allowed by every
container's defaults) and /nodes/kmsg (1:11, opened write-only: nothing is written); whether the
second open succeeds is decided by the program alone.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cleanup, rootfs
from labkit.host import cgroup_mode

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(cgroup_mode() != "v2",
                       reason="needs a pure cgroup-v2 hierarchy: run `python tests/v2tier/run.py`"),
]
OPEN_BOTH = "true > /nodes/null && echo null opened; true > /nodes/kmsg && echo kmsg opened"


def run_container(tmp_path: Path, rules: list[dict]) -> subprocess.CompletedProcess:
    bundle = tmp_path / "bundle"
    rootfs.export(bundle / "rootfs")
    nodes = bundle / "rootfs" / "nodes"
    nodes.mkdir()
    os.mknod(nodes / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(nodes / "kmsg", stat.S_IFCHR | 0o600, os.makedev(1, 11))
    name = cleanup.unique_name("v2dev")
    cleanup.claim("cgroup", name)            # the runtime's cgroup: no sweep takes it meanwhile
    config = {"ociVersion": "1.0.2", "hostname": "devices",
              "process": {"args": ["sh", "-c", OPEN_BOTH], "cwd": "/", "env": ["PATH=/bin:/sbin"]},
              "root": {"path": "rootfs"}, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
              "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "uts", "ipc", "network")],
                        "cgroupsPath": "/" + name, "resources": {"devices": rules}}}
    (bundle / "config.json").write_text(json.dumps(config))
    try:
        result = subprocess.run([sys.executable, "-m", "labkit.runtime.cli", "--root", str(tmp_path / "state"),
                                 "run", "--bundle", str(bundle), name],
                                capture_output=True, text=True, timeout=120)
        assert not Path("/sys/fs/cgroup", name).exists(), "delete left the container's cgroup"
    finally:
        cleanup.release("cgroup", name)
    return result


DENY_ALL = {"allow": False, "access": "rwm"}


def test_a_device_no_rule_allows_cannot_be_opened(tmp_path):
    result = run_container(tmp_path, [DENY_ALL, {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                 "access": "rwm"}])
    assert "null opened" in result.stdout, result.stderr
    assert "kmsg opened" not in result.stdout
    assert "/nodes/kmsg: Operation not permitted" in result.stderr      # EPERM: the program said 0


def test_a_device_a_rule_allows_can_be_opened(tmp_path):
    result = run_container(tmp_path, [DENY_ALL, {"allow": True, "type": "c", "major": 1, "minor": 11,
                                                 "access": "w"}])
    assert result.stdout.split("\n")[:2] == ["null opened", "kmsg opened"], result.stderr
    assert result.returncode == 0


def test_a_later_deny_wins_over_an_earlier_allow(tmp_path):
    result = run_container(tmp_path, [{"allow": True, "access": "rwm"},
                                      {"allow": False, "type": "c", "major": 1, "minor": 11, "access": "rwm"}])
    assert "null opened" in result.stdout and "kmsg opened" not in result.stdout, result.stderr
