"""What the engine tests share: one labkit engine per test module, Debian's docker CLI against it,
and reads of /proc/PID/status. (Kernel-state helpers are in kernel_state.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import dockerd
from labkit.emulation import scaled
from labkit.engine import EngineProcess

IMAGE = "labkit-busybox"


@pytest.fixture(scope="module")
def engine():
    with EngineProcess() as engine:
        yield engine


def docker(engine, *args, timeout=60, input=None):
    """The docker CLI against `engine`; the CompletedProcess, whatever its status. `timeout` is for
    hardware: on an emulated CPU it is stretched (labkit.emulation)."""
    return dockerd.docker(*args, host=engine.url, timeout=scaled(timeout), check=False, input=input)


def inspect(engine, name) -> dict:
    return json.loads(docker(engine, "inspect", name).stdout)[0]


def status(pid: int, key: str) -> str:
    """A line of /proc/PID/status, e.g. status(pid, "CapBnd") -> "00000000a80425fb"."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)
