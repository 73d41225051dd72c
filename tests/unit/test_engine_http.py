"""labkit's engine over its real unix socket, with a stand-in runtime (no kernel objects, no root).

The runtime here is a fake that plays a container from a tiny script - it writes to the output
files, sleeps, exits - so these tests check only the HTTP layer: statuses, Docker's error shape,
streaming answers (/wait, /logs), the hijacked /attach connection, parallel requests, and the tracer
in front of it. The real thing - labkit Containers driven by the real docker CLI - is
tests/integration/test_engine.py.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labkit.engine import streams, wire
from labkit.engine.images import ImageStore
from labkit.engine.server import EngineServer
from labkit.engine.state import Engine
from labkit.engine.tracer import Tracer
from labkit.engine.wire import UnixHTTPConnection

IMAGE = "labkit-test:latest"
DOCKER = "/usr/bin/docker"


class FakeProcess:
    """A pretend container. argv is a script: echo WORDS ; warn WORDS ; sleep S ; exit N (';' separated)."""

    def __init__(self, argv, workdir: Path):
        self.pid = 1_000_000 + threading.get_ident() % 1000
        self.stdout_path, self.stderr_path = workdir / "stdout", workdir / "stderr"
        self.returncode = None
        self.released = False
        self._killed = threading.Event()
        self._thread = threading.Thread(target=self._play, args=(argv,), daemon=True)
        self._thread.start()

    def _play(self, argv):
        steps, step = [], []
        for token in argv + [";"]:
            if token == ";":
                steps.append(step) if step else None
                step = []
            else:
                step.append(token)
        code = 0
        with open(self.stdout_path, "ab", buffering=0) as out, open(self.stderr_path, "ab", buffering=0) as err:
            for verb, *words in steps:
                if verb == "echo":
                    out.write(" ".join(words).encode() + b"\n")
                elif verb == "warn":
                    err.write(" ".join(words).encode() + b"\n")
                elif verb == "sleep" and self._killed.wait(float(words[0])):
                    return
                elif verb == "exit":
                    code = int(words[0])
                    break
        if self.returncode is None:
            self.returncode = code

    def poll(self):
        return self.returncode

    def wait(self):
        self._thread.join()
        return self.returncode

    def kill(self, sig):
        if self.returncode is None:
            self.returncode = -sig
            self._killed.set()

    def oom_killed(self):
        return False

    def release(self, keep_root=False):
        self.released = True

    def details(self):
        return {"Fake": True}


class FakeRuntime:
    def __init__(self, tmp: Path):
        self.tmp, self.launched = tmp, []

    def validate(self, spec, image):
        pass

    def launch(self, spec, image, hostname="", kept=None):
        if spec.argv[0] == "explode":
            from labkit.errors import LabkitError
            raise LabkitError("the runtime could not create the container")
        workdir = Path(tempfile.mkdtemp(dir=self.tmp, prefix="run"))
        process = FakeProcess(spec.argv, workdir)
        self.launched.append(process)
        return process


@pytest.fixture
def engine(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    store = ImageStore()
    store.add(IMAGE, rootfs)
    runtime = FakeRuntime(tmp_path)
    engine = Engine(store, runtime=runtime)
    server = EngineServer(str(tmp_path / "engine.sock"), engine)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    engine.socket_path, engine.fake = server.socket_path, runtime
    yield engine
    server.shutdown()
    engine.shutdown()
    server.server_close()
    os.unlink(server.socket_path)


def call(engine, method, path, body=None, raw: bytes | None = None):
    """(status, headers, body bytes) of one request."""
    conn = UnixHTTPConnection(engine.socket_path, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return result


def run_container(engine, argv, **config):
    status, _, body = call(engine, "POST", "/v1.41/containers/create", {"Image": IMAGE, "Cmd": argv, **config})
    assert status == 201, body
    cid = json.loads(body)["Id"]
    assert call(engine, "POST", f"/v1.41/containers/{cid}/start")[0] == 204
    return cid


def error_message(status_headers_body, status):
    got_status, headers, body = status_headers_body
    assert got_status == status, body
    assert headers["Content-Type"] == "application/json"
    shape = json.loads(body)
    assert list(shape) == ["message"]          # Docker's error shape, nothing else
    return shape["message"]


# --- basics ---------------------------------------------------------------------------------------

def test_socket_is_owned_by_us_and_mode_0600(engine):
    st = os.stat(engine.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_ping_get_and_head_with_the_api_version_header(engine):
    status, headers, body = call(engine, "GET", "/_ping")
    assert (status, body, headers["Api-Version"]) == (200, b"OK", "1.41")
    status, headers, body = call(engine, "HEAD", "/_ping")
    assert (status, body) == (200, b"")


def test_version_answers_versioned_and_unversioned(engine):
    for path in ("/version", "/v1.41/version", "/v1.24/version"):
        status, _, body = call(engine, "GET", path)
        assert status == 200 and json.loads(body)["ApiVersion"] == "1.41"
    assert "too new" in error_message(call(engine, "GET", "/v1.99/version"), 400)


# --- error shapes ---------------------------------------------------------------------------------

def test_a_docker_route_the_engine_lacks_is_501_with_message(engine):
    message = error_message(call(engine, "GET", "/v1.41/swarm"), 501)
    assert "does not implement swarm mode (GET /swarm)" in message


def test_malformed_json_400(engine):
    message = error_message(call(engine, "POST", "/v1.41/containers/create", raw=b'{"Image": '), 400)
    assert "malformed JSON" in message


def test_unknown_image_404(engine):
    message = error_message(call(engine, "POST", "/containers/create", {"Image": "nosuch", "Cmd": ["x"]}), 404)
    assert message == "No such image: nosuch"


@pytest.mark.parametrize("method, path", [("GET", "/containers/{}/json"), ("POST", "/containers/{}/start"),
                                          ("POST", "/containers/{}/wait"), ("POST", "/containers/{}/kill"),
                                          ("GET", "/containers/{}/logs?stdout=1"), ("DELETE", "/containers/{}"),
                                          ("POST", "/containers/{}/attach?stream=1&stdout=1")])
def test_unknown_container_404(engine, method, path):
    message = error_message(call(engine, method, "/v1.41" + path.format("0123456789ab")), 404)
    assert message == "No such container: 0123456789ab"


def test_unsupported_field_400_names_the_flag(engine):
    message = error_message(call(engine, "POST", "/containers/create",
                                 {"Image": IMAGE, "Cmd": ["x"], "HostConfig": {"PortBindings": {"80/tcp": [{}]}}}), 400)
    assert "-p" in message and "PortBindings" in message


def test_name_in_use_409_and_running_container_needs_force(engine):
    body = {"Image": IMAGE, "Cmd": ["sleep", "30"]}
    assert call(engine, "POST", "/containers/create?name=web", body)[0] == 201
    assert "already in use" in error_message(call(engine, "POST", "/containers/create?name=web", body), 409)
    assert call(engine, "POST", "/containers/web/start")[0] == 204
    assert call(engine, "POST", "/containers/web/start")[0] == 304          # already running
    assert "force" in error_message(call(engine, "DELETE", "/containers/web"), 409)
    assert call(engine, "DELETE", "/containers/web?force=1")[0] == 204
    assert call(engine, "GET", "/containers/web/json")[0] == 404
    assert engine.fake.launched[0].released


# --- lifecycle and streams -----------------------------------------------------------------------

def test_create_start_wait_logs_inspect_list_remove(engine):
    cid = run_container(engine, ["echo", "hello", ";", "warn", "oops", ";", "exit", "3"])
    status, _, body = call(engine, "POST", f"/containers/{cid}/wait")
    assert status == 200 and json.loads(body) == {"StatusCode": 3, "Error": None}
    status, headers, body = call(engine, "GET", f"/containers/{cid}/logs?stdout=1&stderr=1")
    assert headers["Content-Type"] == streams.MULTIPLEXED
    # each stream's bytes in order; between stdout and stderr there is no order (nor is there in Docker)
    assert streams.split(body) == (b"hello\n", b"oops\n")
    assert sorted(stream for stream, _ in streams.demux(body)) == [1, 2]
    _, _, body = call(engine, "GET", f"/containers/{cid}/logs?stdout=1")
    assert streams.split(body) == (b"hello\n", b"")
    state = json.loads(call(engine, "GET", f"/containers/{cid[:12]}/json")[2])["State"]
    assert (state["Status"], state["ExitCode"], state["Running"]) == ("exited", 3, False)
    listed = json.loads(call(engine, "GET", "/containers/json?all=1")[2])
    assert [c["Id"] for c in listed] == [cid] and listed[0]["Status"].startswith("Exited (3)")
    assert json.loads(call(engine, "GET", "/containers/json")[2]) == []          # not running
    assert call(engine, "DELETE", f"/containers/{cid}")[0] == 204
    assert json.loads(call(engine, "GET", "/containers/json?all=1")[2]) == []


def test_wait_answers_headers_at_once_and_the_body_at_exit(engine):
    cid = run_container(engine, ["sleep", "30"])
    conn = UnixHTTPConnection(engine.socket_path, timeout=10)
    conn.request("POST", f"/containers/{cid}/wait?condition=next-exit")
    response = conn.getresponse()                      # returns while the container still runs
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert json.loads(call(engine, "GET", f"/containers/{cid}/json")[2])["State"]["Running"]
    assert call(engine, "POST", f"/containers/{cid}/kill?signal=SIGKILL")[0] == 204
    assert json.loads(response.read()) == {"StatusCode": 137, "Error": None}   # 128 + SIGKILL
    conn.close()
    assert "not running" in error_message(call(engine, "POST", f"/containers/{cid}/kill"), 409)


def test_a_failed_start_is_a_500_and_ends_the_waits(engine):
    status, _, body = call(engine, "POST", "/containers/create",
                           {"Image": IMAGE, "Cmd": ["explode"], "HostConfig": {"AutoRemove": True}})
    cid = json.loads(body)["Id"]
    conn = UnixHTTPConnection(engine.socket_path, timeout=10)
    conn.request("POST", f"/containers/{cid}/wait?condition=removed")
    waiting = conn.getresponse()
    assert "could not create" in error_message(call(engine, "POST", f"/containers/{cid}/start"), 500)
    assert json.loads(waiting.read())["StatusCode"] == 128          # the wait did not hang
    conn.close()
    assert call(engine, "GET", f"/containers/{cid}/json")[0] == 404  # --rm removed it


def test_bad_wait_condition_400(engine):
    cid = run_container(engine, ["exit", "0"])
    assert "condition" in error_message(call(engine, "POST", f"/containers/{cid}/wait?condition=soon"), 400)


def test_attach_hijacks_the_connection_and_streams_until_exit(engine):
    status, _, body = call(engine, "POST", "/containers/create", {"Image": IMAGE, "Cmd": ["echo", "one", ";", "warn", "two"]})
    cid = json.loads(body)["Id"]
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(engine.socket_path)
    sock.sendall(f"POST /v1.41/containers/{cid}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                 "Host: docker\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
    reader = sock.makefile("rb")
    first, headers, _ = wire.read_head(reader)
    assert first.startswith("HTTP/1.1 101") and wire.header(headers, "Upgrade") == "tcp"
    sock.shutdown(socket.SHUT_WR)                      # as the CLI does without stdin: must not end it
    assert call(engine, "POST", f"/containers/{cid}/start")[0] == 204
    raw = reader.read()                                # raw frames until the engine closes
    assert streams.split(raw) == (b"one\n", b"two\n")          # per stream; no order across them
    assert sorted(stream for stream, _ in streams.demux(raw)) == [1, 2]
    sock.close()


def test_auto_remove_and_wait_for_removed(engine):
    """As `docker run --rm` does it: the wait is sent BEFORE the start (after it, the container may be gone)."""
    status, _, body = call(engine, "POST", "/containers/create",
                           {"Image": IMAGE, "Cmd": ["echo", "bye", ";", "exit", "5"], "HostConfig": {"AutoRemove": True}})
    cid = json.loads(body)["Id"]
    conn = UnixHTTPConnection(engine.socket_path, timeout=10)
    conn.request("POST", f"/containers/{cid}/wait?condition=removed")
    response = conn.getresponse()
    assert call(engine, "POST", f"/containers/{cid}/start")[0] == 204
    assert json.loads(response.read())["StatusCode"] == 5
    conn.close()
    assert call(engine, "GET", f"/containers/{cid}/json")[0] == 404


def test_removed_is_reported_only_after_the_kept_root_is_released(engine):
    """dockerd signals "removed" after the container's layer and directory are gone, so `docker run --rm`
    (a wait for "removed") exits with nothing left behind. Here the final release of the root the engine
    kept after the exit is held at a gate: while it runs, the container must not be "removed" yet."""
    cid = run_container(engine, ["exit", "3"])
    assert engine.wait(cid, "not-running") == 3
    record = next(r for r in engine.list(all=True) if r.id == cid)
    process = engine.fake.launched[-1]
    gate, seen = threading.Event(), []

    def release(keep_root=False):        # the release at exit keeps the root; the one at rm is held
        if not keep_root:
            seen.append(("release begins; removed already:", record.removed))
            assert gate.wait(10)

    process.release = release
    waiter = engine.watch(cid, "removed")
    remover = threading.Thread(target=engine.remove, args=(cid,))
    remover.start()
    deadline = time.monotonic() + 10
    while not seen:                      # rm has reached the release
        assert time.monotonic() < deadline and remover.is_alive(), "rm never released the kept root"
        time.sleep(0.01)
    gate.set()
    assert waiter(10) == 3
    remover.join(10)
    assert seen == [("release begins; removed already:", False)] and record.removed


def test_a_restart_by_policy_is_restarting_until_the_new_run_is_running(engine):
    """dockerd shows a container its restart policy brings back as "restarting" until it runs again;
    an "exited" in between would let a client (or a test) take the restart count as final. The
    second launch is held at a gate: meanwhile inspect must say restarting, never exited."""
    launch, gate, launches = engine.fake.launch, threading.Event(), []

    def held_launch(*args, **kwargs):
        launches.append(1)
        if len(launches) == 2:
            assert gate.wait(10)
        return launch(*args, **kwargs)

    engine.fake.launch = held_launch
    cid = run_container(engine, ["exit", "3"], HostConfig={"RestartPolicy": {"Name": "on-failure",
                                                                             "MaximumRetryCount": 1}})
    deadline = time.monotonic() + 10
    while len(launches) < 2:                # the policy's restart has begun its launch
        assert time.monotonic() < deadline, "the policy never restarted the container"
        time.sleep(0.01)
    state = json.loads(call(engine, "GET", f"/v1.41/containers/{cid}/json")[2])["State"]
    gate.set()
    assert (state["Status"], state["Restarting"]) == ("restarting", True), state
    while (after := json.loads(call(engine, "GET", f"/v1.41/containers/{cid}/json")[2]))["RestartCount"] != 1 \
            or after["State"]["Status"] != "exited":         # the one restart ran and ended: final
        assert time.monotonic() < deadline + 10, after["State"]
        time.sleep(0.01)
    assert after["State"]["ExitCode"] == 3 and len(launches) == 2
    call(engine, "DELETE", f"/v1.41/containers/{cid}?force=1")


def test_parallel_requests_are_served_at_once(engine):
    """Sixteen clients at the same time; one of them holds a wait open the whole time."""
    blocker = run_container(engine, ["sleep", "30"])
    conn = UnixHTTPConnection(engine.socket_path, timeout=30)
    conn.request("POST", f"/containers/{blocker}/wait")
    held = conn.getresponse()

    def one(i):
        cid = run_container(engine, ["echo", f"n{i}", ";", "exit", str(i % 7)])
        code = json.loads(call(engine, "POST", f"/containers/{cid}/wait")[2])["StatusCode"]
        out, _ = streams.split(call(engine, "GET", f"/containers/{cid}/logs?stdout=1")[2])
        assert call(engine, "DELETE", f"/containers/{cid}")[0] == 204
        return cid, code, out

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert len({cid for cid, _, _ in results}) == 16
    assert [(code, out) for _, code, out in results] == [(i % 7, f"n{i}\n".encode()) for i in range(16)]
    call(engine, "DELETE", f"/containers/{blocker}?force=1")
    assert json.loads(held.read())["StatusCode"] == 137
    conn.close()


def test_images_list_and_inspect(engine):
    listed = json.loads(call(engine, "GET", "/v1.41/images/json")[2])
    assert [i["RepoTags"] for i in listed] == [[IMAGE]]
    image = json.loads(call(engine, "GET", f"/v1.41/images/{IMAGE}/json")[2])
    assert image["Id"] == listed[0]["Id"] and image["Config"]["Cmd"] == ["sh"]
    assert "No such image" in error_message(call(engine, "GET", "/images/nosuch/json"), 404)
    assert "no registry" in error_message(call(engine, "POST", "/images/create?fromImage=busybox&tag=latest"), 404)


# --- real clients: the docker SDK for Python and the docker CLI -------------------------------------

def test_docker_sdk_create_start_wait_remove(engine):
    import docker
    client = docker.DockerClient(base_url=f"unix://{engine.socket_path}")
    container = client.containers.create(IMAGE, ["echo", "from sdk", ";", "exit", "2"], name="labkit-sdk")
    assert container.status == "created"
    container.start()
    assert container.wait()["StatusCode"] == 2
    assert container.logs() == b"from sdk\n"
    container.remove()
    assert client.containers.list(all=True) == []
    client.close()


@pytest.mark.skipif(not os.path.exists(DOCKER), reason="Debian's docker CLI (docker.io) is not installed")
def test_docker_cli_run_prints_output_and_exits_with_the_status(engine):
    env = {**os.environ, "DOCKER_HOST": f"unix://{engine.socket_path}"}
    ok = subprocess.run([DOCKER, "run", "--rm", IMAGE, "echo", "hello"], capture_output=True, env=env, timeout=30)
    assert (ok.returncode, ok.stdout) == (0, b"hello\n"), ok.stderr
    bad = subprocess.run([DOCKER, "run", "--rm", IMAGE, "warn", "no", ";", "exit", "42"],
                         capture_output=True, env=env, timeout=30)
    assert (bad.returncode, bad.stderr) == (42, b"no\n")


# --- the tracer in front of the engine ----------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(DOCKER), reason="Debian's docker CLI (docker.io) is not installed")
def test_tracer_records_a_docker_run_including_the_hijacked_stream(engine, tmp_path, monkeypatch):
    monkeypatch.setattr("labkit.cleanup.STATE_DIR", tmp_path)
    monkeypatch.setattr("labkit.engine.registry.RECORDS", tmp_path / "engine")
    monkeypatch.setattr("labkit.cleanup.OWNERS_DIR", tmp_path / "owners")
    with Tracer(upstream=engine.socket_path, socket_path=str(tmp_path / "proxy.sock")) as tracer:
        result = tracer.docker("run", "--rm", IMAGE, "echo", "traced")
        tracer.wait_idle()
        calls = tracer.calls
    assert result.returncode == 0 and result.stdout == b"traced\n"
    endpoints = [(c.method, c.endpoint) for c in calls]
    for expected in [("POST", "/containers/create"), ("POST", "/containers/{id}/attach"),
                     ("POST", "/containers/{id}/wait"), ("POST", "/containers/{id}/start")]:
        assert expected in endpoints
    by_endpoint = {c.endpoint: c for c in calls}
    create = by_endpoint["/containers/create"]
    assert create.status == 201 and json.loads(create.request_body)["Cmd"] == ["echo", "traced"]
    attach = by_endpoint["/containers/{id}/attach"]
    assert attach.status == 101 and attach.upgraded and attach.output() == (b"traced\n", b"")
    wait = by_endpoint["/containers/{id}/wait"]
    assert json.loads(wait.response_body)["StatusCode"] == 0
    start = by_endpoint["/containers/{id}/start"]
    assert wait.started < start.started < wait.finished      # the wait was open before the start
    assert not (tmp_path / "proxy.sock").exists()


# --- the socket path and the leftover records ---------------------------------------------------------

def test_stale_socket_is_replaced_but_a_live_one_or_a_file_is_refused(tmp_path):
    from labkit.engine.wire import clear_stale_socket
    from labkit.errors import Conflict, InvalidValue

    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))                      # bound, never listening: what a killed server leaves
    dead.close()
    clear_stale_socket(str(stale))
    assert not stale.exists()

    live = tmp_path / "live.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(live))
    listener.listen()
    with pytest.raises(Conflict, match="already listening"):
        clear_stale_socket(str(live))
    listener.close()

    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(InvalidValue):
        clear_stale_socket(str(regular))
    assert regular.exists()


def test_image_options_are_name_equals_dir():
    from labkit.engine.server import parse_image_options
    from labkit.errors import InvalidValue

    assert parse_image_options(["a=/x", "b:1=/y"]) == {"a": "/x", "b:1": "/y"}
    for bad in ("nodir", "=/x", "a="):
        with pytest.raises(InvalidValue, match="NAME=DIR"):
            parse_image_options([bad])


def test_a_dead_servers_socket_is_a_leftover_and_removing_it_leaves_other_files(tmp_path, monkeypatch):
    from labkit import cleanup
    from labkit.engine import registry

    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setattr(registry, "RECORDS", tmp_path / "engine")
    sock_path = tmp_path / "engine" / "labkit-engine-0a0b0c.sock"
    registry.register("labkit-engine-0a0b0c", str(sock_path), role="engine")
    sock_path.parent.mkdir(exist_ok=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.close()
    child = subprocess.Popen(["true"])
    child.wait()
    cleanup.claim(registry.KIND, "labkit-engine-0a0b0c", pid=child.pid)     # its owner has died
    found = [cleanup.leftover(registry.KIND, r["name"], r["socket"]) for r in registry.records()]
    assert [(i.name, i.where, i.owner_alive) for i in found] == [("labkit-engine-0a0b0c", str(sock_path), False)]
    registry.remove(found[0].name, found[0].where)
    assert not sock_path.exists() and registry.records() == []

    not_a_socket = tmp_path / "precious.txt"
    not_a_socket.write_text("keep me")
    registry.register("labkit-engine-0d0e0f", str(not_a_socket), role="engine")
    registry.remove("labkit-engine-0d0e0f", str(not_a_socket))
    assert not_a_socket.read_text() == "keep me"
