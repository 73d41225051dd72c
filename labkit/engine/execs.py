"""`docker exec`: another process in a running container, joined to its namespaces (setns) and cgroup.

The API splits it in three, as Docker does:

    POST /containers/ID/exec   {"Cmd": [...], "Env", "WorkingDir", "User", "Tty", "AttachStdin"...}
                               -> 201 {"Id": EXEC_ID}          (nothing runs yet)
    POST /exec/EXEC_ID/start   -> 101, then the process's output (and the client's input) on the
                               hijacked connection, until the process exits
    GET  /exec/EXEC_ID/json    -> {"Running": false, "ExitCode": N, "Pid": ...}  (the CLI's exit status)

The process is started by `Container.exec_process` - like `runc exec`: setns into each namespace,
join the cgroup, then the container's capability bounding set, no_new_privs, rlimits and user.
"""
from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field

from ..errors import Conflict, InvalidValue, NotFound
from . import spec as spec_mod

EXEC_FIELDS = {"AttachStdin", "AttachStdout", "AttachStderr", "DetachKeys", "Detach", "Tty", "Env", "Cmd",
               "Privileged", "User", "WorkingDir", "ConsoleSize"}


@dataclass
class ExecRecord:
    id: str
    container_id: str
    argv: list[str]
    env: list[str]
    user: tuple | None
    user_text: str
    working_dir: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    master: int | None = None                   # the pty's master side while it runs (-t)
    size: tuple[int, int] | None = None         # (rows, columns) asked for before it started
    done: threading.Event = field(default_factory=threading.Event)


def parse(body, container_spec, image) -> dict:
    """Check an exec create body; keyword arguments for ExecRecord (the one rule holds here too)."""
    if not isinstance(body, dict):
        raise InvalidValue("exec config", body, "a JSON object")
    for key, value in body.items():
        if key not in EXEC_FIELDS and spec_mod.is_set("", value):
            raise InvalidValue(f"exec {key}", value, "it unset: labkit's engine does not apply it")
    if body.get("Privileged"):
        raise InvalidValue("exec Privileged", True, "false: no privileged processes (docker exec --privileged)")
    if body.get("DetachKeys"):
        raise InvalidValue("exec DetachKeys", body["DetachKeys"], "unset: no detach keys")
    size = body.get("ConsoleSize")
    if size and (not isinstance(size, list) or len(size) != 2 or not all(isinstance(n, int) for n in size)):
        raise InvalidValue("exec ConsoleSize", size, "[rows, columns]")
    argv = body.get("Cmd")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidValue("exec Cmd", argv, 'a non-empty list of strings, e.g. ["ls", "/"]')
    env = body.get("Env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise InvalidValue("exec Env", env, "a list of NAME=value strings")
    working_dir = body.get("WorkingDir") or ""
    if not isinstance(working_dir, str) or (working_dir and not working_dir.startswith("/")):
        raise InvalidValue("exec WorkingDir", working_dir, "an absolute path inside the container")
    user_text = body.get("User") or ""
    user = spec_mod.parse_user(user_text, [], image) if user_text else None
    return dict(argv=list(argv), env=list(env), user=user, user_text=user_text, working_dir=working_dir,
                tty=bool(body.get("Tty")), stdin=bool(body.get("AttachStdin")),
                stdout=bool(body.get("AttachStdout")), stderr=bool(body.get("AttachStderr")),
                size=tuple(size) if size and any(size) else None)


class Execs:
    """The engine's exec instances, by id (they outlive their process: the CLI inspects after)."""

    def __init__(self):
        self._records: dict[str, ExecRecord] = {}
        self._lock = threading.Lock()

    def add(self, container_id: str, **fields) -> ExecRecord:
        record = ExecRecord(secrets.token_hex(32), container_id, **fields)
        with self._lock:
            self._records[record.id] = record
        return record

    def get(self, exec_id: str) -> ExecRecord:
        with self._lock:
            record = self._records.get(exec_id)
        if record is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return record

    def forget_container(self, container_id: str) -> None:
        with self._lock:
            for exec_id in [r.id for r in self._records.values() if r.container_id == container_id]:
                del self._records[exec_id]

    def claim_start(self, record: ExecRecord) -> None:
        with self._lock:
            if record.started:
                raise Conflict(f"exec {record.id} has already been started (an exec runs once)")
            record.started = record.running = True


def inspect(record: ExecRecord) -> dict:
    """GET /exec/ID/json."""
    return {"ID": record.id, "Running": record.running, "ExitCode": record.exit_code,
            "ProcessConfig": {"tty": record.tty, "entrypoint": record.argv[0], "arguments": record.argv[1:],
                              "privileged": False, "user": record.user_text},
            "OpenStdin": record.stdin, "OpenStderr": record.stderr, "OpenStdout": record.stdout,
            "CanRemove": False, "ContainerID": record.container_id, "DetachKeys": "", "Pid": record.pid}


def close_quietly(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
