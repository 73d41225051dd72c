"""OCI hooks: programs config.json asks the runtime to run at points of the container's life, each
given the container's state as JSON on its stdin. Docker uses one even with --network none: a
prestart hook (dockerd's own binary, `libnetwork-setkey`) that tells dockerd which network namespace
the new container has.

    prestart, createRuntime   by `create`, once the container's process exists and waits
    poststart                 by `start`, after the program was released
    poststop                  by `delete`, after everything is gone
"""
from __future__ import annotations

import json
import subprocess

from ..errors import LabkitError


def run(hooks: dict, kind: str, state: dict) -> None:
    for i, hook in enumerate(hooks.get(kind) or []):
        env = dict(item.split("=", 1) for item in hook.get("env") or [] if "=" in item)
        try:
            subprocess.run(hook.get("args") or [hook["path"]], executable=hook["path"], env=env,
                           input=json.dumps(state).encode(), capture_output=True, check=True,
                           timeout=hook.get("timeout") or None)
        except subprocess.CalledProcessError as exc:
            raise LabkitError(f"hooks.{kind}[{i}] {hook['path']} failed (status {exc.returncode}): "
                              f"{exc.stderr.decode(errors='replace').strip()}") from None
        except subprocess.TimeoutExpired:
            raise LabkitError(f"hooks.{kind}[{i}] {hook['path']} did not finish within "
                              f"{hook['timeout']} s") from None
        except OSError as exc:
            raise LabkitError(f"hooks.{kind}[{i}] {hook['path']}: {exc.strerror}") from None
