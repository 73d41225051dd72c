"""labkit's engine driven by the real docker CLI and the docker SDK, and the tracer on real dockerd.

What is checked is read from outside: the docker CLI's own output and exit status, /proc/PID/ns
and /proc/PID/cgroup of the container's process, the cgroup directories under /sys/fs/cgroup, the
socket's mode on disk, and - for real Docker - the calls seen on the wire.

Fixtures start `labkit engine serve` (one per module) and, where Docker is installed, dockerd
(only if none is running; stopped again only if this module started it), import the busybox
rootfs as a uniquely named local image, and remove that image and every labkit-* container they
made at the end.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labkit import cleanup, dockerd, rootfs
from labkit.cgroups.base import parent_from_env
from labkit.engine import EngineProcess, Tracer, registry, streams
from labkit.engine.wire import UnixHTTPConnection

pytestmark = pytest.mark.root

IMAGE = "labkit-busybox"
LABKIT = [sys.executable, "-m", "labkit.cli"]
needs_docker_cli = pytest.mark.skipif(not os.path.exists(dockerd.DOCKER),
                                      reason="Debian's docker CLI is not installed: apt-get install docker.io")


@pytest.fixture(scope="module")
def engine():
    with EngineProcess() as engine:
        yield engine


@pytest.fixture(scope="module")
def real_docker():
    """The real dockerd with the busybox rootfs imported as a local image; as found afterwards."""
    if not dockerd.available():
        pytest.skip("Docker is not installed here (apt-get install docker.io); the real-Docker half is skipped")
    with dockerd.Dockerd() as daemon:
        image = dockerd.import_rootfs(rootfs.base_layer().path)
        try:
            yield daemon, image
        finally:
            for c in dockerd.labkit_objects()["containers"]:
                if cleanup.owner("docker-container", c["name"])[0] == os.getpid():
                    daemon.docker("rm", "--force", c["id"], check=False)
                    cleanup.release("docker-container", c["name"])
            dockerd.remove_image(image)
            assert image not in [i["tag"] for i in dockerd.labkit_objects()["images"]]


def docker(engine, *args, timeout=60):
    return dockerd.docker(*args, host=engine.url, timeout=timeout, check=False)


def engine_objects(engine) -> list:
    """Kernel objects (cgroups, mounts, dirs) that belong to the engine's process, read from the machine."""
    return [item for item in cleanup.find_all(include_in_use=True)
            if item.owner_pid == engine.pid and item.kind != registry.KIND]


def cgroup_dirs(name: str) -> list[Path]:
    """The container's cgroup directories: one per v1 hierarchy (/sys/fs/cgroup/CONTROLLER/NAME), or the
    one v2 group wherever labkit's parent is (/sys/fs/cgroup/NAME, or under LABKIT_CGROUP_PARENT)."""
    root = Path("/sys/fs/cgroup")
    if root.joinpath("cgroup.controllers").exists():              # pure v2
        return [p for p in (root / parent_from_env() / name,) if p.is_dir()]
    return [p for p in root.glob(f"*/{name}") if p.is_dir()]


def api(engine, method, path, body: bytes | None = None):
    conn = UnixHTTPConnection(engine.socket_path, timeout=30)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    result = response.status, response.getheader("Content-Type"), response.read()
    conn.close()
    return result


# --- the docker CLI against labkit's engine -------------------------------------------------------

