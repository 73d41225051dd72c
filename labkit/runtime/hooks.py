"""OCI hooks: programs config.json asks the runtime to run at points of the container's life, each
given the container's state as JSON on its stdin. Docker uses one even with --network none: a
prestart hook (dockerd's own binary, `libnetwork-setkey`) that tells dockerd which network namespace
the new container has.

    prestart, createRuntime   by `create`, once the container's process exists and waits
    poststart                 by `start`, after the program was released
    poststop                  by `delete`, after everything is gone

A hook is started with os.posix_spawn, not subprocess: `create` runs on every `docker run`, and
importing subprocess (with locale and selectors) would cost each one 2 ms of CPU.
"""
from __future__ import annotations

import json
import os
import signal
import time

from .. import syscalls
from ..errors import LabkitError


def run(hooks: dict, kind: str, state: dict) -> None:
    for i, hook in enumerate(hooks.get(kind) or []):
        env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
        where = f"hooks.{kind}[{i}] {hook['path']}"
        try:
            status, output = _run_one(hook["path"], hook.get("args") or [hook["path"]], env,
                                      json.dumps(state).encode(), hook.get("timeout") or None)
        except OSError as exc:
            raise LabkitError(f"{where}: {exc.strerror}") from None
        if status is None:
            raise LabkitError(f"{where} did not finish within {hook['timeout']} s")
        if status != 0:
            raise LabkitError(f"{where} failed (status {status}): {output.decode(errors='replace').strip()}")


def _run_one(path: str, args: list[str], env: dict, stdin: bytes, timeout: float | None):
    """(exit status, what it wrote), or (None, ...) when it ran past `timeout` s and was killed."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawn(path, args, env, file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0),
                                                             (os.POSIX_SPAWN_DUP2, out_w, 1),
                                                             (os.POSIX_SPAWN_DUP2, out_w, 2)])
    finally:
        os.close(in_r)
        os.close(out_w)
    try:
        try:
            os.write(in_w, stdin)       # the state is a few hundred bytes: the pipe holds it all
        except BrokenPipeError:         # it did not read its stdin
            pass
        finally:
            os.close(in_w)
        output, deadline = b"", None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            if not syscalls.readable([out_r], left):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None, output
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            output += chunk
    finally:
        os.close(out_r)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output
