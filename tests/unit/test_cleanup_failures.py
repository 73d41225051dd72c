"""A cleanup path that fails is reported, never taken for a success (no root, no real daemon)."""
from __future__ import annotations

import socket
import threading

import pytest

from labkit import cleanup, dockerd, watchdog
from labkit.errors import LabkitError


def test_the_watchdogs_start_up_sweep_journals_what_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "WATCHDOG_JOURNAL", tmp_path / "watchdog.log")
    monkeypatch.setattr(watchdog, "_wait_for", lambda *args: None)
    monkeypatch.setattr(watchdog, "watch", lambda owner: 0)

    def sweep(errors=None, **kwargs):
        errors.append("removing cgroup labkit-stuck (/sys/fs/cgroup/*/labkit-stuck): Conflict('busy')")
        return []
    monkeypatch.setattr(cleanup, "sweep", sweep)
    assert watchdog.main(["--owner", "4242"]) == 0
    journal = (tmp_path / "watchdog.log").read_text()
    assert "start-up sweep of the watchdog for 4242; FAILED removing cgroup labkit-stuck" in journal


def _answering(path: str, status: str, message: bytes = b"container is busy"):
    """A one-request HTTP server on a unix socket that answers `status` to anything."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()

    def serve():
        conn, _ = server.accept()
        conn.recv(65536)
        body = b'{"message": "' + message + b'"}'
        conn.sendall(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.close()
        server.close()
    threading.Thread(target=serve, daemon=True).start()


def test_a_docker_container_dockerd_refused_to_delete_keeps_its_record(tmp_path, monkeypatch):
    from labkit import engine

    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setenv("LABKIT_NO_WATCHDOG", "1")
    monkeypatch.setattr(dockerd, "SOCKET", str(tmp_path / "docker.sock"))
    _answering(dockerd.SOCKET, "409 Conflict")
    cleanup.claim("docker-container", "labkit-stuck", pid=1)
    item = cleanup.leftover("docker-container", "labkit-stuck", "docker container abc", id="abc")
    with pytest.raises(LabkitError, match="409.*container is busy"):
        engine.remove_leftover(item)
    assert cleanup.owner("docker-container", "labkit-stuck")[0] == 1      # not released: still there


def test_a_docker_container_another_sweeper_is_removing_is_left_to_it(tmp_path, monkeypatch):
    from labkit import engine
    from labkit.errors import NotFound

    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setenv("LABKIT_NO_WATCHDOG", "1")
    monkeypatch.setattr(dockerd, "SOCKET", str(tmp_path / "docker.sock"))
    _answering(dockerd.SOCKET, "409 Conflict", b"removal of container abc is already in progress")
    cleanup.claim("docker-container", "labkit-going", pid=1)
    item = cleanup.leftover("docker-container", "labkit-going", "docker container abc", id="abc")
    with pytest.raises(NotFound, match="being removed"):     # the sweep goes on, not a failure
        engine.remove_leftover(item)
    assert cleanup.owner("docker-container", "labkit-going")[0] == 1     # the other sweeper releases it
