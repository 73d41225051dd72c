"""The REST API: Docker Engine API v1.41 paths, answered by labkit's engine.

Every request the docker CLI sends is an HTTP request on the unix socket; this module is the table
of those requests and a short function for each. `docker container run --rm IMG echo hello` is:

    HEAD /_ping                                     which API version do you speak?
    POST /v1.41/containers/create                   the config as JSON -> 201 {"Id": ...}
    POST /v1.41/containers/ID/attach?stream=1&...   101: the connection becomes the output stream
    POST /v1.41/containers/ID/wait?condition=removed  headers now, {"StatusCode": N} at the end
    POST /v1.41/containers/ID/start                 204: namespaces + cgroup + exec (the runtime)

Errors have Docker's shape, ``{"message": "..."}``, with the status Docker would use: 400 for a
bad request, 404 for an unknown container, image or endpoint, 409 for a conflict (a name in use,
removing a running container), 500 when the engine itself failed.
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import time
import traceback
from http.server import BaseHTTPRequestHandler

from .. import __version__
from ..errors import Conflict, InvalidValue, LabkitError, NotFound
from . import archive, docker_api, images as images_mod, observe, ps, spec as spec_mod, state, streams, wire
from .interactive import attach, exec_create, exec_inspect, exec_resize, exec_start, resize
from .requests import (API_VERSION, MAX_ARCHIVE, MAX_BODY, MIN_API_VERSION, HTTPError, flag,  # noqa: F401
                       parse_json_body, read_request_body, split_target)
from .clock import human_duration, rfc3339
from .state import Engine, Record

_ID = r"(?P<id>[^/]+)"


# --- JSON shapes: what docker inspect / docker ps read ---------------------------------------------

def status_text(record: Record) -> str:
    """The STATUS column of `docker ps`."""
    if record.status == "running" and record.started_at:
        return "Up " + human_duration(time.time() - record.started_at) + (" (Paused)" if record.paused else "")
    if record.restarting:
        return f"Restarting ({record.exit_code}) {human_duration(time.time() - (record.finished_at or 0))} ago"
    if record.status == "exited" and record.finished_at:
        return f"Exited ({record.exit_code}) {human_duration(time.time() - record.finished_at)} ago"
    return record.status.capitalize()


def summary(record: Record) -> dict:
    """An entry of GET /containers/json (docker ps)."""
    spec = record.spec
    return {
        "Id": record.id, "Names": ["/" + record.name], "Image": spec.image, "ImageID": record.image_id,
        "Command": " ".join(spec.argv), "Created": int(record.created), "Ports": [],
        "Labels": spec.labels, "State": ps.state_name(record), "Status": status_text(record),
        "HostConfig": {"NetworkMode": spec.network_mode}, "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }


def inspect(record: Record) -> dict:
    """GET /containers/ID/json (docker inspect), plus a "Labkit" section: the kernel side."""
    spec = record.spec
    host = spec.host_config
    hostname = spec.hostname or record.id[:12]
    return {
        "Id": record.id, "Created": rfc3339(record.created),
        "Path": spec.argv[0], "Args": spec.argv[1:],
        "State": {"Status": ps.state_name(record),
                  "Running": record.running, "Paused": record.paused, "Restarting": record.restarting, "OOMKilled": record.oom_killed, "Dead": False,
                  "Pid": record.pid, "ExitCode": record.exit_code, "Error": record.error,
                  "StartedAt": rfc3339(record.started_at), "FinishedAt": rfc3339(record.finished_at)},
        "Image": record.image_id, "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "",
        "LogPath": "", "Name": "/" + record.name, "RestartCount": record.restart_count, "Driver": "overlay",
        "Platform": "linux", "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": {
            **host, "NetworkMode": spec.network_mode, "AutoRemove": spec.auto_remove,
            "Memory": spec.memory or 0, "NanoCpus": int(host.get("NanoCpus") or 0),
            "CpuQuota": int(host.get("CpuQuota") or 0), "CpuPeriod": int(host.get("CpuPeriod") or 0),
            "PidsLimit": spec.pids,
            "RestartPolicy": {"Name": spec.restart_policy[0] or "no", "MaximumRetryCount": spec.restart_policy[1]},
            "LogConfig": {"Type": spec.log_driver, "Config": {}}, "Runtime": "labkit", "Privileged": False,
            "ReadonlyRootfs": spec.read_only, "Init": spec.init},
        "GraphDriver": {"Name": "overlay", "Data": {"MergedDir": record.details.get("RootFS", "")}},
        "Mounts": [],
        "Config": {**{k: v for k, v in spec.config.items() if k not in spec_mod.TOP_LEVEL},
                   "Hostname": hostname, "Domainname": spec.domainname, "User": spec.config.get("User") or "",
                   "AttachStdin": bool(spec.config.get("AttachStdin")), "AttachStdout": True,
                   "AttachStderr": True, "Tty": spec.tty, "OpenStdin": spec.open_stdin,
                   "StdinOnce": spec.stdin_once, "Env": spec.env, "Cmd": spec.cmd,
                   "Image": spec.image, "Volumes": None, "WorkingDir": spec.working_dir,
                   "Entrypoint": spec.entrypoint, "OnBuild": None, "Labels": spec.labels,
                   "StopSignal": spec.stop_signal, "StopTimeout": spec.stop_timeout},
        "NetworkSettings": {"Bridge": "", "SandboxID": "", "HairpinMode": False, "Ports": {},
                            "SandboxKey": f"/proc/{record.pid}/ns/net" if record.pid else "",
                            "Networks": {"none": {"NetworkID": "none", "IPAddress": "", "Gateway": "",
                                                  "MacAddress": ""}}},
        "Labkit": record.details,
    }


def version_info() -> dict:
    """GET /version (docker version's Server part)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "",
               "GoVersion": f"python{platform.python_version()}", "Os": "linux", "Arch": arch,
               "KernelVersion": platform.release(), "BuildTime": "", "Experimental": "false"}
    return {"Platform": {"Name": "labkit engine"},
            "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
            "Version": __version__, **{k: v for k, v in details.items() if k != "Experimental"}}


