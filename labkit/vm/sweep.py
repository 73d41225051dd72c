"""Cleanup hooks (see labkit.cleanup): qemu processes and scratch dirs of VMs whose owner died."""
from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Iterable

from .. import cleanup
from .lifecycle import KIND, VM_DIR


def _labkit_qemus() -> dict[str, int]:
    """{vm name: pid} of qemu processes whose command line names a labkit VM scratch dir."""
    found = {}
    pattern = re.compile(re.escape(str(VM_DIR)) + r"/(" + re.escape(cleanup.PREFIX) + r"[A-Za-z0-9-]+)/")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in os.path.basename(argv[0]):
            continue
        match = pattern.search(b" ".join(argv).decode(errors="replace"))
        if match:
            found[match.group(1)] = int(entry.name)
    return found


def find_leftovers() -> Iterable[cleanup.Leftover]:
    qemus = _labkit_qemus()
    names = set(qemus)
    if VM_DIR.is_dir():
        names |= {p.name for p in VM_DIR.iterdir() if p.name.startswith(cleanup.PREFIX)}
    for name in sorted(names):
        pid = qemus.get(name)
        where = f"qemu pid {pid}, {VM_DIR / name}" if pid else str(VM_DIR / name)
        yield cleanup.leftover(KIND, name, where, qemu_pid=pid)


def remove_leftover(item: cleanup.Leftover) -> None:
    if item.kind != KIND:
        return
    pid = _labkit_qemus().get(item.name)  # looked up again: the pid must still be that qemu
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
    shutil.rmtree(VM_DIR / item.name, ignore_errors=True)
    cleanup.release(KIND, item.name)
