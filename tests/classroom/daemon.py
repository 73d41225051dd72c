"""The classroom stage's own Docker daemon: learner containers without touching anyone else's dockerd.

Why not the shared daemon at /var/run/docker.sock:
- on this lab's CI machines `docker run --privileged` fails (every process lacks CAP_SYS_RESOURCE in
  its bounding set); the fix is a runtime wrapper (runc_capfit.py), and registering a runtime means
  configuring a daemon - this one, which only this stage uses, not a daemon other tests rely on;
- the lab image is cached between runs in this daemon's store (/var/cache/labkit/classroom/docker):
  labkit's sweep removes `labkit-` images from the shared daemon whose owner is gone;
- a daemon we start is a daemon we may stop.

It keeps off the host's network like labkit's own dockerd (no docker0, no iptables or forwarding
changes), has its own containerd and containerd namespace, and runs one stage at a time (a lock).
The learners still get Docker's real `--privileged --cgroupns=private` containers (Docker 20.10, the
same binaries); only the runtime wrapper is added, and on a machine with a full bounding set it
changes nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

from labkit import dockerd

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LABKIT_CLASSROOM_CACHE", "/var/cache/labkit/classroom"))
RUN = Path("/run/labkit-classroom")            # short: unix socket paths are limited to 108 bytes
SOCKET = RUN / "docker.sock"
PIDFILE = RUN / "dockerd.pid"
LOG = RUN / "dockerd.log"
RUNTIME = "labkit-capfit"


def say(text: str) -> None:
    print(f"[classroom] {text}", flush=True)


def docker_cgroups() -> set[Path]:
    """The `docker` cgroup (dockerd's default cgroup parent) in every hierarchy, where it exists."""
    return {p for p in Path("/sys/fs/cgroup").glob("*/docker") if p.is_dir()} | \
        {p for p in [Path("/sys/fs/cgroup/docker")] if p.is_dir()}


def _our_dockerd(pid: int) -> bool:
    """Is `pid` a dockerd with this stage's data root (a run killed before it could stop it)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return argv[0].endswith(b"dockerd") and str(CACHE / "docker").encode() in argv


def _stop(pid: int, timeout: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if os.path.exists(f"/proc/{pid}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class OwnDockerd:
    """`with OwnDockerd() as d: d.docker("ps")` - started on enter, stopped on exit, one at a time."""

    def __init__(self, timeout: float = 60):
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._lock = None
        self._cgroups_before: set[Path] = set()

    host = f"unix://{SOCKET}"

    def docker(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """The docker CLI against this daemon; stdout and stderr as text."""
        result = dockerd.docker(*args, host=str(SOCKET), **kwargs)
        result.stdout, result.stderr = (b.decode(errors="replace") for b in (result.stdout, result.stderr))
        return result

    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": self.host}

    def __enter__(self) -> "OwnDockerd":
        CACHE.mkdir(parents=True, exist_ok=True)
        self._lock = open(CACHE / "lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)        # one classroom stage at a time on a machine
        if PIDFILE.exists():
            with contextlib.suppress(ValueError):
                pid = int(PIDFILE.read_text())
                if _our_dockerd(pid):
                    say(f"stopping the dockerd a killed run left (pid {pid})")
                    _stop(pid)
        RUN.mkdir(parents=True, exist_ok=True)
        (RUN / "daemon.json").write_text("{}\n")     # not /etc/docker/daemon.json: nothing shared
        self._cgroups_before = docker_cgroups()
        argv = [dockerd.DOCKERD, *dockerd.DOCKERD_FLAGS, f"--host={self.host}",
                f"--data-root={CACHE / 'docker'}", f"--exec-root={RUN / 'exec'}", f"--pidfile={PIDFILE}",
                f"--config-file={RUN / 'daemon.json'}",
                "--containerd-namespace=labkit-classroom", "--containerd-plugins-namespace=labkit-classroom-plugins",
                f"--add-runtime={RUNTIME}={HERE / 'runc_capfit.py'}", f"--default-runtime={RUNTIME}"]
        with open(LOG, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while not dockerd.ping(str(SOCKET)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the classroom dockerd did not answer on {SOCKET}; see {LOG}")
            time.sleep(0.1)
        say(f"own dockerd pid {self.proc.pid} on {SOCKET} (runtime {RUNTIME} by default)")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop(self.proc.pid)
            self.proc.wait()
            self.proc = None
        # the `docker` cgroups it added, if empty (a shared daemon's are not empty, or were there before)
        for path in docker_cgroups() - self._cgroups_before:
            with contextlib.suppress(OSError):
                path.rmdir()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
