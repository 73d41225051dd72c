"""HTTP/1.1 on a unix socket, as Docker speaks it: just enough framing for a server, a client and a proxy.

The Docker Engine API is plain HTTP/1.1 carried over /var/run/docker.sock instead of TCP. Three
ways a body can end matter here:

- ``Content-Length: N`` - N bytes follow (most requests and short answers);
- ``Transfer-Encoding: chunked`` - hex size, CRLF, bytes, CRLF, ..., a zero-size chunk ends it
  (answers that stream: /wait sends its headers at once and its body when the container exits;
  /logs?follow=1 sends output as it comes);
- ``101 Switching Protocols`` - after the headers, the connection is no longer HTTP at all but a raw
  byte stream in both directions (the "hijacked" connection of /attach).
"""
from __future__ import annotations

import http.client
import os
import socket
import stat

from .. import syscalls
from ..errors import Conflict, InvalidValue


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: ``UnixHTTPConnection('/var/run/docker.sock')``."""

    def __init__(self, path: str, timeout: float | None = 60):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class ConnectionClosed(Exception):
    """The peer closed the connection between two messages (the normal end of keep-alive)."""


def read_head(rfile) -> tuple[str, list[tuple[str, str]], bytes] | None:
    """Read a request or status line and headers: (first line, [(name, value)], raw bytes).

    None when the connection closed cleanly before a new message began.
    """
    raw = bytearray()
    first = rfile.readline(65537)
    if not first:
        return None
    raw += first
    headers = []
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionClosed("connection closed inside the headers")
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return first.decode("latin-1").rstrip("\r\n"), headers, bytes(raw)


def header(headers: list[tuple[str, str]], name: str, default: str = "") -> str:
    """Value of the first header called `name` (case-insensitive)."""
    for key, value in headers:
        if key.lower() == name.lower():
            return value
    return default


def body_framing(headers, *, is_request: bool, method: str = "", status: int = 0) -> str:
    """How the body after these headers ends: 'none', 'length', 'chunked', 'upgrade' or 'close'."""
    if not is_request:
        if status == 101:
            return "upgrade"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return "none"
    if "chunked" in header(headers, "Transfer-Encoding").lower():
        return "chunked"
    if header(headers, "Content-Length"):
        return "length"
    return "none" if is_request else "close"


def iter_body(rfile, framing: str, headers, raw: bool = False):
    """Yield the body in pieces as they arrive.

    raw=False yields the payload (chunk framing removed); raw=True yields the exact bytes on the
    wire, which is what a proxy must forward.
    """
    if framing == "length":
        left = int(header(headers, "Content-Length"))
        while left > 0:
            piece = rfile.read1(min(left, 65536)) if hasattr(rfile, "read1") else rfile.read(min(left, 65536))
            if not piece:
                raise ConnectionClosed("connection closed inside a body")
            left -= len(piece)
            yield piece
    elif framing == "chunked":
        while True:
            size_line = rfile.readline(1024)
            if not size_line:
                raise ConnectionClosed("connection closed inside a chunked body")
            size = parse_chunk_size(size_line)
            if size == 0:
                trailer = bytearray(size_line)
                while True:           # optional trailers, then an empty line
                    line = rfile.readline(65537)
                    trailer += line
                    if line in (b"\r\n", b"\n", b""):
                        break
                if raw:
                    yield bytes(trailer)
                return
            data = rfile.read(size)
            if len(data) < size:
                raise ConnectionClosed("connection closed inside a chunk")
            crlf = rfile.readline(3)
            yield (size_line + data + crlf) if raw else data
    elif framing == "close":
        while True:
            piece = rfile.read1(65536) if hasattr(rfile, "read1") else rfile.read(65536)
            if not piece:
                return
            yield piece


_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_chunk_size(line: bytes) -> int:
    """A chunk-size line: hex digits (then ;extensions), CRLF. Anything else is malformed framing
    (ValueError): a negative, empty or overlong size would desynchronise the connection."""
    if not line.endswith(b"\n"):
        raise ValueError(f"chunk-size line too long or cut: {line[:40]!r}")
    digits = line.split(b";")[0].strip()
    if not digits or len(digits) > 16 or not set(digits) <= _HEX:
        raise ValueError(f"malformed chunk size {digits[:40]!r}")
    return int(digits, 16)


def content_length(headers) -> int | None:
    """The Content-Length header as a number; None without one; ValueError when it is not digits
    or appears twice with different values."""
    values = {value.strip() for key, value in headers if key.lower() == "content-length"}
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise ValueError(f"malformed Content-Length {sorted(values)!r}")
    return int(next(iter(values)))


def read_body(rfile, framing: str, headers) -> bytes:
    return b"".join(iter_body(rfile, framing, headers))


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; chunk(b'') is the terminating zero-size chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def unchunk(raw: bytes, framing: str) -> bytes:
    """The payload of body bytes as they were on the wire (chunk framing removed; tolerates a cut)."""
    if framing != "chunked":
        return raw
    import io

    payload = bytearray()
    try:
        for piece in iter_body(io.BufferedReader(io.BytesIO(raw)), "chunked", []):
            payload += piece
    except (ConnectionClosed, ValueError):
        pass
    return bytes(payload)


def clear_stale_socket(path: str) -> None:
    """Make room for a server's socket at `path`: remove a socket nobody listens on any more (left by
    a dead server); refuse anything else - a regular file, a directory, a live socket such as
    docker.sock - naming it. (labkit runs as root: a blind unlink would delete whatever is there.)"""
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise InvalidValue("socket path", path, "a path that does not exist yet or is a stale socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)                 # nobody answers: left by a dead server
        return
    finally:
        probe.close()
    raise Conflict(f"something is already listening on {path}")

def client_gone(sock: socket.socket) -> bool:
    """Has the peer closed the connection? (readable with nothing to read = EOF)."""
    try:
        return bool(syscalls.readable([sock], 0)) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def client_hung_up(sock: socket.socket) -> bool:
    """Has the peer closed its end completely (exited, killed)? On a unix socket that is POLLHUP;
    a half-close (shutdown(SHUT_WR), which the docker CLI does on attach when it has no more
    input) only sets POLLRDHUP, and the client still reads."""
    import select

    try:
        poller = select.poll()
        poller.register(sock, select.POLLHUP | select.POLLRDHUP)
        return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0))
    except (OSError, ValueError):
        return True
