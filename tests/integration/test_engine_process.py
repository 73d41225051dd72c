"""Process semantics of labkit's engine, as Docker has them: what pid 1 inherits, what stop and kill
do and when they answer. Read from /proc/PID/status (SigIgn, SigBlk, SigCgt) and the CLI's answers.

The engine here is started with SIGHUP, SIGQUIT and SIGXFSZ ignored (as `nohup` or a terminal
multiplexer would leave it): a container must not inherit that, or a shell inside cannot trap them.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from labkit import cleanup
from labkit.engine import EngineProcess
from engine_cli import IMAGE, docker, status
from kernel_state import wait_until

pytestmark = pytest.mark.root

INHERITED_IGNORED = (signal.SIGHUP, signal.SIGQUIT, signal.SIGXFSZ)


@pytest.fixture(scope="module")
def engine():
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in INHERITED_IGNORED}
    try:
        engine = EngineProcess().start()     # inherits the ignored signals, as after nohup
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        ignored = int(status(engine.pid, "SigIgn"), 16)
        assert all(ignored & (1 << (sig - 1)) for sig in INHERITED_IGNORED)
        yield engine
    finally:
        engine.stop()


def until(condition) -> bool:
    return wait_until(condition, timeout=20, interval=0.02)


def start(engine, *args) -> tuple[str, int]:
    name = cleanup.unique_name("proc")
    started = docker(engine, "run", "-d", "--name", name, *args)
    assert started.returncode == 0, started.stderr
    return name, json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]


def inspect_state(engine, name) -> dict:
    return json.loads(docker(engine, "inspect", name).stdout)[0]["State"]


def test_pid_1_starts_with_default_dispositions_and_an_empty_mask(engine):
    name, pid = start(engine, IMAGE, "sleep", "600")
    try:
        assert int(status(pid, "SigIgn"), 16) == 0
        assert int(status(pid, "SigBlk"), 16) == 0
    finally:
        docker(engine, "rm", "--force", name)


def test_a_shell_traps_hup_sent_by_docker_kill(engine):
    script = "trap 'echo got HUP; exit 3' HUP; while :; do sleep 0.05; done"
    name, pid = start(engine, IMAGE, "sh", "-c", script)
    try:
        assert until(lambda: int(status(pid, "SigCgt"), 16) & (1 << (signal.SIGHUP - 1)))  # trap set
        assert docker(engine, "kill", "-s", "HUP", name).returncode == 0
        assert docker(engine, "wait", name, timeout=30).stdout.decode().strip() == "3"
        assert docker(engine, "logs", name).stdout == b"got HUP\n"
    finally:
        docker(engine, "rm", "--force", name)


def test_stop_of_sh_as_pid_1_ends_with_sigkill_137_as_in_docker(engine):
    """No init unless --init: sh is pid 1, the kernel drops the SIGTERM it has no handler for,
    and stop ends it with SIGKILL after the timeout (exit 137; with tini it would be 143)."""
    name, pid = start(engine, IMAGE, "sh", "-c", "while :; do sleep 0.05; done")
    try:
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sh"
        assert docker(engine, "stop", "-t", "1", name).returncode == 0
        assert inspect_state(engine, name)["ExitCode"] == 137
    finally:
        docker(engine, "rm", "--force", name)
    name, pid = start(engine, "--init", IMAGE, "sh", "-c", "while :; do sleep 0.05; done")
    try:
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"/sbin/tini"
        assert docker(engine, "stop", "-t", "5", name).returncode == 0
        assert inspect_state(engine, name)["ExitCode"] == 143       # tini forwards TERM; sh dies of it
    finally:
        docker(engine, "rm", "--force", name)


def test_stop_returns_when_the_process_exits_not_after_the_timeout(engine):
    """The process exits on SIGTERM; stop with a 60 s timeout must return long before it (the CLI
    call gets 30 s), with the exit the trap chose."""
    script = "trap 'exit 0' TERM; while :; do sleep 0.05; done"
    name, pid = start(engine, IMAGE, "sh", "-c", script)
    try:
        assert until(lambda: int(status(pid, "SigCgt"), 16) & (1 << (signal.SIGTERM - 1)))
        assert docker(engine, "stop", "-t", "60", name, timeout=30).returncode == 0
        state = inspect_state(engine, name)
        assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    finally:
        docker(engine, "rm", "--force", name)


def test_kill_answers_after_the_state_is_updated(engine):
    name, pid = start(engine, IMAGE, "sleep", "600")
    try:
        assert docker(engine, "kill", name).returncode == 0
        state = inspect_state(engine, name)                     # right after: no polling
        assert (state["Status"], state["Running"], state["ExitCode"]) == ("exited", False, 137)
        assert not Path(f"/proc/{pid}").exists() or "Z" in status(pid, "State")
    finally:
        docker(engine, "rm", "--force", name)
