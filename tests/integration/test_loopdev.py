"""Loop devices: attached with AUTOCLEAR (as sysfs shows it), gone when their owner is killed, and
the sweep lists only devices over files in this labkit's work directory."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import cleanup, loopdev

pytestmark = pytest.mark.root
needs_loop = pytest.mark.skipif(not os.path.exists(loopdev.LOOP_CONTROL), reason="no /dev/loop-control here")


def sysfs(device: str, name: str) -> str | None:
    try:
        return (Path("/sys/block") / os.path.basename(device) / "loop" / name).read_text().strip()
    except OSError:
        return None                   # not attached (the loop/ directory exists only while bound)


def wait_detached(device: str, backing: str, deadline: float = 30.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if sysfs(device, "backing_file") != backing:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def work_file():
    """A 16 MiB sparse file named labkit-... in a work directory this test owns."""
    name = cleanup.unique_name("loop")
    cleanup.claim("dir", name)
    work = cleanup.work_dir(name)
    backing = work / f"{name}.img"
    with open(backing, "wb") as f:
        f.truncate(16 << 20)
    yield backing
    shutil.rmtree(work, ignore_errors=True)
    cleanup.release("dir", name)


@needs_loop
def test_attached_device_has_autoclear_and_is_listed_as_ours(work_file):
    with loopdev.attached(work_file) as dev:
        assert sysfs(dev.path, "autoclear") == "1"
        assert sysfs(dev.path, "backing_file") == str(work_file)
        listed = [i for i in loopdev.find_leftovers() if i.where == dev.path]
        assert len(listed) == 1 and listed[0].owner_pid == os.getpid() and listed[0].owner_alive
    assert wait_detached(dev.path, str(work_file)), "closing the last opener did not detach it"


@needs_loop
def test_a_killed_owner_leaves_no_loop_device(work_file):
    code = ("import sys, time; from labkit import loopdev\n"
            "with loopdev.attached(sys.argv[1]) as dev:\n"
            "    print(dev.path, flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(work_file)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "LABKIT_NO_WATCHDOG": "1"})
    try:
        device = child.stdout.readline().strip()
        assert sysfs(device, "backing_file") == str(work_file)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert wait_detached(device, str(work_file)), "the kernel kept a dead owner's loop device"
    cleanup.release("loop", work_file.name)     # the dead child's record


@needs_loop
def test_a_labkit_named_file_outside_the_work_directory_is_not_ours(tmp_path):
    # What another learner's device looks like from here: a labkit- name, but not our file.
    backing = tmp_path / cleanup.unique_name("other")
    with open(backing, "wb") as f:
        f.truncate(16 << 20)
    with loopdev.attached(backing) as dev:
        assert sysfs(dev.path, "autoclear") == "1"
        assert all(i.where != dev.path for i in loopdev.find_leftovers())
