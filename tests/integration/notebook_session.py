"""Run a notebook's cells in a real kernel, optionally with a property broken on purpose.

A checked cell is worth something only if it fails when the property it checks does not hold. The
tests of the chapter notebooks therefore change one experiment (run the seccomp experiment without
the filter, start the "rootless" attempts as real root...) and expect exactly the cell that checks
that property to raise:

    with NotebookSession("32-security.ipynb", replace={"seccomp=no_mkdir": ""}) as nb:
        failure = nb.run_until_error()
    assert failure.cell_contains('result["filter"] == (2, False)')

Each session is a fresh kernel; when it ends, the kernel is shut down and everything it created must
be gone - released by its own cleanup cell, or by its watchdog once it died (labkit/watchdog.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager

from labkit import cleanup
from labkit.emulation import scaled

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class Failure:
    source: str           # the cell that raised
    ename: str
    evalue: str

    def cell_contains(self, text: str) -> bool:
        return text in self.source


class NotebookSession:
    def __init__(self, name: str, replace: dict[str, str] | None = None, timeout: float = 180):
        self.path = NOTEBOOKS / name
        self.timeout = scaled(timeout)       # per cell, on hardware (stretched on an emulated CPU)
        nb = nbformat.read(self.path, as_version=4)
        self.cells = [c.source for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        for old, new in (replace or {}).items():
            hits = [i for i, source in enumerate(self.cells) if old in source]
            assert hits, f"{name} has no cell with {old!r} any more: update the test"
            for i in hits:
                self.cells[i] = self.cells[i].replace(old, new)
        self.done = 0          # cells executed so far
        self.kernel_pid: int | None = None

    def __enter__(self) -> "NotebookSession":
        env = dict(os.environ, LABKIT_ALLOW_HOST="1")
        self._km = KernelManager(kernel_name="python3")
        self._km.start_kernel(cwd=str(NOTEBOOKS), env=env)
        self._client = self._km.client()
        self._client.start_channels()
        self._client.wait_for_ready(timeout=scaled(60))
        self.kernel_pid = int(self.execute("import os; print(os.getpid())"))
        return self

    def execute(self, source: str) -> str:
        """Run `source` in the kernel; its printed output. Raises AssertionError with the kernel's
        error if the code raised."""
        out, error = [], []

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                error.append(Failure(source, content["ename"], content["evalue"]))
        self._client.execute_interactive(source, timeout=self.timeout, output_hook=hook)
        if error:
            raise NotebookError(error[0])
        return "".join(out)

    def run_until(self, marker: str) -> None:
        """Execute the notebook's cells up to and including the first one containing `marker`."""
        while self.done < len(self.cells):
            source = self.cells[self.done]
            self.done += 1
            self.execute(source)
            if marker in source:
                return
        raise AssertionError(f"{self.path.name}: no cell contains {marker!r}")

    def run_until_error(self) -> Failure | None:
        """Execute the remaining cells; the first failure (None if every cell ran)."""
        while self.done < len(self.cells):
            source = self.cells[self.done]
            self.done += 1
            try:
                self.execute(source)
            except NotebookError as exc:
                return exc.failure
        return None

    def __exit__(self, *exc) -> None:
        owned = {(i.kind, i.name) for i in cleanup.find_all(include_in_use=True) if i.owner_pid == self.kernel_pid}
        try:
            self._client.stop_channels()
        finally:
            self._km.shutdown_kernel(now=False)
        # whatever the kernel did not release, its watchdog must remove once it is gone: its records
        # first, then the objects themselves (wait for both, or a leak check after us sees the rest)
        deadline = time.monotonic() + scaled(90)
        while True:
            now = cleanup.find_all(include_in_use=True)
            # (a name the kernel owned may have a new, live owner by now: a shared dockerd is one
            # object whatever process started it - that one is in use, not left behind)
            left = [i for i in now if i.owner_pid == self.kernel_pid
                    or ((i.kind, i.name) in owned and not (i.owner_alive and i.owner_pid != self.kernel_pid))]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not left, "the notebook's kernel left: " + "; ".join(i.describe() for i in left)


class NotebookError(AssertionError):
    def __init__(self, failure: Failure):
        super().__init__(f"{failure.ename}: {failure.evalue}")
        self.failure = failure


def assert_check_fails(notebook: str, replace: dict[str, str], check: str, what: str = "") -> None:
    """Run `notebook` with `replace` applied (a property broken on purpose): the first cell to fail must
    be the checked cell containing `check`, with an AssertionError - not an earlier cell, not none."""
    with NotebookSession(notebook, replace=replace) as nb:
        failure = nb.run_until_error()
    assert failure is not None, f"{what or replace}: broken on purpose, yet every cell passed"
    assert failure.ename == "AssertionError" and failure.cell_contains(check), \
        f"{what}: expected the check with {check!r} to fail, got {failure.ename}: {failure.evalue} in\n{failure.source}"
