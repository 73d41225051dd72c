"""`docker exec` against labkit's engine: a process that setns'd into the container's namespaces and
joined its cgroup, with the container's capabilities, user, no_new_privs and rlimits - read from
/proc/PID of the exec'd process - and its input and output through the hijacked connection, with
and without a terminal (driven through a real pty, as a learner's terminal would)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labkit import cleanup, dockerd
from labkit.emulation import scaled
from engine_cli import IMAGE, docker, engine, status  # noqa: F401 (engine: the fixture)

pytestmark = pytest.mark.root


@pytest.fixture
def box(engine):
    """A running container with a few non-default settings for exec to inherit."""
    name = cleanup.unique_name("exec")
    started = docker(engine, "run", "-d", "--name", name, "--cap-drop", "ALL", "--cap-add", "KILL",
                     "--security-opt", "no-new-privileges", "--ulimit", "nofile=512:512", "-u", "nobody",
                     "-e", "FROM_RUN=1", "--memory", "48m", IMAGE, "sleep", "600")
    assert started.returncode == 0, started.stderr
    pid = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]
    try:
        yield name, pid
    finally:
        docker(engine, "rm", "--force", name)


def test_exec_joins_the_containers_namespaces_and_cgroup_with_its_restrictions(engine, box):
    name, pid = box
    result = docker(engine, "exec", "-d", name, "sleep", "300")
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + scaled(20)
    found = []
    while not found and time.monotonic() < deadline:
        found = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != pid
                 and _cmdline(p) == b"sleep\x00300\x00"
                 and os.readlink(f"/proc/{p}/ns/pid") == os.readlink(f"/proc/{pid}/ns/pid")]
        time.sleep(0.02)
    assert len(found) == 1
    child = found[0]
    for kind in ("pid", "mnt", "uts", "ipc", "net"):
        assert os.readlink(f"/proc/{child}/ns/{kind}") == os.readlink(f"/proc/{pid}/ns/{kind}"), kind
    assert Path(f"/proc/{child}/cgroup").read_text() == Path(f"/proc/{pid}/cgroup").read_text()
    for key in ("CapBnd", "CapEff", "NoNewPrivs", "Uid", "Gid"):
        assert status(child, key) == status(pid, key), key
    assert int(status(child, "CapBnd"), 16) == 1 << 5                           # only CAP_KILL
    assert [l for l in Path(f"/proc/{child}/limits").read_text().splitlines() if "open files" in l] == \
        [l for l in Path(f"/proc/{pid}/limits").read_text().splitlines() if "open files" in l]
    assert os.readlink(f"/proc/{child}/root") == "/" and os.stat(f"/proc/{child}/root/etc/os-release")


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_exec_output_status_env_workdir_and_user(engine, box):
    name, _ = box
    result = docker(engine, "exec", name, "sh", "-c", "echo out; echo err >&2; echo $FROM_RUN; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n1\n", b"err\n")
    result = docker(engine, "exec", "-e", "EXTRA=yes", "-w", "/etc", "-u", "0:0", name,
                    "sh", "-c", "echo $EXTRA; pwd; id -u")
    assert (result.returncode, result.stdout) == (0, b"yes\n/etc\n0\n"), result.stderr
    assert docker(engine, "exec", name, "id", "-u").stdout == b"65534\n"          # the container's user


def test_exec_stdin_with_half_close(engine, box):
    name, _ = box
    result = docker(engine, "exec", "-i", name, "sh", "-c", "cat; echo after-eof", input=b"line one\nline two\n")
    assert (result.returncode, result.stdout) == (0, b"line one\nline two\nafter-eof\n"), result.stderr


def test_exec_of_a_missing_command_fails_like_a_shell(engine, box):
    name, _ = box
    result = docker(engine, "exec", name, "no-such-command")
    assert result.returncode == 127 and b"no-such-command" in result.stderr


def test_exec_into_a_stopped_container_is_refused(engine):
    name = cleanup.unique_name("exited")
    assert docker(engine, "run", "--name", name, IMAGE, "true").returncode == 0
    try:
        result = docker(engine, "exec", name, "true")
        assert result.returncode != 0 and b"is not running" in result.stderr
    finally:
        docker(engine, "rm", name)


def test_twenty_concurrent_execs(engine, box):
    name, _ = box

    def one(i):
        result = docker(engine, "exec", name, "sh", "-c", f"echo n{i}; exit {i % 7}")
        return result.returncode, result.stdout

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(one, range(20))) == [(i % 7, f"n{i}\n".encode()) for i in range(20)]


def _talk(master: int, send: bytes, expect: bytes, timeout: float = 20) -> bytes:
    os.write(master, send)
    seen = b""
    deadline = time.monotonic() + scaled(timeout)
    while expect not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    assert expect in seen, seen
    return seen


@contextlib.contextmanager
def _interactive(engine, *args):
    """The docker CLI on a real terminal (a pty), the way a learner types into it: (process, master);
    the CLI is killed if still running at the end, and the terminal closed."""
    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))   # the learner's window
    os.set_blocking(master, True)
    env = {**os.environ, "DOCKER_HOST": engine.url, "TERM": "xterm"}
    process = subprocess.Popen([dockerd.DOCKER, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                               start_new_session=True, close_fds=True)
    os.close(slave)
    try:
        yield process, master
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_exec_it_gives_an_interactive_shell_on_a_pty(engine, box):
    name, pid = box
    with _interactive(engine, "exec", "-it", name, "sh") as (process, master):
        _talk(master, b"echo $((6*7))\n", b"42")
        _talk(master, b"stty size\n", b"33 101")             # the CLI passed its window size on
        seen = _talk(master, b"tty\n", b"/dev/pts/")          # a pty of the container's own devpts
        assert b"not a tty" not in seen
        _talk(master, b"exit 5\n", b"exit 5")
        assert process.wait(timeout=scaled(30)) == 5


def test_docker_run_it_sh_is_usable_interactively(engine):
    with _interactive(engine, "run", "-it", "--rm", IMAGE, "sh") as (process, master):
        _talk(master, b"echo $((6*7))\n", b"42")
        _talk(master, b"stty size\n", b"33 101")                 # the CLI's window size, via resize
        _talk(master, b"echo ready; cat\n", b"ready\r\n")      # the shell runs the line, then cat reads
        _talk(master, b"from the keyboard\n", b"from the keyboard\r\nfrom the keyboard")
        _talk(master, b"\x03", b"#")                              # ^C ends cat, the shell stays
        _talk(master, b"exit 6\n", b"exit 6")
        assert process.wait(timeout=scaled(30)) == 6


def test_docker_run_t_gives_pid_1_a_terminal_of_its_own_devpts(engine):
    """pid 1's terminal is a pty of the container's devpts (as dockerd's): `tty` names it /dev/pts/N
    inside, and the kernel shows it as the controlling terminal of pid 1's session."""
    script = ("tty; test -t 0 && echo stdin-is-a-tty; "
              "echo sid=$(cut -d' ' -f6 /proc/1/stat) tty_nr=$(cut -d' ' -f7 /proc/1/stat)")
    with _interactive(engine, "run", "-t", "--rm", IMAGE, "sh", "-c", script) as (process, master):
        seen = _talk(master, b"", b"\r\nsid=")
        while not seen.endswith(b"\n"):                    # the rest of the last line
            seen += _talk(master, b"", b"\n")
        assert process.wait(timeout=scaled(30)) == 0
    lines = seen.decode().replace("\r", "").split("\n")
    assert lines[0].startswith("/dev/pts/") and "not a tty" not in seen.decode(), seen
    assert "stdin-is-a-tty" in lines, seen
    fields = dict(item.split("=") for item in next(line for line in lines if line.startswith("sid=")).split())
    assert fields["sid"] == "1"                           # pid 1 leads its session...
    assert int(fields["tty_nr"]) >> 8 == 136              # ...whose controlling terminal is a pty (major 136)
