"""A notebook kernel killed outright (SIGKILL) leaves nothing behind: its watchdog cleans up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import cleanup

import kernel_state as ks

pytestmark = pytest.mark.root

EXPERIMENT = """
import sys, threading, time
from labkit import namespaces
from labkit.cgroups import Cgroup
if sys.argv[1] == "threaded":     # a notebook kernel has threads: its watchdog is a fresh interpreter
    threading.Thread(target=time.sleep, args=(300,), daemon=True).start()
group = Cgroup.create(memory="64M", pids=20)
box = namespaces.spawn(["sleep", "300"], "pid,mnt,uts,ipc,net", cgroup=group)
print(group.name, box.pid, flush=True)
time.sleep(300)
"""


def _owned_by(pid):
    return [i for i in cleanup.find_all(include_in_use=True) if i.owner_pid == pid]


@pytest.mark.parametrize("owner", ["single-threaded", "threaded"])
def test_sigkill_of_the_owner_is_followed_by_a_full_cleanup(owner):
    env = dict(os.environ, LABKIT_ALLOW_HOST="1")
    env.pop("LABKIT_NO_WATCHDOG", None)
    kernel = subprocess.Popen([sys.executable, "-c", EXPERIMENT, owner], stdout=subprocess.PIPE, text=True, env=env)
    group_name, box_pid = kernel.stdout.readline().split()
    box_pid = int(box_pid)
    assert os.path.isdir(f"/sys/fs/cgroup/pids/{group_name}") or os.path.isdir(f"/sys/fs/cgroup/{group_name}")
    assert _owned_by(kernel.pid), "the experiment's objects should be claimed by it"

    dog = ks.watchdog_of(kernel.pid)
    assert dog, "no watchdog runs for the experiment"
    with open(f"/proc/{dog}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    if owner == "threaded":      # a fresh interpreter (cleanup._exec_watchdog)
        assert b"labkit.watchdog" in argv, argv
    else:                        # a fork of its owner (cleanup._fork_watchdog): the owner's command line
        assert b"labkit.watchdog" not in argv and EXPERIMENT.encode() in argv, argv
        # it kept none of the owner's descriptors: the pipe we read the owner's output from would
        # otherwise stay open after the owner's death (`labkit run ... | cat` would not end)
        held = {os.readlink(f"/proc/{dog}/fd/{fd}") for fd in os.listdir(f"/proc/{dog}/fd")}
        assert held <= {"/dev/null", "anon_inode:[pidfd]"}, held

    kernel.send_signal(signal.SIGKILL)
    kernel.wait()
    deadline = time.monotonic() + 20
    while _owned_by(kernel.pid) and time.monotonic() < deadline:
        time.sleep(0.2)

    assert not _owned_by(kernel.pid), "the watchdog did not clean up after the killed process"
    assert not os.path.exists(f"/proc/{box_pid}"), "the container's process outlived its owner"
    assert not any(os.path.isdir(os.path.join("/sys/fs/cgroup", c, group_name))
                   for c in os.listdir("/sys/fs/cgroup"))