# --- the handlers: one function per endpoint ------------------------------------------------------

def ping(h: "Handler", m, q):
    h.send_bytes(200, b"OK", "text/plain; charset=utf-8")


def version(h, m, q):
    h.send_json(200, version_info())


def info(h, m, q):
    engine = h.engine
    records = engine.list(all=True)
    running = sum(r.running for r in records)
    from .. import host

    h.send_json(200, {
        "ID": "labkit", "Containers": len(records), "ContainersRunning": running,
        "ContainersPaused": 0, "ContainersStopped": len(records) - running,
        "Images": len(engine.images.list()), "Driver": "overlay", "DriverStatus": [],
        "DockerRootDir": "/run/labkit", "Plugins": {"Volume": [], "Network": ["none"], "Log": ["json-file"]},
        "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": True, "CpuCfsQuota": True,
        "PidsLimit": True, "IPv4Forwarding": False, "Debug": False, "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": 0, "SystemTime": rfc3339(time.time()), "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs", "CgroupVersion": "2" if host.cgroup_mode() == "v2" else "1",
        "KernelVersion": platform.release(), "OperatingSystem": "labkit engine", "OSType": "linux",
        "Architecture": platform.machine(), "NCPU": os.cpu_count(),
        "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "IndexServerAddress": "",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": [], "Mirrors": []},
        "Name": socket.gethostname(), "Labels": [], "ExperimentalBuild": False,
        "ServerVersion": __version__, "Runtimes": {"labkit": {"path": "labkit.container"}},
        "DefaultRuntime": "labkit", "Swarm": {"LocalNodeState": "inactive", "NodeID": "",
                                              "NodeAddr": "", "ControlAvailable": False},
        "LiveRestoreEnabled": False, "Isolation": "", "InitBinary": "tini", "SecurityOptions": [],
        "Warnings": ["labkit engine: a teaching subset of the Docker Engine API; "
                     "containers live in memory and go when the engine stops"]})


def list_containers(h, m, q):
    records = ps.select(h.engine, q.get("filters", ""), all=flag(q, "all"))
    limit = q.get("limit", "-1") or "-1"
    if not limit.lstrip("-").isdigit():
        raise InvalidValue("limit", limit, "a number")
    if int(limit) > 0:
        records = records[:int(limit)]
    h.send_json(200, [summary(r) for r in records])


