"""labkit's engine as a daemon: the API of `labkit.engine.api` on a unix socket only root can open.

    labkit engine serve --socket /run/labkit/engine.sock
    DOCKER_HOST=unix:///run/labkit/engine.sock docker run --rm labkit-busybox echo hello

Like dockerd's /var/run/docker.sock, the socket is owned by root with mode 0600: whoever can talk
to a container engine can start containers, so only root may. Each connection gets its own thread
(the CLI opens several at once: one waits for the exit while another starts the container).

`EngineProcess()` runs the same server as a child process for a notebook or a test, and stops it -
its containers killed and removed, its socket gone - when the `with` block ends.
"""
from __future__ import annotations

import os
import select
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import cleanup, host
from ..errors import Conflict, InvalidValue, LabkitError
from . import api, images, registry, wire
from .state import Engine


class EngineServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128        # the CLI and the SDK open several connections at once

    def __init__(self, socket_path: str, engine: Engine, verbose: bool = False):
        self.socket_path = os.path.abspath(socket_path)
        wire.clear_stale_socket(self.socket_path)
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        handler = type("EngineHandler", (api.Handler,), {"engine": engine, "verbose": verbose})
        old_umask = os.umask(0o177)       # born 0600: no moment in which others could connect
        try:
            super().__init__(self.socket_path, handler)
        finally:
            os.umask(old_umask)
        if os.geteuid() == 0:
            os.chown(self.socket_path, 0, 0)
        os.chmod(self.socket_path, 0o600)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-conversation is normal (the CLI resets idle connections)."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def parse_image_options(values: list[str] | None) -> dict[str, str]:
    """--image NAME=DIR options -> {NAME: DIR}."""
    found = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InvalidValue("--image", value, "NAME=DIR, e.g. mybox=/srv/rootfs")
        found[name] = path
    return found


def serve(socket_path: str, extra_images: dict[str, str] | None = None, verbose: bool = False,
          ready=None, owner: int | None = None) -> None:
    """Run the engine in the foreground until SIGTERM or SIGINT - or, with `owner`, until that
    process (its parent, EngineProcess's caller) exits; then remove every container it made."""
    host.require_lab_host("run labkit's container engine")
    try:
        Path("/proc/self/comm").write_text("labkit-engine")    # what ps and /proc/PID/comm show
    except OSError:
        pass
    engine = Engine(images.default_store(extra_images))
    server = EngineServer(socket_path, engine, verbose=verbose)
    name = cleanup.unique_name("engine")
    stop = threading.Event()
    registry.register(name, server.socket_path, role="engine")
    try:
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=server.serve_forever, name="engine-api", daemon=True)
        thread.start()
        if owner is not None:
            _stop_when_gone(owner, stop)
        if ready:
            ready(server.socket_path, engine)
        while not stop.is_set():
            stop.wait(0.5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    finally:
        server.shutdown()
        engine.shutdown()               # every container killed, its cgroup, mounts and dirs gone
        server.server_close()
        try:
            os.unlink(server.socket_path)
        except FileNotFoundError:
            pass
        registry.unregister(name)


class EngineProcess:
    """`labkit engine serve` as a child process, for the length of a `with` block.

        with EngineProcess() as engine:
            subprocess.run(["docker", "-H", engine.url, "run", "--rm", "labkit-busybox", "echo", "hi"])
    """

    def __init__(self, socket_path: str | None = None, images: dict[str, str] | None = None,
                 timeout: float = 60):
        self.name = cleanup.unique_name("engine")
        self.socket_path = socket_path or str(registry.RECORDS / f"{self.name}.sock")
        self.images = images or {}
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.log_path = registry.RECORDS / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> "EngineProcess":
        from .. import dockerd

        host.require_lab_host("run labkit's container engine")
        argv = [sys.executable, "-m", "labkit.cli", "engine", "serve", "--socket", self.socket_path,
                "--owner", str(os.getpid())]
        for name, path in self.images.items():
            argv += ["--image", f"{name}={path}"]
        registry.RECORDS.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # --owner: if this (notebook) process dies, the engine stops and cleans up after itself
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self.timeout
        while not dockerd.ping(self.socket_path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_text = self.log()
                self.stop()
                raise LabkitError(f"labkit engine did not come up on {self.socket_path}:\n{log_text}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        Path(self.log_path).unlink(missing_ok=True)

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def docker(self, *args: str, **kwargs):
        """Run Debian's docker CLI against this engine."""
        from .. import dockerd

        return dockerd.docker(*args, host=self.url, **kwargs)


def _stop_when_gone(owner: int, stop: threading.Event) -> None:
    """Set `stop` when process `owner` exits, watched through a pidfd. (Not PR_SET_PDEATHSIG: that
    follows the *thread* that forked us, and a notebook or a test may start the engine from a thread
    that ends long before the process does; nor a preexec_fn, which runs Python between fork and
    exec in a threaded process.)"""
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        stop.set()
        return
    if os.getppid() != owner:       # it died before we looked, and its pid may be another's now
        os.close(pidfd)
        stop.set()
        return

    def wait():
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll()
        stop.set()
    threading.Thread(target=wait, name="engine-owner", daemon=True).start()
