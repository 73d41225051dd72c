"""Which labkit engines and tracers are running: one small record each, so a sweep can find them.

A server that is killed outright (kill -9, a notebook kernel that died) cannot remove its own unix
socket. Each one therefore writes /run/labkit/engine/NAME.json (its socket path and pid) and claims
NAME as kind "engine"; `labkit cleanup` removes the socket and record of an owner that is dead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import cleanup

KIND = "engine"
RECORDS = cleanup.STATE_DIR / "engine"


def register(name: str, socket_path: str, role: str) -> None:
    """Claim `name` for this process and note where its socket lives."""
    cleanup.claim(KIND, name)
    RECORDS.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "socket": os.path.abspath(socket_path), "pid": os.getpid(), "role": role}
    (RECORDS / f"{name}.json").write_text(json.dumps(record) + "\n")


def unregister(name: str) -> None:
    (RECORDS / f"{name}.json").unlink(missing_ok=True)
    cleanup.release(KIND, name)


def records() -> list[dict]:
    """Every engine/tracer record on the machine (live or left over)."""
    found = []
    if RECORDS.is_dir():
        for path in sorted(RECORDS.glob(f"{cleanup.PREFIX}*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                found.append({"name": path.stem, "socket": "", "pid": None, "role": "?"})
    return found


def remove(name: str, socket_path: str) -> None:
    """Remove a dead server's socket (only if it is a socket) and its record."""
    path = Path(socket_path) if socket_path else None
    if path and path.is_socket():
        path.unlink(missing_ok=True)
    unregister(name)