def create(h, m, q):
    record = h.engine.create(parse_json_body(h.body), q.get("name"))
    h.send_json(201, {"Id": record.id, "Warnings": []})


def inspect_container(h, m, q):
    h.send_json(200, inspect(h.engine.get(m["id"])))


def start(h, m, q):
    h.send_empty(204 if h.engine.start(m["id"]) else 304)


def wait(h, m, q):
    """Headers at once (the CLI waits for them before it starts the container), body at exit."""
    engine = h.engine
    condition = q.get("condition") or "not-running"
    if condition not in state.WAIT_CONDITIONS:
        raise InvalidValue("condition", condition, " or ".join(state.WAIT_CONDITIONS))
    block = engine.watch(m["id"], condition)        # 404 now, not after the headers; watched from here
    h.start_stream(200, "application/json")
    try:
        code = block(is_gone=lambda: wire.client_hung_up(h.connection))
        body = {"StatusCode": code, "Error": None}
    except NotFound:                                          # removed while we waited
        body = {"StatusCode": 0, "Error": None}
    except ConnectionAbortedError:                            # the client left: so do we
        h.close_connection = True
        h._streaming = False
        return
    h.write_chunk(json.dumps(body).encode() + b"\n")
    h.end_stream()


def _time(q, name: str) -> float | None:
    """--since / --until as the CLI sends them: seconds since the epoch, with a fraction."""
    value = q.get(name) or ""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidValue(name, value, "seconds since the epoch, e.g. 1700000000.5") from None


def logs(h, m, q):
    """The stored output, one frame per line (raw for a -t container); --tail N lines, --since and
    --until times, --timestamps (each line's time), -f to follow while it runs."""
    record = h.engine.get(m["id"])
    if record.spec.log_driver == "none":
        raise HTTPError(501, "configured logging driver does not support reading")   # Docker's words
    out, err = flag(q, "stdout"), flag(q, "stderr")
    if not (out or err):
        raise InvalidValue("logs parameters", "stdout=0&stderr=0", "at least one of stdout=1, stderr=1")
    tail = q.get("tail", "all")
    if tail not in ("all", "") and not tail.isdigit():
        raise InvalidValue("tail", tail, "'all' or a number of lines")
    timestamps = flag(q, "timestamps")
    entries = h.engine.output(m["id"], stdout=out, stderr=err, follow=flag(q, "follow"),
                              tail=int(tail) if tail.isdigit() else None, since=_time(q, "since") or 0,
                              until=_time(q, "until"), is_gone=lambda: wire.client_gone(h.connection))
    h.start_stream(200, streams.RAW if record.spec.tty else streams.MULTIPLEXED)
    for when, stream, data in entries:
        if timestamps:
            data = rfc3339(when).encode() + b" " + data
        h.write_chunk(data if record.spec.tty else streams.frame(stream, data))
    h.end_stream()


def pause(h, m, q):
    h.engine.pause(m["id"], True)
    h.send_empty(204)


def unpause(h, m, q):
    h.engine.pause(m["id"], False)
    h.send_empty(204)


def stats(h, m, q):
    """One sample with stream=0 (its precpu_stats half a second before, so the CLI can compute a
    CPU percentage), else a sample per second until the container stops or the client leaves."""
    record, process = h.engine.running_process(m["id"])
    stream = flag(q, "stream", default=True)
    previous = observe.stats(record.id, record.name, process.cgroup, None)
    if not stream:
        time.sleep(0.5)
        h.send_json(200, observe.stats(record.id, record.name, process.cgroup, previous))
        return
    h.start_stream(200, "application/json")
    while record.running and record.process is process and not wire.client_gone(h.connection):
        try:
            now = observe.stats(record.id, record.name, process.cgroup, previous)
        except OSError:                      # the cgroup went away: it stopped
            break
        h.write_chunk(json.dumps(now).encode() + b"\n")
        h.wfile.flush()
        previous = now
        time.sleep(1.0)
    h.end_stream()


