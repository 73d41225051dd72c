"""The outputs stored in notebooks/ are the learner's platform's (systemd + cgroup v2), not a build
machine's: a learner reads them before running anything. Regenerate them with
`make test-guest UPDATE_OUTPUTS=1`; `python tests/guest/outputs.py scan` lists what this test finds."""
from __future__ import annotations

import nbformat
import pytest

from tests.guest import outputs

# The cgroup chapter's stored outputs name the v2 interface files a learner's VM has.
V2_FILES = {"10-cgroups": ["cgroup2"], "11-memory": ["memory.max"], "12-cpu": ["cpu.max"], "13-pids": ["pids.max"],
            "14-io": ["io.max"], "15-cpuset": ["cpuset.cpus.effective"]}
V1_FILES = ("memory.limit_in_bytes", "cpu.cfs_quota_us", "blkio.throttle", "cpuacct.usage")


def stored_text(name: str) -> str:
    [path] = outputs.NOTEBOOKS.glob(f"{name}*.ipynb")
    nb = nbformat.read(path, as_version=4)
    return "\n".join(text for cell in nb.cells if cell.cell_type == "code" for text in outputs.output_texts(cell))


def test_no_build_machine_traces_in_stored_outputs():
    traces = outputs.scan()
    assert not traces, ("stored outputs from a build machine (regenerate them in the guest: "
                        "make test-guest UPDATE_OUTPUTS=1):\n" + "\n".join(traces))


@pytest.mark.parametrize("name", sorted(V2_FILES))
def test_cgroup_chapter_outputs_show_the_v2_interface(name):
    text = stored_text(name)
    for f in V2_FILES[name]:
        assert f in text, f"{name}: stored outputs do not show {f} (executed on a v1 machine?)"
    assert not [f for f in V1_FILES if f in text], f"{name}: stored outputs name v1 files"


def _notebook_with_output(text: str, tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)]))
    nbformat.write(nb, tmp_path / "99-probe.ipynb")
    return outputs.scan(tmp_path)


@pytest.mark.parametrize("text", [
    "cgroup      0::/process_api/947edacaa18e",                 # the build machine's sandbox as pid 1
    "ls / -> .dockerenv bin boot",                             # the build machine was a Docker container
    "memory cgroup of a process: /../process_api/9",           # a path from outside the cgroup namespace
    "12:pids:/\n9:name=systemd:/\n0::/",                        # the hybrid hierarchy
])
def test_the_scan_finds_each_kind_of_trace(text, tmp_path):
    assert _notebook_with_output(text, tmp_path)


@pytest.mark.parametrize("text", [
    "0::/system.slice/deep-dive-lab.service/jupyter",
    "unified cgroup of a process that only joined the namespace, component by component: ['..', '..', 'jupyter']",
    "a relative path ../data/x and ./run/../y",
])
def test_the_scan_passes_a_learners_outputs(text, tmp_path):
    assert not _notebook_with_output(text, tmp_path)
