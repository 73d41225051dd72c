"""The engine: a Docker-Engine-API-compatible server for labkit containers, and a wire tracer.

The seed's picture, arrow by arrow::

    docker CLI / SDK  --HTTP over a unix socket-->  API  -->  engine  -->  runtime  -->  kernel
    (client)                                        (REST)    (state)      (containers) (namespaces,
                                                                                          cgroups)

In Docker the engine is dockerd, which hands containers to containerd, which runs them with runc.
In labkit the same API is served by `labkit.engine.server` (the API), `labkit.engine.state` (the
engine: container records, logs, waits), `labkit.engine.runtime` (a labkit Container per start,
from `labkit.container`), over the same kernel primitives as chapters 1-4.

- `labkit engine serve --socket PATH` / `EngineProcess()`: run the server.
- `labkit trace --socket PROXY --upstream SOCKET` / `Tracer`: record every API call on the wire.
- `streams`: Docker's multiplexed stdout/stderr framing.

Cleanup kinds owned here: "engine" (a server or tracer socket whose process died),
"docker-container" and "docker-image" (objects named labkit-* in the real Docker daemon whose owner
died), "dockerd" (a daemon labkit started that no live labkit process uses any more).
"""
from __future__ import annotations

from typing import Iterable

from .. import cleanup
from ..errors import LabkitError, NotFound
from . import registry
from .tracer import Call, Tracer

__all__ = ["Call", "Tracer", "EngineProcess", "find_leftovers", "remove_leftover"]


def __getattr__(name):
    # The server pulls in the container runtime; import it only when asked for.
    if name == "EngineProcess":
        from .server import EngineProcess
        return EngineProcess
    raise AttributeError(name)


def find_leftovers() -> Iterable[cleanup.Leftover]:
    for record in registry.records():
        yield cleanup.leftover(registry.KIND, record["name"], record.get("socket", ""),
                               role=record.get("role"))
    yield from _docker_leftovers()


def _docker_leftovers() -> Iterable[cleanup.Leftover]:
    from .. import dockerd

    if not dockerd.available():
        return
    found = dockerd.labkit_objects()        # asks the daemon itself; nothing when it is not running
    for c in found["containers"]:
        yield cleanup.leftover("docker-container", c["name"], f"docker container {c['id'][:12]}",
                               id=c["id"])
    for image in found["images"]:
        yield cleanup.leftover("docker-image", image["name"], f"docker image {image['tag']}",
                               tag=image["tag"])
    pid = dockerd.started_by_labkit()
    if pid:
        # In use while any labkit process that uses it lives. Otherwise one item per dead user, so
        # that the watchdog of whichever user died last (it sweeps only its owner's items) stops it.
        users = dockerd.users()
        alive = [user for user, is_alive, _ in users if is_alive]
        where = f"dockerd pid {pid} started by labkit"
        if alive:
            yield cleanup.Leftover("dockerd", dockerd.NAME, where, owner_pid=alive[0], owner_alive=True,
                                   extra={"pid": pid})
        else:
            for user, _, record in users or [(None, False, None)]:
                yield cleanup.Leftover("dockerd", dockerd.NAME, where, owner_pid=user, owner_alive=False,
                                       extra={"pid": pid, "record": str(record) if record else ""})


def remove_leftover(item: cleanup.Leftover) -> None:
    from .. import dockerd
    from .wire import UnixHTTPConnection

    if item.kind == registry.KIND:
        registry.remove(item.name, item.where)
    elif item.kind in ("docker-container", "docker-image"):
        path = f"/containers/{item.extra['id']}?force=1" if item.kind == "docker-container" \
            else f"/images/{item.extra['tag']}?force=1"
        conn = UnixHTTPConnection(dockerd.SOCKET, timeout=60)
        try:
            conn.request("DELETE", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status == 404:                # another sweeper got there first
            cleanup.release(item.kind, item.name)
            raise NotFound(f"{item.kind} {item.name}: gone already ({path})")
        if response.status == 409 and b"already in progress" in body:
            # another sweeper is removing it right now (its success releases the record)
            raise NotFound(f"{item.kind} {item.name}: being removed ({path})")
        if response.status >= 300:   # still there: keep the record, so that a later sweep tries again
            raise LabkitError(f"dockerd refused DELETE {path}: {response.status} "
                              f"{body.decode(errors='replace').strip()[:200]}")
        cleanup.release(item.kind, item.name)
    elif item.kind == "dockerd":
        with dockerd.locked():
            pid = dockerd.started_by_labkit()
            if pid and not dockerd.live_users():
                dockerd.stop(pid)
            for _, alive, record in dockerd.users():
                if not alive:
                    record.unlink(missing_ok=True)      # dead users' records go with it
