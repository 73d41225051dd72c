"""A notebook kernel killed outright (SIGKILL) leaves nothing behind: its watchdog cleans up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import cleanup

pytestmark = pytest.mark.root

EXPERIMENT = """
import time
from labkit import namespaces
from labkit.cgroups import Cgroup
group = Cgroup.create(memory="64M", pids=20)
box = namespaces.spawn(["sleep", "300"], "pid,mnt,uts,ipc,net", cgroup=group)
print(group.name, box.pid, flush=True)
time.sleep(300)
"""


def _owned_by(pid):
    return [i for i in cleanup.find_all(include_in_use=True) if i.owner_pid == pid]


def test_sigkill_of_the_owner_is_followed_by_a_full_cleanup():
    env = dict(os.environ, LABKIT_ALLOW_HOST="1")
    env.pop("LABKIT_NO_WATCHDOG", None)
    kernel = subprocess.Popen([sys.executable, "-c", EXPERIMENT], stdout=subprocess.PIPE, text=True, env=env)
    group_name, box_pid = kernel.stdout.readline().split()
    box_pid = int(box_pid)
    assert os.path.isdir(f"/sys/fs/cgroup/pids/{group_name}") or os.path.isdir(f"/sys/fs/cgroup/{group_name}")
    assert _owned_by(kernel.pid), "the experiment's objects should be claimed by it"

    kernel.send_signal(signal.SIGKILL)
    kernel.wait()
    deadline = time.monotonic() + 20
    while _owned_by(kernel.pid) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert not _owned_by(kernel.pid), "the watchdog did not clean up after the killed process"
    assert not os.path.exists(f"/proc/{box_pid}"), "the container's process outlived its owner"
    assert not any(os.path.isdir(os.path.join("/sys/fs/cgroup", c, group_name))
                   for c in os.listdir("/sys/fs/cgroup"))