def top(h, m, q):
    if q.get("ps_args"):
        raise InvalidValue("ps_args", q["ps_args"], "none: labkit's engine shows the columns of ps -ef")
    record, process = h.engine.running_process(m["id"])
    h.send_json(200, observe.top(process.pid))


def rename(h, m, q):
    h.engine.rename(m["id"], q.get("name", ""))
    h.send_empty(204)


def restart(h, m, q):
    timeout = q.get("t") or None
    if timeout is not None and not timeout.lstrip("-").isdigit():
        raise InvalidValue("t", timeout, "a number of seconds")
    h.engine.restart(m["id"], None if timeout is None else int(timeout))
    h.send_empty(204)


def update(h, m, q):
    h.engine.update(m["id"], parse_json_body(h.body))
    h.send_json(200, {"Warnings": []})


def prune_containers(h, m, q):
    if q.get("filters") and parse_json_body(q["filters"].encode()):
        raise InvalidValue("filters", q["filters"], "none: labkit's engine prunes every stopped container")
    h.send_json(200, {"ContainersDeleted": h.engine.prune() or None, "SpaceReclaimed": 0})


def kill(h, m, q):
    h.engine.kill(m["id"], q.get("signal") or None)
    h.send_empty(204)


def stop(h, m, q):
    timeout = q.get("t") or None           # absent: the container's StopTimeout, else 10 s
    if timeout is not None and not timeout.lstrip("-").isdigit():
        raise InvalidValue("t", timeout, "a number of seconds")
    h.send_empty(204 if h.engine.stop(m["id"], timeout=None if timeout is None else int(timeout)) else 304)


def remove(h, m, q):
    h.engine.remove(m["id"], force=flag(q, "force"))
    h.send_empty(204)


def tag_image(h, m, q):
    repo = q.get("repo", "")
    if not repo:
        raise InvalidValue("repo", repo, "a name to tag the image with")
    h.engine.images.tag(m["name"], repo + (":" + q["tag"] if q.get("tag") else ""))
    h.send_empty(201)


def remove_image(h, m, q):
    h.send_json(200, h.engine.images.remove(m["name"], h.engine.images_in_use()))


def prune_images(h, m, q):
    """docker image prune: dangling images; with -a (the filter dangling=false) every unused image."""
    filters = parse_json_body(q["filters"].encode()) if q.get("filters") else {}
    if not isinstance(filters, dict) or set(filters) - {"dangling"}:
        raise InvalidValue("filters", q.get("filters"), "none, or dangling=true/false (docker image prune [-a]); "
                           "labkit's engine has no until= or label= filters for images")
    dangling = {v.lower() for v in ps.filter_values(filters.get("dangling", []))}
    if not dangling <= {"true", "1", "false", "0"}:
        raise InvalidValue("filter", "dangling=" + ",".join(sorted(dangling)), "true or false")
    deleted = h.engine.images.prune(h.engine.images_in_use(), only_dangling=not dangling & {"false", "0"})
    h.send_json(200, {"ImagesDeleted": deleted or None, "SpaceReclaimed": 0})


def commit(h, m, q):
    config = parse_json_body(h.body) or {}
    kept = {k: config[k] for k in ("Cmd", "Env", "Entrypoint", "WorkingDir") if config.get(k)}
    if q.get("changes"):
        raise InvalidValue("changes (--change)", q["changes"], "none: labkit's engine applies no Dockerfile lines")
    tag = q.get("repo", "") + (":" + q["tag"] if q.get("repo") and q.get("tag") else "")
    image = h.engine.commit(q.get("container", ""), tag or None, q.get("comment", ""), kept,
                            pause=flag(q, "pause", default=True))
    h.send_json(201, {"Id": image.id})


def _inside(h, ref):
    """A way to run a command in the container as root (docker cp's tar); in a stopped one's root."""
    record, process, running = h.engine.process_or_root(ref)
    if not running:
        return process.run_in_root
    return lambda argv, stdin: process.exec(argv, env=[], working_dir="/", user=archive.ROOT,
                                            stdin=stdin, tty=False)


def archive_stat(h, m, q):
    info = archive.stat(_inside(h, m["id"]), q.get("path", ""), m["id"])
    h.send_bytes(200, b"", "application/json", {"X-Docker-Container-Path-Stat": archive.stat_header(info)})


