"""`labkit doctor` on cgroup v2: the parent labkit's cgroups go under, and whether systemd delegated it."""
from __future__ import annotations

import os

import pytest

from labkit import doctor, host


@pytest.fixture
def v2_tree(tmp_path, monkeypatch):
    """A fake unified hierarchy: system.slice/lab.service (delegated) with jupyter/ and labkit/."""
    service = tmp_path / "system.slice" / "lab.service"
    for d in (service / "jupyter", service / "labkit"):
        d.mkdir(parents=True)
        (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (service / "jupyter" / "cgroup.procs").write_text("123\n")
    (service / "labkit" / "cgroup.procs").write_text("")
    try:
        os.setxattr(service, "user.delegate", b"1")    # systemd writes trusted.delegate (root only)
    except OSError:
        pytest.skip("this file system keeps no user xattrs")
    monkeypatch.setattr(host, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(host, "cgroup_mode", lambda: "v2")
    return tmp_path


def test_delegated_parent_is_ready(v2_tree, monkeypatch):
    monkeypatch.setenv("LABKIT_CGROUP_PARENT", "system.slice/lab.service/labkit")
    parent = doctor.cgroup_parent()
    assert parent["path"] == "/system.slice/lab.service/labkit"
    assert parent["delegated_by"] == "/system.slice/lab.service"
    assert "memory" in parent["controllers"] and parent["processes"] == 0
    report = doctor.HostReport(kernel="", arch="", cgroup_mode="v2", controllers=[], namespaces=[],
                               root=True, lab_host=True, tools={"busybox": "/bin/busybox"},
                               cgroup_parent=parent)
    assert not [p for p in doctor._problems(report) if "cgroup parent" in p]


def test_parent_with_processes_is_a_problem(v2_tree, monkeypatch):
    monkeypatch.setenv("LABKIT_CGROUP_PARENT", "system.slice/lab.service/jupyter")
    parent = doctor.cgroup_parent()
    assert parent["processes"] == 1
    report = doctor.HostReport(kernel="", arch="", cgroup_mode="v2", controllers=[], namespaces=[],
                               root=True, lab_host=True, tools={"busybox": "/bin/busybox"},
                               cgroup_parent=parent)
    assert any("holds processes" in p for p in doctor._problems(report))


def test_missing_parent_is_a_problem(v2_tree, monkeypatch):
    monkeypatch.setenv("LABKIT_CGROUP_PARENT", "nowhere")
    parent = doctor.cgroup_parent()
    assert not parent["exists"] and parent["delegated_by"] == ""


def test_no_parent_report_off_v2(monkeypatch):
    monkeypatch.setattr(host, "cgroup_mode", lambda: "hybrid")
    assert doctor.cgroup_parent() == {}
