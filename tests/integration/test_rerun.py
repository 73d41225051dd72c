"""A notebook can be re-run from the top after its kernel died mid-experiment, with no manual cleanup.

What a learner does: runs half of a notebook (03-uts: a cgroup and a `sleep` in its own uts
namespace exist; 20-networking: network namespaces, veth pairs, a bridge, cgroups and their
processes), the kernel dies outright (SIGKILL: "Restart kernel", the OOM killer), they restart and
press "Run all". The new run must succeed, and afterwards nothing of the killed kernel may be left on
the machine (the notebook's own cleanup cell checks the new kernel's objects). The dead kernel's
objects go by its watchdog (labkit/watchdog.py); if that watchdog is gone too, the new kernel's
watchdog sweeps dead owners' leftovers when it starts. Both paths are tried.
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

# (notebook, the cell to stop after, an expression in the kernel: pids of what it has started)
CASES = {
    "03-uts": ("03-uts.ipynb", "box = spawn(", "[box.pid]"),                       # namespaces + cgroup
    "20-networking": ("20-networking.ipynb", "lan.connect(ns[name])",            # netns, veth, bridge,
                      "[p.pid for p in containers.values()]"),                    # cgroups, processes
}


def _owned_by(pid: int) -> list[cleanup.Leftover]:
    return [i for i in cleanup.find_all(include_in_use=True) if i.owner_pid == pid]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _run_halfway_then_kill(path: Path, halfway: str, started: str, env: dict) -> dict:
    """Run the notebook's cells up to `halfway` in a kernel, see what exists, SIGKILL the kernel."""
    nb = nbformat.read(path, as_version=4)
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
            if halfway in cell.source:
                break
        else:
            pytest.fail(f"{path.name} has no cell with {halfway!r} any more: update CASES")
        printed = []
        client.execute_interactive(f"import os; print(os.getpid(), *{started})", timeout=30,
                                   output_hook=lambda msg: printed.append(msg["content"]["text"])
                                   if msg["msg_type"] == "stream" else None)
        kernel_pid, *pids = (int(word) for word in "".join(printed).split())
        # the experiment is really half done, seen from outside: objects claimed by the kernel, running
        objects = {(i.kind, i.name) for i in _owned_by(kernel_pid)}
        assert any(kind == "cgroup" for kind, _ in objects), objects
        assert pids and all(_alive(pid) for pid in pids)
        os.kill(kernel_pid, signal.SIGKILL)
        for _ in range(100):
            if not km.is_alive():
                break
            time.sleep(0.1)
        assert not km.is_alive()
        return {"kernel_pid": kernel_pid, "pids": pids, "objects": objects}
    finally:
        client.stop_channels()
        km.cleanup_resources()


def _left(state: dict) -> list:
    """What of the killed kernel is still on the machine, read from the kernel (not bookkeeping)."""
    now = {(i.kind, i.name) for i in cleanup.find_all(include_in_use=True)}
    return sorted(state["objects"] & now) + [f"pid {pid} alive" for pid in state["pids"] if _alive(pid)]


@pytest.mark.parametrize("case,watchdog", [("03-uts", True), ("03-uts", False), ("20-networking", True)],
                         ids=["03-uts", "03-uts-its-watchdog-gone-too", "20-networking"])
def test_a_notebook_reruns_from_the_top_after_its_kernel_was_killed_mid_experiment(case, watchdog):
    name, halfway, started = CASES[case]
    env = dict(os.environ, LABKIT_ALLOW_HOST="1")
    env.pop("LABKIT_NO_WATCHDOG", None)
    # without its watchdog (as if that was killed too) the dead kernel's objects stay until the
    # watchdog of the next labkit process - the new kernel's - sweeps at its start
    first_env = env if watchdog else dict(env, LABKIT_NO_WATCHDOG="1")
    state = _run_halfway_then_kill(NOTEBOOKS / name, halfway, started, first_env)

    # "Run all" in a new kernel, exactly as stored; it raises CellExecutionError if a cell fails
    rerun = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(rerun, kernel_name="python3", timeout=60,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    errors = [o for c in rerun.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors

    for _ in range(100):  # a watchdog may still be finishing its sweep
        if not _left(state):
            break
        time.sleep(0.1)
    assert not _left(state), f"left behind by the killed kernel {state['kernel_pid']}: {_left(state)}"
