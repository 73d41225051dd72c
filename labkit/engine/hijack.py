"""The hijacked connection of attach and exec: after '101 UPGRADED' the socket is no longer HTTP
but bytes both ways - the client's keystrokes in, the process's output out.

Without a terminal, output goes out as multiplexed frames (`streams.frame`); with one (-t) the
pty's bytes go out raw, as a terminal would show them. When the client has no more input it
half-closes the connection (shutdown(SHUT_WR)): the process's stdin gets end-of-file, and its
output keeps coming until it exits. The engine then half-closes its side, and the CLI returns.
"""
from __future__ import annotations

import errno
import os
import selectors
import socket

from . import streams, wire


def upgrade(h) -> None:
    """Answer the request with 101 (or 200 for a client that did not ask to upgrade)."""
    h.close_connection = True
    if "upgrade" in wire.header(list(h.headers.items()), "Connection").lower():
        h.send_response(101, "UPGRADED")
        h.send_header("Content-Type", streams.RAW)     # what dockerd 20.10 says; the CLI decides by Tty
        h.send_header("Connection", "Upgrade")
        h.send_header("Upgrade", "tcp")
    else:
        h.send_response(200)
        h.send_header("Content-Type", streams.RAW)
        h.send_header("Connection", "close")
    h.end_headers()
    h.wfile.flush()


def pending_input(h) -> bytes | None:
    """Bytes the client sent right after its request that already sit in the handler's read buffer
    (None when there are none; end-of-file is left for the socket to tell)."""
    sock = h.connection
    sock.setblocking(False)
    try:
        buffered = h.rfile.peek(1)          # with the socket non-blocking: never waits
        return h.rfile.read1(len(buffered)) if buffered else None
    except (BlockingIOError, ValueError, OSError):
        return None
    finally:
        sock.setblocking(True)


def send_error(sock: socket.socket, message: str, tty: bool) -> None:
    """After the upgrade an error can only travel in the stream: on stderr, as dockerd writes it."""
    data = message.encode() + b"\r\n"
    try:
        sock.sendall(data if tty else streams.frame(streams.STDERR, data))
    except OSError:
        pass


def end(sock: socket.socket) -> None:
    """End of the output: the client's copy loop sees end-of-file."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def pump(h, outputs: dict[int, int], stdin_fd: int | None, tty: bool) -> None:
    """Copy until every output descriptor has ended: `outputs` {fd: stream number} out to the client
    (framed, or raw with a tty), and the client's bytes into `stdin_fd` (None: read and dropped).

    With a tty the output fd is the pty master: reading it fails with EIO once the command and all
    its children have closed the terminal - that is its end-of-file."""
    sock = h.connection
    first = pending_input(h)
    if first:
        _write_all(stdin_fd, first)
    with selectors.DefaultSelector() as selector:
        for fd in outputs:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(sock, selectors.EVENT_READ)
        live = set(outputs)
        while live:
            for key, _ in selector.select():
                if key.fileobj is sock:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        _write_all(stdin_fd, data)
                        continue
                    selector.unregister(sock)               # half-closed: stdin ends
                    if stdin_fd is not None and not tty:
                        os.close(stdin_fd)
                        stdin_fd = None
                    continue
                fd = key.fileobj
                try:
                    data = os.read(fd, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    selector.unregister(fd)
                    live.discard(fd)
                    continue
                try:
                    sock.sendall(data if tty else streams.frame(outputs[fd], data))
                except OSError:                               # the client went away
                    return
    if stdin_fd is not None and not tty:
        os.close(stdin_fd)


def _write_all(fd: int | None, data: bytes) -> None:
    if fd is None:
        return
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:             # the process stopped reading: drop the rest
        pass