def test_socket_is_root_only(engine):
    st = os.stat(engine.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600


@needs_docker_cli
def test_docker_version_talks_to_labkits_engine(engine):
    result = docker(engine, "version", "--format", "{{.Server.Platform.Name}} {{.Server.APIVersion}}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == "labkit engine 1.41"


@needs_docker_cli
def test_docker_run_rm_prints_output_and_exits_with_the_containers_status(engine):
    ok = docker(engine, "run", "--rm", IMAGE, "echo", "hello")
    assert (ok.returncode, ok.stdout) == (0, b"hello\n"), ok.stderr
    failed = docker(engine, "run", "--rm", IMAGE, "sh", "-c", "echo out; echo oops >&2; exit 7")
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, b"out\n", b"oops\n")
    assert docker(engine, "ps", "-a", "-q").stdout == b""                 # --rm removed both
    assert engine_objects(engine) == []                                     # and their kernel objects


@needs_docker_cli
def test_a_command_that_cannot_run_exits_127_or_126_as_under_dockerd(engine):
    """The docker CLI takes run's exit status from the daemon's words, as runc words them: "executable
    file not found" 127, "permission denied" 126 (anything else: 125). dockerd records the code too."""
    missing = docker(engine, "run", "--rm", IMAGE, "labkit-no-such-command")
    assert missing.returncode == 127 and b"executable file not found" in missing.stderr, missing.stderr
    not_executable = docker(engine, "run", "--rm", IMAGE, "/etc/passwd")
    assert not_executable.returncode == 126 and b"permission denied" in not_executable.stderr
    name = cleanup.unique_name("noexec")
    assert docker(engine, "run", "--name", name, IMAGE, "labkit-no-such-command").returncode == 127
    try:
        assert json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["ExitCode"] == 127
    finally:
        docker(engine, "rm", name)
    assert engine_objects(engine) == []


@needs_docker_cli
def test_docker_create_ps_start_wait_logs_inspect_rm(engine):
    name = cleanup.unique_name("cli")
    created = docker(engine, "create", "--name", name, "--memory", "64m", "--pids-limit", "32",
                     IMAGE, "sh", "-c", "echo hi from $(hostname); exit 3")
    assert created.returncode == 0, created.stderr
    cid = created.stdout.decode().strip()
    assert len(cid) == 64
    listed = docker(engine, "ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}").stdout.decode()
    assert f"{cid[:12]} {name} Created" in listed
    assert docker(engine, "start", name).returncode == 0
    waited = docker(engine, "wait", name)
    assert waited.stdout.decode().strip() == "3"
    assert docker(engine, "logs", name).stdout == f"hi from {cid[:12]}\n".encode()   # hostname = short id
    inspected = json.loads(docker(engine, "inspect", name).stdout)[0]
    assert inspected["Id"] == cid and inspected["State"]["ExitCode"] == 3
    assert inspected["HostConfig"]["Memory"] == 64 * 1024 * 1024 and inspected["HostConfig"]["PidsLimit"] == 32
    labkit_name = inspected["Labkit"]["LabkitName"]
    assert cgroup_dirs(labkit_name) == []           # the run ended: its cgroup is gone already
    removed = docker(engine, "rm", name)
    assert removed.returncode == 0 and removed.stdout.decode().strip() == name
    assert name not in docker(engine, "ps", "-a").stdout.decode()
    assert docker(engine, "inspect", name).returncode != 0
    assert engine_objects(engine) == []


@needs_docker_cli
def test_a_running_container_is_a_labkit_container_seen_from_proc(engine):
    """The same primitives as chapters 1-2: new namespaces in /proc/PID/ns, a labkit cgroup with the limit."""
    name = cleanup.unique_name("proc")
    started = docker(engine, "run", "-d", "--name", name, "--memory", "48m", IMAGE, "sleep", "60")
    assert started.returncode == 0, started.stderr
    try:
        state = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]
        pid = state["Pid"]
        assert state["Running"] and pid > 0
        for kind in ("pid", "mnt", "uts", "ipc", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}"), kind
        memory_line = next(l for l in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                           if l.split(":")[1] in ("memory", ""))
        group = memory_line.split(":", 2)[2]
        assert Path(group).name.startswith("labkit-")
        limit_file = Path("/sys/fs/cgroup/memory", group.lstrip("/"), "memory.limit_in_bytes")
        if not limit_file.exists():
            limit_file = Path("/sys/fs/cgroup", group.lstrip("/"), "memory.max")
        assert int(limit_file.read_text()) == 48 * 1024 * 1024
        assert Path(f"/proc/{pid}/root/etc/os-release").read_text().startswith('NAME="labkit busybox"')
        assert docker(engine, "ps", "-q").stdout.decode().split() == [json.loads(
            docker(engine, "inspect", name).stdout)[0]["Id"][:12]]
        assert docker(engine, "kill", name).returncode == 0
        assert docker(engine, "wait", name).stdout.decode().strip() == "137"      # 128 + SIGKILL
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        docker(engine, "rm", "--force", name)
    assert engine_objects(engine) == []