def archive_get(h, m, q):
    run = _inside(h, m["id"])
    info = archive.stat(run, q.get("path", ""), m["id"])
    h.send_bytes(200, archive.read(run, q["path"]), "application/x-tar",
                 {"X-Docker-Container-Path-Stat": archive.stat_header(info)})


def archive_put(h, m, q):
    archive.write(_inside(h, m["id"]), q.get("path", ""), h.body, m["id"])
    h.send_empty(200)


def save_images(h, m, q):
    names = [m["name"]] if m.get("name") else q.every("names") or [""]
    h.send_bytes(200, images_mod.save([h.engine.images.find(n) for n in names]), "application/x-tar")


def load_images(h, m, q):
    lines = []
    for image in images_mod.load(h.body, h.engine.layers_dir()):
        h.engine.images.put(image)
        lines.append({"stream": "".join(f"Loaded image: {t}\n" for t in image.tags)
                      or f"Loaded image ID: {image.id}\n"})
    h.send_bytes(200, b"".join(json.dumps(line).encode() + b"\n" for line in lines), "application/json")


def list_images(h, m, q):
    h.send_json(200, [image.summary() for image in h.engine.images.list()])


def inspect_image(h, m, q):
    h.send_json(200, h.engine.images.find(m["name"]).inspect())


def pull(h, m, q):
    ref = q.get("fromImage", "") + (":" + q["tag"] if q.get("tag") else "")
    raise NotFound(f"labkit's engine cannot pull {ref or 'images'}: there is no registry here. "
                   f"Local images: {', '.join(h.engine.images.names()) or 'none'}")


ROUTES = [(method, re.compile(f"^{pattern}$"), handler) for method, pattern, handler in [
    ("GET", r"/_ping", ping),
    ("HEAD", r"/_ping", ping),
    ("GET", r"/version", version),
    ("GET", r"/info", info),
    ("GET", r"/containers/json", list_containers),
    ("POST", r"/containers/create", create),
    ("GET", rf"/containers/{_ID}/json", inspect_container),
    ("POST", rf"/containers/{_ID}/start", start),
    ("POST", rf"/containers/{_ID}/wait", wait),
    ("GET", rf"/containers/{_ID}/logs", logs),
    ("POST", rf"/containers/{_ID}/attach", attach),
    ("POST", rf"/containers/{_ID}/kill", kill),
    ("POST", rf"/containers/{_ID}/stop", stop),
    ("DELETE", rf"/containers/{_ID}", remove),
    ("POST", rf"/containers/{_ID}/resize", resize),
    ("POST", rf"/containers/{_ID}/pause", pause),
    ("POST", rf"/containers/{_ID}/unpause", unpause),
    ("GET", rf"/containers/{_ID}/stats", stats),
    ("GET", rf"/containers/{_ID}/top", top),
    ("POST", rf"/containers/{_ID}/rename", rename),
    ("POST", rf"/containers/{_ID}/restart", restart),
    ("POST", rf"/containers/{_ID}/update", update),
    ("POST", r"/containers/prune", prune_containers),
    ("POST", rf"/containers/{_ID}/exec", exec_create),
    ("POST", rf"/exec/{_ID}/start", exec_start),
    ("GET", rf"/exec/{_ID}/json", exec_inspect),
    ("POST", rf"/exec/{_ID}/resize", exec_resize),
    ("GET", r"/images/json", list_images),
    ("GET", r"/images/(?P<name>.+)/json", inspect_image),
    ("POST", r"/images/create", pull),
    ("POST", r"/images/(?P<name>.+)/tag", tag_image),
    ("DELETE", r"/images/(?P<name>.+)", remove_image),
    ("POST", r"/images/prune", prune_images),
    ("POST", r"/commit", commit),
    ("GET", r"/images/get", save_images),
    ("GET", r"/images/(?P<name>.+)/get", save_images),
    ("POST", r"/images/load", load_images),
    ("HEAD", rf"/containers/{_ID}/archive", archive_stat),
    ("GET", rf"/containers/{_ID}/archive", archive_get),
    ("PUT", rf"/containers/{_ID}/archive", archive_put),
]]
ENDPOINTS = sorted({pattern.pattern.strip("^$").replace("(?P<id>[^/]+)", "{id}")
                    .replace("(?P<name>.+)", "{name}") for _, pattern, _ in ROUTES})


