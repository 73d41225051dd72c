"""The engine views read a process chain from the kernel (no root needed: our own processes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from labkit.engine import views


def test_ancestry_walks_the_parents_the_kernel_records():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        chain = views.ancestry(child.pid, stop_at=os.getpid())
        assert [link["pid"] for link in chain] == [child.pid, os.getpid()]
        assert chain[1]["comm"] == Path(f"/proc/{os.getpid()}/comm").read_text().strip()
        # without stop_at it climbs to pid 1 (not included), through the kernel's PPid of each
        full = [link["pid"] for link in views.ancestry(os.getpid())]
        assert full[:2] == [os.getpid(), os.getppid()] and 1 not in full
    finally:
        child.stdin.close()
        child.wait(10)


def test_ancestry_of_a_process_that_is_gone_stops_without_raising():
    gone = subprocess.Popen(["true"])
    gone.wait(10)           # reaped: /proc/PID is gone
    assert views.ancestry(gone.pid) == [{"pid": gone.pid, "comm": "?", "cmdline": ""}]
