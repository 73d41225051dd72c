"""A notebook can be re-run from the top after its kernel died mid-experiment, with no manual cleanup.

What a learner does: runs half of 03-uts (a cgroup and a `sleep` in its own uts namespace now
exist), the kernel dies outright (SIGKILL: "Restart kernel", the OOM killer), they restart and press
"Run all". The new run must succeed, and afterwards nothing of either kernel may be left on the machine.
Two ways the dead kernel's objects can go: its watchdog (labkit/watchdog.py), or - when there is no
watchdog - the sweep of dead owners' leftovers that the next labkit process does at its start
(host.require_lab_host). Both are tried.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from labkit import cleanup

pytestmark = pytest.mark.root

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK = NOTEBOOKS / "03-uts.ipynb"
HALFWAY = "box = spawn("  # run up to and including the cell that starts the box


def _owned_by(pid: int) -> list[cleanup.Leftover]:
    return [i for i in cleanup.find_all(include_in_use=True) if i.owner_pid == pid]


def _run_halfway_then_kill(nb, env) -> dict:
    """Run the notebook's cells up to the box in a kernel, look at what exists, SIGKILL the kernel."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(NOTEBOOKS), env=env)
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            reply = client.execute_interactive(cell.source, timeout=60, output_hook=lambda msg: None)
            assert reply["content"]["status"] == "ok", reply["content"]
            if HALFWAY in cell.source:
                break
        else:
            pytest.fail(f"{NOTEBOOK.name} has no cell with {HALFWAY!r} any more: update HALFWAY")
        printed = []
        probe = "import os; print(os.getpid(), box.pid, group.path('memory'))"
        client.execute_interactive(probe, timeout=30, output_hook=lambda msg: printed.append(
            msg["content"]["text"]) if msg["msg_type"] == "stream" else None)
        kernel_pid, box_pid, cgroup_dir = "".join(printed).split()
        state = {"kernel_pid": int(kernel_pid), "box_pid": int(box_pid), "cgroup_dir": cgroup_dir}
        # the experiment is really half done: a claimed cgroup holding the box, seen from outside
        assert str(state["box_pid"]) in Path(cgroup_dir, "cgroup.procs").read_text().split()
        assert {i.kind for i in _owned_by(state["kernel_pid"])} >= {"cgroup"}
        os.kill(state["kernel_pid"], signal.SIGKILL)
        for _ in range(100):
            if not km.is_alive():
                break
            time.sleep(0.1)
        assert not km.is_alive()
        return state
    finally:
        client.stop_channels()
        km.cleanup_resources()


def _gone(state: dict) -> bool:
    box_alive = os.path.exists(f"/proc/{state['box_pid']}") and \
        Path(f"/proc/{state['box_pid']}/cmdline").read_bytes().startswith(b"sleep\0600")
    return not box_alive and not os.path.exists(state["cgroup_dir"]) and not _owned_by(state["kernel_pid"])


@pytest.mark.parametrize("watchdog", ["with watchdog", "without watchdog"])
def test_a_notebook_reruns_from_the_top_after_its_kernel_was_killed_mid_experiment(watchdog):
    env = dict(os.environ, LABKIT_ALLOW_HOST="1")
    env.pop("LABKIT_NO_WATCHDOG", None)
    if watchdog == "without watchdog":
        env["LABKIT_NO_WATCHDOG"] = "1"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    state = _run_halfway_then_kill(nb, env)
    # without a watchdog the box and its cgroup are still there now: the re-run has to cope with them

    # "Run all" in a new kernel, exactly as stored; it raises CellExecutionError if a cell fails
    rerun = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(rerun, kernel_name="python3", timeout=60,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    errors = [o for c in rerun.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    for _ in range(100):  # a watchdog may still be finishing its sweep
        if _gone(state):
            break
        time.sleep(0.1)
    assert _gone(state), f"left behind by the killed kernel: {_owned_by(state['kernel_pid'])}, {state}"
    leftovers = [i for i in cleanup.find_all() if i.owner_pid == state["kernel_pid"]]
    assert not leftovers, [i.describe() for i in leftovers]
