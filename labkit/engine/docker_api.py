"""Every route of the Docker Engine API 1.41, as data: (method, path pattern, the feature it serves).

labkit's engine implements a part of them (`api.ROUTES`). For a route Docker has and the engine
does not, the answer is **501 Not Implemented** with a message naming the feature - never a 404,
which the docker CLI would rewrite into a false "No such container" or "No such image".
A path Docker does not have at all is a 404 "page not found", as dockerd says it.
"""
from __future__ import annotations

import re

_ID = r"[^/]+"
_NAME = r".+"          # image and plugin names may contain slashes

ROUTES = [
    # containers
    ("GET", "/containers/json", "container listing"),
    ("POST", "/containers/create", "container create"),
    ("GET", f"/containers/{_ID}/json", "container inspect"),
    ("GET", f"/containers/{_ID}/top", "docker top"),
    ("GET", f"/containers/{_ID}/logs", "docker logs"),
    ("GET", f"/containers/{_ID}/changes", "docker diff"),
    ("GET", f"/containers/{_ID}/export", "docker export"),
    ("GET", f"/containers/{_ID}/stats", "docker stats"),
    ("POST", f"/containers/{_ID}/resize", "terminal resize (docker run -t)"),
    ("POST", f"/containers/{_ID}/start", "docker start"),
    ("POST", f"/containers/{_ID}/stop", "docker stop"),
    ("POST", f"/containers/{_ID}/restart", "docker restart"),
    ("POST", f"/containers/{_ID}/kill", "docker kill"),
    ("POST", f"/containers/{_ID}/update", "docker update"),
    ("POST", f"/containers/{_ID}/rename", "docker rename"),
    ("POST", f"/containers/{_ID}/pause", "docker pause"),
    ("POST", f"/containers/{_ID}/unpause", "docker unpause"),
    ("POST", f"/containers/{_ID}/attach", "docker attach"),
    ("GET", f"/containers/{_ID}/attach/ws", "attach over a websocket"),
    ("POST", f"/containers/{_ID}/wait", "docker wait"),
    ("DELETE", f"/containers/{_ID}", "docker rm"),
    ("HEAD", f"/containers/{_ID}/archive", "docker cp"),
    ("GET", f"/containers/{_ID}/archive", "docker cp (out of a container)"),
    ("PUT", f"/containers/{_ID}/archive", "docker cp (into a container)"),
    ("POST", "/containers/prune", "docker container prune"),
    # exec
    ("POST", f"/containers/{_ID}/exec", "docker exec"),
    ("POST", f"/exec/{_ID}/start", "docker exec"),
    ("POST", f"/exec/{_ID}/resize", "docker exec -t (terminal resize)"),
    ("GET", f"/exec/{_ID}/json", "docker exec (inspect)"),
    # images
    ("GET", "/images/json", "image listing"),
    ("POST", "/build", "docker build"),
    ("POST", "/build/prune", "docker builder prune"),
    ("POST", "/images/create", "docker pull / docker import"),
    ("GET", "/images/search", "docker search"),
    ("GET", "/images/get", "docker save"),
    ("POST", "/images/load", "docker load"),
    ("POST", "/images/prune", "docker image prune"),
    ("GET", f"/images/{_NAME}/json", "image inspect"),
    ("GET", f"/images/{_NAME}/history", "docker history"),
    ("POST", f"/images/{_NAME}/push", "docker push"),
    ("POST", f"/images/{_NAME}/tag", "docker tag"),
    ("GET", f"/images/{_NAME}/get", "docker save"),
    ("DELETE", f"/images/{_NAME}", "docker rmi"),
    ("POST", "/commit", "docker commit"),
    ("GET", f"/distribution/{_NAME}/json", "registry distribution inspect"),
    # system
    ("POST", "/auth", "docker login"),
    ("GET", "/info", "docker info"),
    ("GET", "/version", "docker version"),
    ("GET", "/_ping", "ping"),
    ("HEAD", "/_ping", "ping"),
    ("GET", "/events", "docker events"),
    ("GET", "/system/df", "docker system df"),
    ("POST", "/session", "build sessions"),
    # networks and volumes
    ("GET", "/networks", "docker network ls"),
    ("POST", "/networks/create", "docker network create"),
    ("POST", "/networks/prune", "docker network prune"),
    ("GET", f"/networks/{_ID}", "docker network inspect"),
    ("DELETE", f"/networks/{_ID}", "docker network rm"),
    ("POST", f"/networks/{_ID}/connect", "docker network connect"),
    ("POST", f"/networks/{_ID}/disconnect", "docker network disconnect"),
    ("GET", "/volumes", "docker volume ls"),
    ("POST", "/volumes/create", "docker volume create"),
    ("POST", "/volumes/prune", "docker volume prune"),
    ("GET", f"/volumes/{_NAME}", "docker volume inspect"),
    ("DELETE", f"/volumes/{_NAME}", "docker volume rm"),
    # swarm mode and plugins
    ("GET", "/swarm", "swarm mode"), ("POST", "/swarm/init", "swarm mode"), ("POST", "/swarm/join", "swarm mode"),
    ("POST", "/swarm/leave", "swarm mode"), ("POST", "/swarm/update", "swarm mode"),
    ("GET", "/swarm/unlockkey", "swarm mode"), ("POST", "/swarm/unlock", "swarm mode"),
    ("GET", "/nodes", "swarm nodes"), ("GET", f"/nodes/{_ID}", "swarm nodes"),
    ("DELETE", f"/nodes/{_ID}", "swarm nodes"), ("POST", f"/nodes/{_ID}/update", "swarm nodes"),
    ("GET", "/services", "swarm services"), ("POST", "/services/create", "swarm services"),
    ("GET", f"/services/{_ID}", "swarm services"), ("DELETE", f"/services/{_ID}", "swarm services"),
    ("POST", f"/services/{_ID}/update", "swarm services"), ("GET", f"/services/{_ID}/logs", "swarm services"),
    ("GET", "/tasks", "swarm tasks"), ("GET", f"/tasks/{_ID}", "swarm tasks"),
    ("GET", f"/tasks/{_ID}/logs", "swarm tasks"),
    ("GET", "/secrets", "swarm secrets"), ("POST", "/secrets/create", "swarm secrets"),
    ("GET", f"/secrets/{_ID}", "swarm secrets"), ("DELETE", f"/secrets/{_ID}", "swarm secrets"),
    ("POST", f"/secrets/{_ID}/update", "swarm secrets"),
    ("GET", "/configs", "swarm configs"), ("POST", "/configs/create", "swarm configs"),
    ("GET", f"/configs/{_ID}", "swarm configs"), ("DELETE", f"/configs/{_ID}", "swarm configs"),
    ("POST", f"/configs/{_ID}/update", "swarm configs"),
    ("GET", "/plugins", "plugins"), ("GET", "/plugins/privileges", "plugins"), ("POST", "/plugins/pull", "plugins"),
    ("POST", "/plugins/create", "plugins"), ("GET", f"/plugins/{_NAME}/json", "plugins"),
    ("DELETE", f"/plugins/{_NAME}", "plugins"), ("POST", f"/plugins/{_NAME}/enable", "plugins"),
    ("POST", f"/plugins/{_NAME}/disable", "plugins"), ("POST", f"/plugins/{_NAME}/upgrade", "plugins"),
    ("POST", f"/plugins/{_NAME}/push", "plugins"), ("POST", f"/plugins/{_NAME}/set", "plugins"),
]
_COMPILED = [(method, re.compile(f"^{pattern}$"), feature) for method, pattern, feature in ROUTES]


def feature(method: str, path: str) -> str | None:
    """The Docker feature a request is for, or None when Docker has no such route."""
    for route_method, pattern, name in _COMPILED:
        if route_method == method and pattern.match(path):
            return name
    return None
