"""`labkit doctor` finds busybox the way labkit's root filesystems do: a static one, or it says so."""
from __future__ import annotations

import os
import shutil

from labkit import binaries, doctor


def _report(tools: dict) -> doctor.HostReport:
    return doctor.HostReport(kernel="", arch="", cgroup_mode="hybrid", controllers=[], namespaces=[],
                             root=True, lab_host=True, tools=tools)


def test_a_dynamic_busybox_on_path_is_not_enough(tmp_path, monkeypatch):
    dynamic = tmp_path / "busybox"                      # Debian's `busybox` package: linked to libc
    shutil.copy(os.path.realpath(shutil.which("sh")), dynamic)
    assert not binaries.is_static_executable(dynamic)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(binaries, "BUSYBOX_CANDIDATES", (str(dynamic),))
    found = doctor.tools()
    assert found["busybox"] is None
    assert any("statically linked busybox" in p for p in doctor._problems(_report(found)))


def test_the_static_busybox_provisioning_installs_is_found():
    found = doctor.tools()
    assert found["busybox"] == str(binaries.find_busybox())
    assert binaries.is_static_executable(found["busybox"])
    assert not any("busybox" in p for p in doctor._problems(_report(found)))
