"""labkit's engine under load and bad input: many clients at once, clients killed mid-request, and
requests whose framing lies. Checked from outside: the CLI's answers, the engine process's threads
and open files in /proc, the kernel objects left (none), the raw bytes on the socket."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from labkit import cleanup, dockerd
from labkit.engine import registry
from engine_cli import IMAGE, docker, engine  # noqa: F401 (engine: the fixture)
from kernel_state import wait_until
from labkit.emulation import scaled

pytestmark = pytest.mark.root


def engine_objects(engine) -> list:
    return [item for item in cleanup.find_all(include_in_use=True)
            if item.owner_pid == engine.pid and item.kind != registry.KIND]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def until(condition) -> bool:
    return wait_until(condition, timeout=30, interval=0.05)


def test_fifty_concurrent_docker_run_rm_all_succeed_and_leave_nothing(engine):
    def one(i):
        result = docker(engine, "run", "--rm", IMAGE, "sh", "-c", f"echo n{i}; exit {i % 5}")
        return result.returncode, result.stdout, result.stderr

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert [(code, out) for code, out, _ in results] == [(i % 5, f"n{i}\n".encode()) for i in range(50)], \
        [err for _, _, err in results if err][:3]
    assert docker(engine, "ps", "-a", "-q").stdout == b""
    assert until(lambda: engine_objects(engine) == []), engine_objects(engine)


def test_killed_wait_and_attach_clients_release_their_connection_and_thread(engine):
    name = cleanup.unique_name("waited")
    assert docker(engine, "run", "-d", "--name", name, IMAGE, "sleep", "600").returncode == 0
    try:
        assert until(lambda: threads(engine.pid) == threads(engine.pid))      # settle
        before_threads = threads(engine.pid)
        before_fds = len(os.listdir(f"/proc/{engine.pid}/fd"))
        env = {**os.environ, "DOCKER_HOST": engine.url}
        clients = [subprocess.Popen([dockerd.DOCKER, *args, name], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for args in (["wait"], ["attach"])]
        assert until(lambda: threads(engine.pid) >= before_threads + 2)       # one handler each
        for client in clients:
            client.send_signal(signal.SIGKILL)
            client.wait()
        assert until(lambda: threads(engine.pid) <= before_threads), (threads(engine.pid), before_threads)
        assert until(lambda: len(os.listdir(f"/proc/{engine.pid}/fd")) <= before_fds)
        assert json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Running"]   # untouched
    finally:
        docker(engine, "rm", "--force", name)


def raw(engine, data: bytes, read_all: bool = True) -> tuple[bytes, bool]:
    """Send raw bytes; (the answer, whether the engine closed the connection after it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(scaled(30))
    sock.connect(engine.socket_path)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        closed = False
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except socket.timeout:
                break
            if not piece:
                closed = True
                break
            answer += piece
            if not read_all and b"\r\n\r\n" in answer:
                break
        return answer, closed
    finally:
        sock.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


CREATE = b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("request_bytes, status", [
    # a chunked body past the limit: refused once it is known too big, and the connection closed
    (CREATE + b"Transfer-Encoding: chunked\r\n\r\n" + (b"100000\r\n" + b"x" * 0x100000 + b"\r\n") * 2 + b"0\r\n\r\n", 413),
    (CREATE + b"Content-Length: 1073741824\r\n\r\n{}", 413),                    # never read, refused
    (CREATE + b"Content-Length: 12abc\r\n\r\n{}", 400),
    (CREATE + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    (CREATE + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    (CREATE + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    (CREATE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    (CREATE + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n{}\r\n0\r\n\r\n", 400),
])
def test_bad_framing_is_refused_and_the_connection_closed(engine, request_bytes, status):
    answer, closed = raw(engine, request_bytes)
    assert status_of(answer) == status, answer[:300]
    assert b'"message"' in answer and closed
    assert dockerd.ping(engine.socket_path)                       # the engine serves on
    assert docker(engine, "ps", "-a", "-q").stdout == b""        # nothing was created


def test_header_count_and_size_are_bounded(engine):
    many = b"GET /v1.41/version HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"
    answer, closed = raw(engine, many)
    assert status_of(answer) in (400, 431) and closed
    huge = b"GET /v1.41/version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    answer, closed = raw(engine, huge)
    assert status_of(answer) in (400, 431) and closed
    assert dockerd.ping(engine.socket_path)