@needs_docker_cli
def test_parallel_docker_runs(engine):
    def one(i):
        result = docker(engine, "run", "--rm", IMAGE, "sh", "-c", f"echo n{i}; exit {i}")
        return result.returncode, result.stdout

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, range(6))) == [(i, f"n{i}\n".encode()) for i in range(6)]
    assert engine_objects(engine) == []


def test_a_newer_docker_client_negotiates_down_to_api_141(engine):
    """The docker SDK speaks a newer API than 1.41 by default; with version="auto" it asks the
    engine (GET /version) and talks 1.41 from then on - what a newer docker CLI does with /_ping."""
    import docker as docker_sdk
    from docker import constants

    newest = tuple(int(n) for n in constants.DEFAULT_DOCKER_API_VERSION.split("."))
    assert newest > (1, 41), "this SDK is not newer than the engine: the test would prove nothing"
    client = docker_sdk.DockerClient(base_url=engine.url, version="auto")
    try:
        assert client.api.api_version == "1.41"
        output = client.containers.run(IMAGE, ["sh", "-c", "echo negotiated"], remove=True)
        assert output == b"negotiated\n"
    finally:
        client.close()


# --- the docker SDK for Python ------------------------------------------------------------------------

def test_docker_sdk_creates_starts_waits_for_and_removes(engine):
    import docker as docker_sdk
    client = docker_sdk.DockerClient(base_url=engine.url)
    try:
        container = client.containers.create(IMAGE, ["sh", "-c", "echo sdk; exit 5"],
                                             name=cleanup.unique_name("sdk"), mem_limit="32m")
        assert container.status == "created"
        container.start()
        assert container.wait()["StatusCode"] == 5
        assert container.logs() == b"sdk\n"
        container.remove()
        assert client.containers.list(all=True) == []
        assert client.containers.run(IMAGE, "echo via run", remove=True) == b"via run\n"
    finally:
        client.close()
    assert engine_objects(engine) == []


# --- errors ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, body, status, words", [
    ("POST", "/v1.41/containers/create", b'{"Image": "labkit-busybox", "Cmd": [', 400, "malformed JSON"),
    ("POST", "/v1.41/containers/create", b'{"Image": "nosuch", "Cmd": ["true"]}', 404, "No such image: nosuch"),
    ("GET", "/v1.41/containers/0123456789ab/json", None, 404, "No such container: 0123456789ab"),
    ("POST", "/v1.41/containers/0123456789ab/start", None, 404, "No such container"),
    ("GET", "/v1.41/plugins", None, 501, "does not implement plugins (GET /plugins)"),
    ("GET", "/v1.41/no/such/route", None, 404, "page not found"),
])
def test_errors_have_dockers_shape(engine, method, path, body, status, words):
    got, content_type, answer = api(engine, method, path, body)
    assert (got, content_type) == (status, "application/json")
    assert list(json.loads(answer)) == ["message"] and words in json.loads(answer)["message"]


@needs_docker_cli
def test_cli_shows_the_engines_error_and_fails(engine):
    result = docker(engine, "run", "--rm", "-p", "8080:80", IMAGE, "true")
    assert result.returncode != 0 and b"labkit's engine does not support -p" in result.stderr


# --- the engine's own lifecycle ------------------------------------------------------------------------

@needs_docker_cli
def test_stopping_the_engine_removes_its_containers_and_socket():
    with EngineProcess() as engine:
        name = cleanup.unique_name("stop")
        assert docker(engine, "run", "-d", "--name", name, IMAGE, "sleep", "60").returncode == 0
        state = json.loads(docker(engine, "inspect", name).stdout)[0]
        pid, labkit_name = state["State"]["Pid"], state["Labkit"]["LabkitName"]
        assert cgroup_dirs(labkit_name)
        engine_pid, socket_path = engine.pid, engine.socket_path
    assert not os.path.exists(f"/proc/{pid}") and cgroup_dirs(labkit_name) == []
    assert not os.path.exists(socket_path)
    assert not [i for i in cleanup.find_all(include_in_use=True) if i.owner_pid == engine_pid]