def route(method: str, path: str):
    """(handler, match) for a request, or an HTTPError that says why: 501 for a route Docker has and
    the engine does not (the CLI prints the message; a 404 it would turn into "No such ..."),
    405 for a known path with another method, 404 for a path Docker does not have either."""
    allowed = []
    for route_method, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match:
            if route_method == method:
                return handler, match.groupdict()
            allowed.append(route_method)
    feature = docker_api.feature(method, path)
    if feature:
        # "not supported" is what `docker inspect NAME` skips, as it skips a 404, to try the next kind of
        # object: so a name that is nothing ends as dockerd's "No such object", not at the networks.
        raise HTTPError(501, f"labkit's engine does not implement {feature} ({method} {path}): not supported "
                             f"here; Docker has it. See docs/engine-commands.md for what the engine does")
    if allowed:
        raise HTTPError(405, f"{method} is not allowed on {path}: use {' or '.join(sorted(set(allowed)))}")
    raise HTTPError(404, f"page not found: labkit's engine does not implement {method} {path}. It "
                         f"speaks a subset of the Docker Engine API {API_VERSION}: "
                         + ", ".join(ENDPOINTS))


STATUS_OF = [(InvalidValue, 400), (NotFound, 404), (Conflict, 409), (LabkitError, 500)]


class Handler(BaseHTTPRequestHandler):
    """One connection; requests one after another (HTTP/1.1 keep-alive), routed by `ROUTES`."""

    protocol_version = "HTTP/1.1"
    server_version = f"labkit-engine/{__version__}"
    sys_version = ""
    engine: Engine              # set by the server
    verbose = False

    def do_request(self) -> None:
        self.body = b""
        try:
            path, query, _ = split_target(self.path)
            limit = MAX_ARCHIVE if (self.command, path.rsplit("/", 1)[-1]) in (("PUT", "archive"), ("POST", "load")) \
                else MAX_BODY
            self.body = read_request_body(self.rfile, list(self.headers.items()), limit)
            handler, match = route(self.command, path)
            handler(self, match, query)
        except Exception as exc:  # noqa: BLE001 - every failure becomes Docker's error shape
            self.send_error_json(exc)

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = do_request

    # --- answers ------------------------------------------------------------------------------

    def _common_headers(self) -> None:
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Docker-Experimental", "false")
        self.send_header("Ostype", "linux")

    def send_bytes(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self._common_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, obj) -> None:
        self.send_bytes(status, json.dumps(obj).encode() + b"\n", "application/json")

    def send_empty(self, status: int) -> None:
        self.send_response(status)
        self._common_headers()
        if status not in (204, 304):
            self.send_header("Content-Length", "0")
        self.end_headers()

    def send_error_json(self, exc: Exception) -> None:
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            self.close_connection = True
            return
        if getattr(self, "_streaming", False):
            # Headers are gone already; all we can do is end the stream and the connection.
            self.close_connection = True
            return
        status = exc.status if isinstance(exc, HTTPError) else \
            next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 500)
        if status == 500 and not isinstance(exc, LabkitError):
            traceback.print_exc()
        message = str(exc) if isinstance(exc, (HTTPError, LabkitError)) else f"internal error: {exc!r}"
        if getattr(exc, "close", False):
            self.close_connection = True
        self.send_json(status, {"message": message})

    def start_stream(self, status: int, content_type: str) -> None:
        """Headers now, body in chunks later (how /wait and /logs answer)."""
        self.send_response(status)
        self._common_headers()
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        self._streaming = True

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(wire.chunk(data))

    def end_stream(self) -> None:
        self.wfile.write(wire.chunk(b""))
        self._streaming = False

    def handle_one_request(self) -> None:
        self._streaming = False
        super().handle_one_request()

    def log_message(self, format: str, *args) -> None:
        if self.verbose:
            super().log_message(format, *args)

    def address_string(self) -> str:
        return "unix"           # unix sockets have no client address
