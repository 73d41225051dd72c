"""The endpoints whose connection is hijacked - attach and exec - and the terminal resizes that
go with them: the client's input one way, the process's output the other (see `hijack`).

    docker run -i/-t, docker attach    POST /containers/ID/attach      (+ POST /containers/ID/resize)
    docker exec                        POST /containers/ID/exec, POST /exec/ID/start, GET /exec/ID/json
                                       (+ POST /exec/ID/resize)
"""
from __future__ import annotations

import threading

from ..errors import InvalidValue, NotFound
from . import execs, hijack, streams, wire
from .requests import flag, parse_json_body

def attach(h, m, q):
    """The connection is hijacked: after '101 UPGRADED' it carries the container's output - frames,
    or raw bytes with a terminal - and, with stdin=1, the client's input the other way.

    The CLI attaches BEFORE it starts the container, so nothing the container writes is lost;
    the stream ends when the container exits.
    """
    record = h.engine.get(m["id"])
    if flag(q, "stdin") and not record.spec.open_stdin:
        raise InvalidValue("attach stdin", "stdin=1", "a container created with -i (OpenStdin)")
    # A client that hangs up (killed: its end closed) ends the stream and frees this thread; a
    # half-close only ends its input, the output goes on until the container exits.
    gone = lambda: wire.client_hung_up(h.connection)          # noqa: E731
    entries = h.engine.output(m["id"], stdout=flag(q, "stdout"), stderr=flag(q, "stderr"),
                              until_exit=flag(q, "stream"), replay=flag(q, "logs"), is_gone=gone)
    hijack.upgrade(h)
    if flag(q, "stdin"):
        first = hijack.pending_input(h)          # before the output starts: it toggles blocking mode
        threading.Thread(target=_feed_stdin, args=(h.engine, record, h.connection, first),
                         name=f"{record.name}-stdin", daemon=True).start()
    try:
        for _, stream, data in entries:
            h.wfile.write(data if record.spec.tty else streams.frame(stream, data))
    finally:
        hijack.end(h.connection)


def _feed_stdin(engine, record, sock, first: bytes | None) -> None:
    """The client's bytes into the container until it half-closes; then, with StdinOnce (docker run
    -i sets it), the container's stdin gets end-of-file."""
    data = first
    try:
        while True:
            if data:
                engine.write_stdin(record.id, data)
            data = sock.recv(65536)
            if not data:
                break
    except (OSError, NotFound):
        return
    if record.spec.stdin_once:
        try:
            engine.close_stdin(record.id)
        except NotFound:
            pass


def resize(h, m, q):
    h.engine.resize(m["id"], *_size(q))
    h.send_empty(200)


def exec_create(h, m, q):
    record = h.engine.exec_create(m["id"], parse_json_body(h.body))
    h.send_json(201, {"Id": record.id})


def exec_start(h, m, q):
    """Output (and input) on the hijacked connection until the process exits; the exit status is
    recorded before the stream ends, so the CLI's inspect right after sees it. A command that
    cannot start is reported in the stream (the connection is upgraded already), exit status
    127 when it does not exist, 126 otherwise - as a shell says it."""
    body = parse_json_body(h.body)
    record = h.engine.execs.get(m["id"])                       # 404 before the upgrade
    h.engine.get(record.container_id)
    if body.get("Detach"):
        record, process, stdin_fd, outputs, master = h.engine.exec_start(m["id"])
        for fd in set(outputs) | ({stdin_fd} if stdin_fd is not None else set()):
            execs.close_quietly(fd)
        threading.Thread(target=h.engine.exec_finish, args=(record, process), daemon=True).start()
        h.send_empty(200)
        return
    hijack.upgrade(h)
    try:
        record, process, stdin_fd, outputs, master = h.engine.exec_start(m["id"])
    except Exception as exc:  # noqa: BLE001 - after the upgrade, errors travel in the stream
        hijack.send_error(h.connection, f"labkit engine: exec failed: {exc}", record.tty)
        hijack.end(h.connection)
        return
    try:
        hijack.pump(h, outputs, stdin_fd if record.stdin else None, tty=record.tty)
    finally:
        for fd in set(outputs) | ({stdin_fd} if stdin_fd is not None and not record.stdin else set()):
            execs.close_quietly(fd)
        h.engine.exec_finish(record, process)
        hijack.end(h.connection)


def exec_inspect(h, m, q):
    h.send_json(200, execs.inspect(h.engine.execs.get(m["id"])))


def _size(q) -> tuple[int, int]:
    rows, columns = q.get("h", ""), q.get("w", "")
    if not (rows.isdigit() and columns.isdigit()) or not 0 < int(rows) < 65536 or not 0 < int(columns) < 65536:
        raise InvalidValue("terminal size", f"h={rows}&w={columns}", "h and w: numbers from 1 to 65535")
    return int(rows), int(columns)


def exec_resize(h, m, q):
    h.engine.exec_resize(m["id"], *_size(q))
    h.send_empty(200)