@needs_docker_cli
def test_a_killed_engine_is_swept(engine, monkeypatch):
    """kill -9 leaves a socket and a running container behind; the sweep removes them.

    The engine gets no watchdog here (it would sweep the moment the engine dies), so what is
    checked is the engine module's own find_leftovers / remove_leftover.
    """
    monkeypatch.setenv("LABKIT_NO_WATCHDOG", "1")
    doomed = EngineProcess().start()
    name = cleanup.unique_name("swept")
    try:
        assert docker(doomed, "run", "-d", "--name", name, IMAGE, "sleep", "60").returncode == 0
        state = json.loads(docker(doomed, "inspect", name).stdout)[0]
        pid, labkit_name = state["State"]["Pid"], state["Labkit"]["LabkitName"]
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.process.wait()
        # Another labkit process on this machine may sweep first; whoever does, it must be reported
        # as a dead owner's leftover while it exists, and be gone after a sweep.
        if os.path.exists(doomed.socket_path):
            left = [i for i in cleanup.find_all() if i.kind == registry.KIND and i.where == doomed.socket_path]
            assert left or not os.path.exists(doomed.socket_path)
            assert all(not i.owner_alive for i in left)
        cleanup.sweep()
        assert not os.path.exists(doomed.socket_path)
        assert cgroup_dirs(labkit_name) == []
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        doomed.stop()


# --- dockerd started by labkit ----------------------------------------------------------------------------

