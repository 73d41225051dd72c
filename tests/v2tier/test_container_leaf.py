"""A classroom learner on a pure cgroup-v2 host: its container's cgroup is the root of its own cgroup
namespace, and `labkit lab leaf -- CMD` (the learner's server command, deploy/) must move every
process of the container into `jupyter/`, make `labkit/` beside it with the controllers enabled, and
let labkit's cgroups with limits be made there - v2 forbids processes and enabled children in the same
cgroup, so without the move, the first limit a notebook sets fails.

The "container" here is what Docker's --cgroupns=private gives a process, made by hand in the
microVM: a labkit- cgroup, a process moved into it, `unshare --cgroup --mount` and cgroup2 mounted
again inside, so that the cgroup is "/" there. Asserted on the kernel's files, inside and outside.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import cleanup
from labkit.host import cgroup_mode

ROOT = Path("/sys/fs/cgroup")
PROJECT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(cgroup_mode() != "v2",
                       reason="needs a pure cgroup-v2 hierarchy: run `python tests/v2tier/run.py`, "
                              "which boots a microVM that has one"),
]

# Inside the "container": a second process (Docker's init, say) sleeps, then the server command runs
# through `labkit lab leaf`, and reports what the kernel shows it; then labkit makes a cgroup with a
# memory limit under LABKIT_CGROUP_PARENT.
INSIDE = r"""
umount /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup   # the same superblock: not on top
sleep 120 </dev/null >/dev/null 2>&1 &     # not on our pipe: we read it to its end
echo "sibling=$!"
exec {labkit} lab leaf -- sh -c '
  echo "own=$(grep ^0:: /proc/self/cgroup)"
  echo "parent=$LABKIT_CGROUP_PARENT"
  echo "root_procs=$(wc -l < /sys/fs/cgroup/cgroup.procs)"
  echo "subtree=$(cat /sys/fs/cgroup/cgroup.subtree_control)"
  exec {python} -c "
from labkit.cgroups import Cgroup
with Cgroup.create(memory=\"32M\", pids=20) as cg:
    print(\"made=\" + str(cg.path()))
    print(\"memory.max=\" + open(str(cg.path()) + \"/memory.max\").read().strip())
"'
"""


def test_labkit_lab_leaf_lays_out_a_container_cgroup_namespace():
    name = cleanup.unique_name("ctr")
    cleanup.claim("cgroup", name)
    container = ROOT / name
    container.mkdir()
    available = (ROOT / "cgroup.controllers").read_text().split()
    (ROOT / "cgroup.subtree_control").write_text(" ".join("+" + c for c in ("memory", "pids") if c in available))
    try:
        script = INSIDE.replace("{python}", sys.executable).replace("{labkit}", str(Path(sys.executable).parent / "labkit"))
        # the child enters the container's cgroup first, then its own cgroup (and mount) namespace
        starter = (f"echo 0 > {container}/cgroup.procs && exec unshare --cgroup --mount --propagation private "
                   f"sh -c {_quote(script)}")
        out = subprocess.run(["sh", "-c", starter], capture_output=True, text=True, timeout=120, cwd=PROJECT)
        assert out.returncode == 0, out.stdout + out.stderr
        seen = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        assert seen["own"] == "0::/jupyter"                           # the server is in the leaf
        assert seen["parent"] == "labkit"                             # labkit's cgroups beside it
        assert seen["root_procs"].strip() == "0"                      # the container's root holds none
        assert {"memory", "pids"} <= set(seen["subtree"].split())
        assert seen["made"].startswith("/sys/fs/cgroup/labkit/")      # as the container sees it
        assert seen["memory.max"] == str(32 * 2**20)
        # from outside: every process of the container moved, the sibling too
        sibling = seen["sibling"].strip()
        assert sibling in (container / "jupyter" / "cgroup.procs").read_text().split()
        assert (container / "cgroup.procs").read_text() == ""
        assert (container / "labkit").is_dir()
    finally:
        for pid in (container / "jupyter").joinpath("cgroup.procs").read_text().split() \
                if (container / "jupyter").is_dir() else []:
            subprocess.run(["kill", "-9", pid], check=False)
        _remove_tree(container)
        cleanup.release("cgroup", name)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _remove_tree(top: Path) -> None:
    """Children before parents; a cgroup goes once its processes are gone (poll the kernel)."""
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
        deadline = time.monotonic() + 10
        while d.exists():
            try:
                d.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
