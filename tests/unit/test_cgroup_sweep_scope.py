"""The cgroup sweep's reach: labkit- cgroups below another cgroup namespace's cgroup (a learner's
container on the same kernel) are that container's labkit's, not ours."""
from __future__ import annotations

import os

from labkit.cgroups.base import find_labkit_dirs, holds_another_namespace


def test_the_walk_stops_at_a_cgroup_of_another_namespace(tmp_path):
    for rel in ("labkit-cg-mine", "docker/learner1/labkit-cg-theirs", "system.slice/lab/labkit-ctr-x",
                "labkit-cg-mine/child"):
        (tmp_path / rel).mkdir(parents=True)
    learner = str(tmp_path / "docker" / "learner1")
    found = find_labkit_dirs(str(tmp_path), foreign=lambda path, ours: path == learner)
    assert found == {"labkit-cg-mine", "system.slice/lab/labkit-ctr-x"}
    assert find_labkit_dirs(str(tmp_path), foreign=lambda path, ours: False) == \
        {"labkit-cg-mine", "docker/learner1/labkit-cg-theirs", "system.slice/lab/labkit-ctr-x"}


def test_a_cgroup_holding_this_process_is_not_foreign_and_one_of_another_namespace_is(tmp_path):
    (tmp_path / "cgroup.procs").write_text(f"{os.getpid()}\n")
    assert not holds_another_namespace(str(tmp_path))
    assert holds_another_namespace(str(tmp_path), ours="cgroup:[1]")    # as if we were elsewhere
    assert not holds_another_namespace(str(tmp_path / "missing"))