def test_a_dockerd_left_by_a_killed_notebook_is_stopped():
    """A kernel that started dockerd is killed: its watchdog stops the daemon (no one else uses it)."""
    if not dockerd.available():
        pytest.skip("Docker is not installed here")
    if dockerd.ping():
        pytest.skip("a Docker daemon is running already (not started by this test): it must stay")
    child = subprocess.Popen([sys.executable, "-c", "import time; from labkit import dockerd; "
                              "print(dockerd.Dockerd().start().started, flush=True); time.sleep(600)"],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"True\n"
        daemon_pid = dockerd.started_by_labkit()
        assert daemon_pid and dockerd.ping()
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 30
    while (dockerd.ping() or os.path.exists(f"/proc/{daemon_pid}")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not dockerd.ping() and not os.path.exists(f"/proc/{daemon_pid}")
    assert dockerd.started_by_labkit() is None


# --- the tracer -------------------------------------------------------------------------------------------

@needs_docker_cli
def test_tracer_records_create_start_wait_of_a_real_docker_run(real_docker):
    _daemon, image = real_docker
    name = cleanup.unique_name("traced")
    cleanup.claim("docker-container", name)
    try:
        with Tracer(upstream=dockerd.SOCKET) as tracer:
            result = tracer.docker("container", "run", "--rm", "--network", "none", "--name", name,
                                   image, "echo", "hello")
            tracer.wait_idle()
            calls = tracer.calls
    finally:
        cleanup.release("docker-container", name)
    assert (result.returncode, result.stdout) == (0, b"hello\n"), result.stderr
    seen = {(c.method, c.endpoint): c for c in calls}
    create = seen[("POST", "/containers/create")]
    assert create.status == 201 and create.query["name"] == name
    sent = json.loads(create.request_body)
    assert sent["HostConfig"]["NetworkMode"] == "none" and sent["Cmd"] == ["echo", "hello"]
    assert seen[("POST", "/containers/{id}/start")].status == 204
    wait = seen[("POST", "/containers/{id}/wait")]
    assert wait.status == 200 and json.loads(wait.response_body)["StatusCode"] == 0
    attach = seen[("POST", "/containers/{id}/attach")]
    assert attach.status == 101 and attach.output()[0] == b"hello\n"
    assert name not in [c["name"] for c in dockerd.labkit_objects()["containers"]]     # --rm


@needs_docker_cli
def test_labkit_trace_command_prints_the_calls(engine, tmp_path):
    proxy = str(tmp_path / "proxy.sock")
    tracer = subprocess.Popen(LABKIT + ["trace", "--socket", proxy, "--upstream", engine.socket_path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not dockerd.ping(proxy):
            assert tracer.poll() is None and time.monotonic() < deadline, tracer.stderr.read()
            time.sleep(0.05)
        assert stat.S_IMODE(os.stat(proxy).st_mode) == 0o600
        result = dockerd.docker("run", "--rm", IMAGE, "echo", "via proxy", host=proxy, check=False)
        assert (result.returncode, result.stdout) == (0, b"via proxy\n")
        time.sleep(0.3)
    finally:
        tracer.send_signal(signal.SIGTERM)
        out, err = tracer.communicate(timeout=20)
    text = out.decode()
    assert tracer.returncode == 0, err
    for words in ("/containers/create", "-> 201", "/attach", "-> 101", "/start", "-> 204", "/wait"):
        assert words in text, text
    assert not os.path.exists(proxy)


@needs_docker_cli
def test_leftover_docker_container_of_a_dead_owner_is_swept(real_docker):
    daemon, image = real_docker
    name = cleanup.unique_name("orphan")
    dead_pid = subprocess.Popen(["true"])    # a pid that no longer runs: the owner "died"
    dead_pid.wait()
    cleanup.claim("docker-container", name, pid=dead_pid.pid)
    created = daemon.docker("create", "--network", "none", "--name", name, image, "true", check=False)
    assert created.returncode == 0, created.stderr
    # Another labkit process may sweep it first (its owner is dead): then it is simply gone.
    found = [i for i in cleanup.find_all() if i.kind == "docker-container" and i.name == name]
    present = name in [c["name"] for c in dockerd.labkit_objects()["containers"]]
    # (its record may be gone already too: another process's sweep saw a dead owner's record first)
    assert (found and found[0].owner_pid in (dead_pid.pid, None) and not found[0].owner_alive) or not present
    deadline = time.monotonic() + 20
    while name in [c["name"] for c in dockerd.labkit_objects()["containers"]] and time.monotonic() < deadline:
        cleanup.sweep()
        time.sleep(0.2)
    assert name not in [c["name"] for c in dockerd.labkit_objects()["containers"]]
    assert daemon.docker("inspect", name, check=False).returncode != 0      # Docker itself says: gone


# --- the notebook's exercise checker ------------------------------------------------------------------

@needs_docker_cli
def test_exercise_checker_reads_the_limit_the_kernel_enforces(engine):
    from labkit.engine import views

    name = cleanup.unique_name("mystery")
    assert docker(engine, "run", "-d", "--name", name, "--memory", "48m", IMAGE, "sleep", "60").returncode == 0
    try:
        pid = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]
        assert views.memory_limit(pid) == 48 * 2**20
        assert views.check_memory_limit(pid, str(48 * 2**20))[0]
        correct, why = views.check_memory_limit(pid, "48")
        assert not correct and "MiB" in why
        assert not views.check_memory_limit(pid, str(64 * 2**20))[0]
    finally:
        docker(engine, "rm", "--force", name)
    assert "gone" in views.check_memory_limit(pid, "1")[1]


@needs_docker_cli
@pytest.mark.parametrize("args, feature", [
    (["history", IMAGE], "docker history"),            # 404 would print "No such image" for an image that exists
    (["network", "ls"], "docker network ls"),
    (["volume", "create"], "docker volume create"),
])
def test_a_docker_command_the_engine_lacks_says_so_instead_of_no_such(engine, args, feature):
    result = docker(engine, *args)
    assert result.returncode != 0
    assert f"labkit's engine does not implement {feature}".encode() in result.stderr, result.stderr
    assert b"No such" not in result.stderr


@needs_docker_cli
def test_docker_inspect_of_a_name_that_is_nothing_says_no_such_object_as_dockerd(engine):
    """`docker inspect NAME` tries a container, an image, a network, a volume, a plugin; it skips a kind
    whose lookup is a 404 or "not supported" - so the engine's 501s for networks, volumes and plugins must
    not end the search with their message."""
    result = docker(engine, "inspect", "labkit-nothing-by-this-name")
    assert result.returncode != 0
    assert b"No such object: labkit-nothing-by-this-name" in result.stderr, result.stderr
    assert b"does not implement" not in result.stderr
