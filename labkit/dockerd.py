"""The real Docker daemon, started by hand when the lab needs it, and a local image made from a rootfs.

Where no init system started `dockerd` (PID 1 is not systemd, or the service is stopped), nothing
answers on /var/run/docker.sock. `Dockerd()` is a context manager that makes sure a daemon answers there:

- if one already answers, it is used and never stopped (it is not ours);
- otherwise labkit starts one, with flags that keep it off the host's network:
  ``--bridge=none`` (no docker0 bridge, so no container can get a route out),
  ``--iptables=false --ip-forward=false --ip-masq=false`` (no firewall or forwarding changes), and
  stops it again when the last labkit process using it leaves.

Every real Docker container the lab runs uses ``--network none`` as well: with no bridge, the
default network does not even exist, so a forgotten flag fails instead of reaching out.

The client is Debian's ``/usr/bin/docker`` (20.10, API 1.41), the one that matches the daemon;
a newer client elsewhere on PATH would negotiate down to 1.41 anyway, but the lab shows the
pair that belongs together.

No registry is reachable here, so images come from a root filesystem on disk:
``tar -C ROOTFS -c . | docker import - NAME`` (see `import_rootfs`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from . import cleanup, host
from .errors import LabkitError, NotFound, Unsupported

SOCKET = "/var/run/docker.sock"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
# Flags that keep the daemon off the host's network (see the module docstring).
DOCKERD_FLAGS = ("--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false")

STATE = cleanup.STATE_DIR / "dockerd"
STARTED_FILE = STATE / "started"     # "PID STARTTIME" of a dockerd labkit started
USERS_DIR = STATE / "users"          # one file per live labkit process using the daemon
LOG_FILE = STATE / "dockerd.log"
CGROUPS_BEFORE = STATE / "cgroups-before"   # docker cgroups that existed before labkit started dockerd
NAME = "labkit-dockerd"              # how the sweep reports a dockerd labkit started


def available() -> bool:
    """Is Docker installed (daemon and client)?"""
    return os.path.exists(DOCKERD) and os.path.exists(DOCKER)


def ping(socket: str = SOCKET, timeout: float = 2.0) -> bool:
    """Does a Docker API answer GET /_ping with OK on this unix socket?"""
    from .engine.wire import UnixHTTPConnection

    if not os.path.exists(socket):
        return False
    try:
        conn = UnixHTTPConnection(socket, timeout=timeout)
        conn.request("GET", "/_ping")
        response = conn.getresponse()
        ok = response.status == 200 and response.read() == b"OK"
        conn.close()
        return ok
    except OSError:
        return False


def docker(*args: str, host: str | None = None, input: bytes | None = None, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run the docker CLI (Debian's, matching the daemon) against `host` (a unix socket path or URL)."""
    env = dict(os.environ)
    env.pop("DOCKER_CONTEXT", None)
    if host:
        env["DOCKER_HOST"] = host if "://" in host else f"unix://{host}"
    result = subprocess.run([DOCKER, *args], input=input, capture_output=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise LabkitError(f"docker {' '.join(args)} failed ({result.returncode}): "
                          f"{result.stderr.decode(errors='replace').strip()}")
    return result


# --- who started the daemon, who uses it --------------------------------------------------------

@contextlib.contextmanager
def locked():
    """Serialize start/stop decisions between labkit processes (tests and notebooks run at once)."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int, started: str) -> bool:
    return cleanup.start_time(pid) == started


def started_by_labkit() -> int | None:
    """Pid of the dockerd labkit started, if it is still that process; else None."""
    try:
        pid_text, started = STARTED_FILE.read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid_text) if _alive(int(pid_text), started) else None


def users() -> list[tuple[int, bool, Path]]:
    """(pid, alive, record) of every labkit process that said it uses the daemon."""
    found = []
    if USERS_DIR.is_dir():
        for record in sorted(USERS_DIR.iterdir()):
            try:
                pid_text, started = record.read_text().split()
            except (OSError, ValueError):
                continue
            found.append((int(pid_text), _alive(int(pid_text), started), record))
    return found


def live_users() -> list[int]:
    """Pids of labkit processes that use the daemon now."""
    return [pid for pid, alive, _ in users() if alive]


def _add_user() -> Path:
    # From here on this process has a share in a daemon: like a claim, that needs its watchdog, which
    # stops a labkit-started dockerd once its last user has died (a notebook killed outright).
    cleanup.ensure_watchdog()
    USERS_DIR.mkdir(parents=True, exist_ok=True)
    record = USERS_DIR / f"{os.getpid()}-{secrets.token_hex(4)}"      # one per Dockerd() in use
    record.write_text(f"{os.getpid()} {cleanup.start_time(os.getpid())}\n")
    return record


# --- start and stop -----------------------------------------------------------------------------

def _start(timeout: float) -> int:
    """Start dockerd in its own session (it outlives a killed notebook; the sweep stops it then)."""
    if not available():
        raise Unsupported("Docker is not installed: apt-get install docker.io")
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    # dockerd makes a `docker` cgroup in every hierarchy; note which were there before, so that
    # stopping it removes only the ones it added (empty by then).
    CGROUPS_BEFORE.write_text("\n".join(str(p) for p in _docker_cgroups()))
    with open(LOG_FILE, "ab") as log:
        proc = subprocess.Popen([DOCKERD, *DOCKERD_FLAGS, f"--host=unix://{SOCKET}"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    STARTED_FILE.write_text(f"{proc.pid} {cleanup.start_time(proc.pid)}\n")
    deadline = time.monotonic() + timeout
    while not ping():
        if proc.poll() is not None:
            STARTED_FILE.unlink(missing_ok=True)
            raise LabkitError(f"dockerd exited with status {proc.returncode}; see {LOG_FILE}")
        if time.monotonic() > deadline:
            stop(proc.pid)
            raise LabkitError(f"dockerd did not answer on {SOCKET} within {timeout:.0f} s; see {LOG_FILE}")
        time.sleep(0.1)
    return proc.pid


def _docker_cgroups() -> list[Path]:
    return sorted(p for p in Path("/sys/fs/cgroup").glob("*/docker") if p.is_dir()) + \
        ([Path("/sys/fs/cgroup/docker")] if Path("/sys/fs/cgroup/docker").is_dir() else [])


def _remove_added_cgroups() -> None:
    try:
        before = set(CGROUPS_BEFORE.read_text().split("\n"))
    except FileNotFoundError:
        return
    for path in _docker_cgroups():
        if str(path) not in before:
            with contextlib.suppress(OSError):      # EBUSY: not empty - then it is not ours to take
                path.rmdir()
    CGROUPS_BEFORE.unlink(missing_ok=True)


def stop(pid: int, timeout: float = 20) -> None:
    """Stop the dockerd labkit started (SIGTERM: it stops its containers and its containerd)."""
    containerd_pidfile = Path("/var/run/docker/containerd/containerd.pid")
    containerd = int(containerd_pidfile.read_text()) if containerd_pidfile.exists() else None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)      # reap it if it is our child
        time.sleep(0.1)
    if os.path.exists(f"/proc/{pid}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # a SIGKILLed dockerd leaves the containerd it managed behind: that one is ours too
        if containerd and "containerd" in Path(f"/proc/{containerd}/comm").read_text(errors="ignore"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(containerd, signal.SIGTERM)
    STARTED_FILE.unlink(missing_ok=True)
    _remove_added_cgroups()


class Dockerd:
    """A running Docker daemon for the duration of a `with` block.

    >>> with Dockerd() as d:
    ...     d.docker("version")

    `started` tells whether this block started it. On exit the daemon is stopped only if labkit
    started it and no other live labkit process still uses it.
    """

    def __init__(self, timeout: float = 60):
        self.timeout = timeout
        self.started = False
        self._record: Path | None = None

    def __enter__(self) -> "Dockerd":
        return self.start()

    def start(self) -> "Dockerd":
        """Use the running daemon, or start one (a notebook calls this, and `close()` in its cleanup cell)."""
        if self._record is not None:
            return self
        host.require_lab_host("start the Docker daemon")
        with locked():
            # a user first, then the daemon: a sweep never sees a labkit dockerd that nobody uses
            self._record = _add_user()
            try:
                if not ping():
                    _start(self.timeout)
                    self.started = True
            except BaseException:
                self._record.unlink(missing_ok=True)
                self._record = None
                raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._record is None:
            return
        with locked():
            self._record.unlink(missing_ok=True)
            self._record = None
            pid = started_by_labkit()
            if pid and not live_users():
                stop(pid)

    socket = SOCKET

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return docker(*args, host=SOCKET, **kwargs)


# --- a local image from a root filesystem --------------------------------------------------------

def import_rootfs(rootfs: str | os.PathLike, name: str | None = None, host: str = SOCKET) -> str:
    """`tar -C ROOTFS -c . | docker import - NAME:latest`; returns NAME:latest (claimed by this process).

    The default name is unique (``labkit-busybox-1a2b3c``) so two labkit processes never remove
    each other's image.
    """
    rootfs = Path(rootfs)
    if not (rootfs / "bin").is_dir():
        raise NotFound(f"root filesystem {rootfs}: it has no bin/ directory")
    repo = name or cleanup.unique_name("busybox")
    cleanup.claim("docker-image", repo)
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
    try:
        docker("import", "-", f"{repo}:latest", host=host, input=tar.stdout, timeout=120)
    except LabkitError:
        cleanup.release("docker-image", repo)
        raise
    return f"{repo}:latest"


def remove_image(ref: str, host: str = SOCKET) -> None:
    """`docker rmi REF` and forget its owner record."""
    docker("rmi", "--force", ref, host=host, check=False)
    cleanup.release("docker-image", ref.split(":")[0])


def labkit_objects(host: str = SOCKET) -> dict:
    """Docker containers and images whose names start with labkit-, read from the daemon's API."""
    from .engine.wire import UnixHTTPConnection

    found = {"containers": [], "images": []}
    if not ping(host):
        return found
    conn = UnixHTTPConnection(host, timeout=10)
    conn.request("GET", "/containers/json?all=1")
    for c in json.loads(conn.getresponse().read()):
        names = [n.lstrip("/") for n in c.get("Names") or []]
        found["containers"] += [{"name": n, "id": c["Id"], "state": c.get("State")}
                                for n in names if n.startswith(cleanup.PREFIX)]
    conn.request("GET", "/images/json")
    for image in json.loads(conn.getresponse().read()):
        for tag in image.get("RepoTags") or []:
            if tag.startswith(cleanup.PREFIX):
                found["images"].append({"name": tag.split(":")[0], "tag": tag, "id": image["Id"]})
    conn.close()
    return found
