"""A wire tracer: a unix-socket proxy in front of a Docker API that records every call going through.

Point the docker CLI at the proxy (``DOCKER_HOST=unix://PROXY``) and every HTTP request it makes to
the daemon - and every answer - passes through here byte for byte, and is written down as a `Call`:
method, path, status, when it was sent, when the answer began and when it ended, and a short
summary of both bodies. Streams are followed too: a chunked answer that trickles in (``/wait``), and
a hijacked connection (``/attach``: ``101 Switching Protocols``, then raw multiplexed frames).

    with Tracer(upstream="/var/run/docker.sock") as tracer:
        tracer.docker("run", "--rm", "--network", "none", image, "echo", "hello")
    for call in tracer.calls:
        print(call)

From the shell: ``labkit trace --socket /tmp/proxy.sock --upstream /var/run/docker.sock``.
"""
from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from .. import cleanup, host
from . import streams, wire

KEEP = 64 * 1024            # body bytes kept per call for the summary (the rest is only counted)
_VERSION = re.compile(r"^/v\d+\.\d+(?=/)")
_LONG_ID = re.compile(r"(?<=/)[0-9a-f]{64}(?=/|$|\?)")


@dataclass
class Call:
    """One request and its answer, as seen on the wire."""

    seq: int                          # order in which requests arrived
    connection: int                   # which client connection carried it
    method: str
    target: str                       # path and query as sent, e.g. /v1.41/containers/create?name=x
    started: float                    # seconds since the tracer started: request headers complete
    request_headers: list = field(default_factory=list)
    request_body: bytes = b""
    status: int | None = None
    reason: str = ""
    answered: float | None = None     # answer's headers seen
    finished: float | None = None     # answer's body (or the hijacked stream) ended
    response_headers: list = field(default_factory=list)
    response_body: bytes = b""
    response_bytes: int = 0           # whole body (or stream) size, even beyond what was kept
    upgraded: bool = False            # 101: the connection became a raw stream
    sent_upstream: int = 0            # bytes the client sent on a hijacked connection

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict:
        return dict(parse_qsl(urlsplit(self.target).query, keep_blank_values=True))

    @property
    def endpoint(self) -> str:
        """The path without its API version, ids and names replaced: ``/containers/{id}/start``."""
        path = _VERSION.sub("", self.path)
        parts = path.split("/")
        if len(parts) > 2 and parts[1] in ("containers", "images", "exec", "networks", "volumes") \
                and parts[2] not in ("create", "json", "prune", "load", "search", "get"):
            parts[2] = "{id}" if parts[1] != "images" else "{name}"
        return "/".join(parts)

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    @property
    def content_type(self) -> str:
        return wire.header(self.response_headers, "Content-Type")

    def output(self) -> tuple[bytes, bytes]:
        """(stdout, stderr) carried by a multiplexed answer (logs, attach), as far as it was kept."""
        demuxer = streams.Demuxer()
        try:
            frames = demuxer.feed(self.response_body)
        except ValueError:
            return self.response_body, b""
        out = b"".join(p for s, p in frames if s != streams.STDERR)
        err = b"".join(p for s, p in frames if s == streams.STDERR)
        return out, err

    def request_summary(self) -> str:
        return _summarize(self.request_body, wire.header(self.request_headers, "Content-Type"))

    def response_summary(self) -> str:
        if self.upgraded or self.content_type in (streams.MULTIPLEXED, streams.RAW):
            out, err = self.output()
            parts = [f"{name}={data[:60].decode(errors='replace')!r}"
                     for name, data in (("stdout", out), ("stderr", err)) if data]
            kind = "hijacked stream" if self.upgraded else "stream"
            return f"{kind}, {self.response_bytes} bytes" + (": " + ", ".join(parts) if parts else "")
        return _summarize(self.response_body, self.content_type)

    def __str__(self) -> str:
        took = f"{self.duration * 1000:7.1f} ms" if self.duration is not None else "   open   "
        target = _LONG_ID.sub(lambda m: m.group(0)[:12], self.target)     # ids as `docker ps` shows them
        return f"{self.started * 1000:8.1f} ms {took}  {self.method:<6} {target:<55} -> " \
               f"{self.status or '...'}  {self.response_summary()}"


def _summarize(body: bytes, content_type: str, width: int = 100) -> str:
    if not body:
        return ""
    if "json" in content_type or body[:1] in (b"{", b"["):
        try:
            text = json.dumps(json.loads(body), separators=(",", ":"))
        except ValueError:
            text = body.decode(errors="replace")
    else:
        text = body.decode(errors="replace")
    text = text.strip()
    return text if len(text) <= width else text[:width - 3] + "..."


