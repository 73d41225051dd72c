"""`docker cp`: a tar archive out of, or into, a running container - made by `tar` run inside it.

    docker cp CTR:/etc/hostname .   HEAD/GET /containers/ID/archive?path=/etc/hostname
    docker cp file CTR:/tmp/        HEAD (is /tmp a directory?), PUT /containers/ID/archive?path=/tmp/

The engine does not read the container's files from the host (through /proc/PID/root a symlink
inside could point at the host's own files): it execs `tar` in the container - setns into its
namespaces, as `docker exec` does - so every path resolves inside the container's root. The
container must be running (this engine releases a container's files when it exits).
"""
from __future__ import annotations

import base64
import json
import os
import posixpath

from .. import syscalls
from ..errors import InvalidValue, NotFound

ROOT = (0, 0, [])          # tar runs as root inside, whatever the container's user
DIR_BIT, LINK_BIT = 1 << 31, 1 << 27      # Go's os.FileMode bits, which the CLI decodes


def _run(process_of, argv, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Run argv inside; its status, stdout and stderr."""
    process, stdin_fd, outputs, _ = process_of(argv, stdin is not None)
    if stdin_fd is not None:
        view = memoryview(stdin or b"")
        try:
            while view:
                view = view[os.write(stdin_fd, view):]
        except BrokenPipeError:
            pass
        os.close(stdin_fd)
    collected = {fd: bytearray() for fd in outputs}
    live = set(outputs)
    while live:
        for fd in syscalls.readable(live):
            data = os.read(fd, 65536)
            if data:
                collected[fd] += data
            else:
                live.discard(fd)
                os.close(fd)
    returncode = process.wait()
    out, err = (bytes(collected[fd]) for fd in sorted(outputs, key=outputs.get))
    return returncode, out, err


def check_path(path: str) -> str:
    if not path or not path.startswith("/") or "\0" in path:
        raise InvalidValue("path", path, "an absolute path inside the container")
    return path


def stat(process_of, path: str, container: str) -> dict:
    """The X-Docker-Container-Path-Stat of `path`: name, size, mode (Go's bits), mtime, link target."""
    code, out, _ = _run(process_of, ["stat", "-c", "%s %f %Y %F", check_path(path)])
    if code != 0:
        raise NotFound(f"Could not find the file {path} in container {container}")
    size, raw_mode, mtime, kind = out.decode().split(" ", 3)
    mode = int(raw_mode, 16) & 0o7777
    link = ""
    if kind.startswith("directory"):
        mode |= DIR_BIT
    elif kind.startswith("symbolic link"):
        mode |= LINK_BIT
        link = _run(process_of, ["readlink", path])[1].decode().strip()
    name = posixpath.basename(path.rstrip("/")) or "/"
    return {"name": name, "size": int(size), "mode": mode, "mtime": _iso(int(mtime)), "linkTarget": link}


def stat_header(info: dict) -> str:
    return base64.b64encode(json.dumps(info).encode()).decode()


def _iso(seconds: int) -> str:
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def read(process_of, path: str) -> bytes:
    """A tar archive of `path` (its last component at the archive's top, as Docker makes it)."""
    path = check_path(path).rstrip("/") or "/"
    parent, name = posixpath.split(path)
    code, out, err = _run(process_of, ["tar", "-c", "-C", parent or "/", name or "."])
    if code != 0:
        raise NotFound(f"tar in the container: {err.decode(errors='replace').strip()}")
    return out


def write(process_of, path: str, archive: bytes, container: str) -> None:
    """Unpack a tar archive into the directory `path` inside."""
    info = stat(process_of, path, container)
    if not info["mode"] & DIR_BIT:
        raise InvalidValue("path", path, "a directory inside the container to extract into")
    code, _, err = _run(process_of, ["tar", "-x", "-C", check_path(path)], stdin=archive)
    if code != 0:
        raise InvalidValue("archive", f"{len(archive)} bytes", "a tar archive that unpacks: "
                           + err.decode(errors="replace").strip())