class _Proxy(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


class Tracer:
    """A recording proxy on its own unix socket in front of `upstream` (a Docker API socket)."""

    def __init__(self, upstream: str = "/var/run/docker.sock", socket_path: str | None = None):
        self.upstream = upstream
        self.name = cleanup.unique_name("trace")
        self.socket_path = socket_path or str(cleanup.STATE_DIR / "engine" / f"{self.name}.sock")
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _Proxy | None = None
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> "Tracer":
        from . import registry

        host.require_lab_host("run the Docker API tracer")
        if not os.path.exists(self.upstream):
            from ..errors import NotFound
            raise NotFound(f"upstream socket {self.upstream} does not exist: is the daemon running?")
        wire.clear_stale_socket(self.socket_path)   # never a regular file, nor a live docker.sock
        registry.register(self.name, self.socket_path, role="trace")
        try:
            os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
            tracer = self

            class Handler(socketserver.BaseRequestHandler):
                def handle(self):
                    tracer._serve_connection(self.request)

            old_umask = os.umask(0o177)          # the socket is born 0600: root only, like dockerd's
            try:
                self._server = _Proxy(self.socket_path, Handler)
            finally:
                os.umask(old_umask)
        except BaseException:
            registry.unregister(self.name)
            raise
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name=self.name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        from . import registry

        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._server = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        registry.unregister(self.name)

    def __enter__(self) -> "Tracer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what the notebook uses -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return sorted(self._calls, key=lambda c: c.seq)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
        self._t0 = time.monotonic()

    def docker(self, *args: str, timeout: float = 60, check: bool = False):
        """Run the docker CLI through this tracer; returns the CompletedProcess."""
        from .. import dockerd

        return dockerd.docker(*args, host=self.url, timeout=timeout, check=check)

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every recorded call has finished (a stream may end just after the CLI exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(c.finished is None for c in self.calls):
            time.sleep(0.02)

    def table(self) -> str:
        return "\n".join(str(c) for c in self.calls)

    # --- the proxy --------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _serve_connection(self, client: socket.socket) -> None:
        """Relay one client connection: requests one after another, each answer streamed back."""
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.upstream)
        except OSError:
            client.close()
            upstream.close()
            return
        with self._lock:
            self._connections.update((client, upstream))
        connection_id = id(client)
        client_in, upstream_in = client.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                head = wire.read_head(client_in)
                if head is None:
                    return
                first_line, headers, raw = head
                method, target = first_line.split(" ")[:2]
                with self._lock:            # numbered and recorded at once: connections run in parallel
                    call = Call(len(self._calls), connection_id, method, target, self._now(), headers)
                    self._calls.append(call)
                upstream.sendall(raw)
                framing = wire.body_framing(headers, is_request=True)
                kept = bytearray()
                for piece in wire.iter_body(client_in, framing, headers, raw=True):
                    upstream.sendall(piece)
                    if len(kept) < KEEP:
                        kept += piece
                call.request_body = wire.unchunk(bytes(kept), framing)
                if not self._relay_answer(call, client, client_in, upstream, upstream_in):
                    return
        except (OSError, wire.ConnectionClosed, ValueError):
            return
        finally:
            with self._lock:
                self._connections.difference_update((client, upstream))
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass

    def _relay_answer(self, call: Call, client, client_in, upstream, upstream_in) -> bool:
        """Stream the answer to `call` back to the client; False when the connection is over."""
        head = wire.read_head(upstream_in)
        if head is None:
            return False
        status_line, headers, raw = head
        parts = status_line.split(" ", 2)
        call.status, call.reason = int(parts[1]), (parts[2] if len(parts) > 2 else "")
        call.response_headers, call.answered = headers, self._now()
        client.sendall(raw)
        framing = wire.body_framing(headers, is_request=False, method=call.method, status=call.status)
        kept = bytearray()
        if framing == "upgrade":
            # A hijacked connection: no more HTTP, raw bytes both ways until both sides close.
            call.upgraded = True
            pump = threading.Thread(target=self._pump_to_upstream, args=(call, client_in, upstream),
                                    daemon=True)
            pump.start()
            pieces = iter(lambda: upstream_in.read1(65536), b"")
        else:
            pieces = wire.iter_body(upstream_in, framing, headers, raw=True)
        try:
            for piece in pieces:
                call.response_bytes += len(piece)      # recorded first: a client may hang up as soon as
                if len(kept) < KEEP:                   # it has what it needs (the CLI exits on /wait's
                    kept += piece                      # JSON, before the last, empty chunk)
                    call.response_body = wire.unchunk(bytes(kept), framing)
                client.sendall(piece)
        finally:
            call.finished = self._now()
        if framing in ("upgrade", "close"):
            try:
                client.shutdown(socket.SHUT_WR)     # tell the client the stream ended
            except OSError:
                pass
            if framing == "upgrade":
                pump.join(timeout=1.0)
            return False
        return "close" not in wire.header(headers, "Connection").lower()

    @staticmethod
    def _pump_to_upstream(call: Call, client_in, upstream) -> None:
        """Client -> daemon half of a hijacked connection (stdin, when attached)."""
        try:
            for piece in iter(lambda: client_in.read1(65536), b""):
                upstream.sendall(piece)
                call.sent_upstream += len(piece)
            upstream.shutdown(socket.SHUT_WR)       # the client closed its side: pass it on
        except (OSError, ValueError):
            pass


def serve(socket_path: str, upstream: str, out=None) -> None:
    """`labkit trace`: run the proxy in the foreground and print each call when it has finished."""
    import signal
    import sys

    out = out or sys.stdout
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Tracer(upstream=upstream, socket_path=socket_path) as tracer:
        print(f"labkit trace: listening on {tracer.socket_path}, forwarding to {upstream}", file=out)
        print(f"  export DOCKER_HOST={tracer.url}", file=out, flush=True)
        printed: set[int] = set()
        try:
            while not stop.is_set():
                for call in tracer.calls:       # each call once, when its answer has ended
                    if call.finished is not None and call.seq not in printed:
                        print(call, file=out, flush=True)
                        printed.add(call.seq)
                stop.wait(0.05)
        except KeyboardInterrupt:
            pass
