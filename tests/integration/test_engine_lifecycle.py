"""What a learner types after `docker run`: pause, stats, top, rename, restart, update, restart
policies, logs options, ps filters, container prune - each checked where the kernel shows it
(the freezer's state file, the cgroup's counters and limits, the pid namespace's processes)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labkit import cleanup
from labkit.engine.wire import UnixHTTPConnection
from engine_cli import IMAGE, docker, engine, inspect  # noqa: F401 (engine: the fixture)
from kernel_state import wait_until

pytestmark = pytest.mark.root


def until(condition) -> bool:
    return wait_until(condition, timeout=30, interval=0.05)


def cgroup_dir(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup", controller, path.lstrip("/"))
    unified = next(l for l in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if l.startswith("0::"))
    return Path("/sys/fs/cgroup", unified.split(":", 2)[2].lstrip("/"))


@pytest.fixture
def box(engine):
    name = cleanup.unique_name("life")
    started = docker(engine, "run", "-d", "--name", name, "--memory", "48m", IMAGE,
                     "sh", "-c", "while :; do sleep 0.05; done")
    assert started.returncode == 0, started.stderr
    try:
        yield name, inspect(engine, name)["State"]["Pid"]
    finally:
        docker(engine, "unpause", name)
        docker(engine, "rm", "--force", name)


def test_pause_freezes_the_cgroup_and_unpause_thaws_it(engine, box):
    name, pid = box
    freezer = cgroup_dir(pid, "freezer")
    state = freezer / "freezer.state" if (freezer / "freezer.state").exists() else freezer / "cgroup.freeze"
    assert docker(engine, "pause", name).returncode == 0
    assert state.read_text().strip() in ("FROZEN", "1")
    assert inspect(engine, name)["State"]["Status"] == "paused"
    assert "(Paused)" in docker(engine, "ps", "--format", "{{.Status}}", "--filter", f"name={name}").stdout.decode()
    listed = lambda status: docker(engine, "ps", "-q", "--no-trunc", "--filter", f"status={status}").stdout.decode().split()
    box_id = inspect(engine, name)["Id"]
    assert box_id in listed("paused") and box_id not in listed("running")     # as dockerd's StateString
    stop = docker(engine, "stop", name)
    assert stop.returncode != 0 and b"paused" in stop.stderr
    assert docker(engine, "unpause", name).returncode == 0
    assert state.read_text().strip() in ("THAWED", "0")
    assert inspect(engine, name)["State"]["Status"] == "running"


def test_stats_no_stream_reads_the_cgroup_counters(engine, box):
    name, pid = box
    result = docker(engine, "stats", "--no-stream", "--format", "{{.Name}};{{.MemUsage}};{{.PIDs}};{{.CPUPerc}}", name)
    assert result.returncode == 0, result.stderr
    shown_name, memory, pids, cpu = result.stdout.decode().strip().split(";")
    assert shown_name == name and memory.endswith("/ 48MiB") and cpu.endswith("%")
    procs = (cgroup_dir(pid, "pids") / "cgroup.procs").read_text().split()
    assert 1 <= int(pids) <= len(procs) + 2           # a sleep may come or go between the two reads


def test_stats_stream_samples_the_cgroup_until_the_container_is_gone(engine, box):
    """docker stats without --no-stream: a JSON sample a second from the cgroup's counters, each with the
    one before as precpu_stats (what the CLI's CPU % is made of); the stream ends when the container goes."""
    name, pid = box
    conn = UnixHTTPConnection(engine.socket_path, timeout=30)
    try:
        conn.request("GET", f"/v1.41/containers/{name}/stats")
        response = conn.getresponse()
        assert response.status == 200
        first, second = json.loads(response.readline()), json.loads(response.readline())
        limit_file = cgroup_dir(pid, "memory") / "memory.limit_in_bytes"
        limit_file = limit_file if limit_file.exists() else cgroup_dir(pid, "memory") / "memory.max"
        assert second["memory_stats"]["limit"] == int(limit_file.read_text()) == 48 * 2**20
        assert second["precpu_stats"] == first["cpu_stats"]
        assert second["cpu_stats"]["cpu_usage"]["total_usage"] > first["cpu_stats"]["cpu_usage"]["total_usage"]
        assert second["pids_stats"]["current"] >= 1
        assert docker(engine, "rm", "--force", name).returncode == 0
        response.read()                          # returns: the stream has ended
    finally:
        conn.close()


def test_top_lists_the_processes_of_the_pid_namespace(engine, box):
    name, pid = box
    result = docker(engine, "top", name)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["UID", "PID", "PPID"]
    shown = {int(line.split()[1]) for line in lines[1:]}
    assert pid in shown
    namespace = os.readlink(f"/proc/{pid}/ns/pid")
    for other in shown:
        try:
            assert os.readlink(f"/proc/{other}/ns/pid") == namespace
        except FileNotFoundError:
            pass                                       # a short-lived sleep that ended since


def test_rename_and_restart(engine, box):
    name, pid = box
    new = cleanup.unique_name("renamed")
    assert docker(engine, "rename", name, new).returncode == 0
    try:
        assert inspect(engine, new)["Name"] == "/" + new
        assert docker(engine, "restart", "-t", "1", new).returncode == 0
        state = inspect(engine, new)["State"]
        assert state["Running"] and state["Pid"] != pid and not Path(f"/proc/{pid}").exists()
    finally:
        docker(engine, "rename", new, name)


def test_update_changes_limits_live(engine, box):
    name, pid = box
    memory = cgroup_dir(pid, "memory")
    limit = memory / "memory.limit_in_bytes" if (memory / "memory.limit_in_bytes").exists() else memory / "memory.max"
    assert int(limit.read_text()) == 48 << 20
    result = docker(engine, "update", "--memory", "64m", "--memory-swap", "64m", "--pids-limit", "30", name)
    assert result.returncode == 0, result.stderr
    assert int(limit.read_text()) == 64 << 20
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text().strip() == "30"
    assert inspect(engine, name)["HostConfig"]["Memory"] == 64 << 20
    refused = docker(engine, "update", "--blkio-weight", "300", name)
    assert refused.returncode != 0 and b"BlkioWeight" in refused.stderr


def test_restart_policy_on_failure_restarts_up_to_n_times(engine):
    name = cleanup.unique_name("onfail")
    assert docker(engine, "run", "-d", "--name", name, "--restart", "on-failure:2", IMAGE,
                  "sh", "-c", "echo run >> /data; wc -l < /data; exit 3").returncode == 0
    try:
        assert until(lambda: (lambda c: c["State"]["Status"] == "exited" and c["RestartCount"] == 2)(
            inspect(engine, name)))
        # 1 run + 2 restarts, each on the last one's writable layer (its /data)
        assert docker(engine, "logs", name).stdout.split() == [b"1", b"2", b"3"]
        assert inspect(engine, name)["State"]["ExitCode"] == 3
    finally:
        docker(engine, "rm", "--force", name)


def test_restart_policy_always_but_not_after_docker_stop(engine):
    name = cleanup.unique_name("always")
    assert docker(engine, "run", "-d", "--name", name, "--restart", "always", IMAGE,
                  "sh", "-c", "sleep 0.2; exit 0").returncode == 0
    try:
        assert until(lambda: inspect(engine, name)["RestartCount"] >= 2)
        assert docker(engine, "stop", "-t", "1", name).returncode == 0
        count = inspect(engine, name)["RestartCount"]
        assert until(lambda: inspect(engine, name)["State"]["Status"] == "exited")
        assert inspect(engine, name)["RestartCount"] == count               # stopped stays stopped
    finally:
        docker(engine, "rm", "--force", name)


def mounted(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_start_and_restart_run_on_the_last_runs_writable_layer_until_rm(engine):
    name = cleanup.unique_name("layer")
    assert docker(engine, "run", "-d", "--name", name, IMAGE,
                  "sh", "-c", "echo run >> /data; sleep 60").returncode == 0
    try:
        first = inspect(engine, name)
        root = first["GraphDriver"]["Data"]["MergedDir"]        # labkit's rootfs/: the overlay
        assert until(lambda: Path(f"/proc/{first['State']['Pid']}/root/data").exists())
        assert docker(engine, "stop", "-t", "1", name).returncode == 0
        assert docker(engine, "start", name).returncode == 0
        again = inspect(engine, name)
        pid = again["State"]["Pid"]
        assert again["GraphDriver"]["Data"]["MergedDir"] == root
        assert until(lambda: Path(f"/proc/{pid}/root/data").read_text() == "run\nrun\n")
        assert docker(engine, "restart", "-t", "1", name).returncode == 0
        pid = inspect(engine, name)["State"]["Pid"]
        assert until(lambda: Path(f"/proc/{pid}/root/data").read_text() == "run\nrun\nrun\n")
        assert docker(engine, "stop", "-t", "1", name).returncode == 0
        assert mounted(root) and Path(root, "data").read_text() == "run\nrun\nrun\n"
    finally:
        assert docker(engine, "rm", "--force", name).returncode == 0
    assert not mounted(root) and not Path(root).parent.exists()


def test_logs_per_line_with_tail_timestamps_since_and_until(engine):
    name = cleanup.unique_name("logs")
    assert docker(engine, "run", "--name", name, IMAGE, "sh", "-c",
                  "echo one; echo two; echo three >&2; echo four").returncode == 0
    try:
        assert docker(engine, "logs", "--tail", "2", name).stdout.splitlines()[-1] == b"four"
        stamped = docker(engine, "logs", "-t", name).stdout.decode().splitlines()
        assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "four"]
        assert all(line[:4].isdigit() and line.split(" ")[0].endswith("Z") for line in stamped)
        assert docker(engine, "logs", "--since", "2030-01-01T00:00:00", name).stdout == b""
        assert docker(engine, "logs", "--until", "2000-01-01T00:00:00", name).stdout == b""
        both = docker(engine, "logs", name)
        assert (both.stdout, both.stderr) == (b"one\ntwo\nfour\n", b"three\n")
    finally:
        docker(engine, "rm", name)


def test_logs_follow_streams_until_exit(engine):
    name = cleanup.unique_name("follow")
    assert docker(engine, "run", "-d", "--name", name, IMAGE, "sh", "-c",
                  "for i in 1 2 3; do echo line$i; sleep 0.1; done").returncode == 0
    try:
        assert docker(engine, "logs", "-f", name, timeout=30).stdout == b"line1\nline2\nline3\n"
    finally:
        docker(engine, "rm", "--force", name)


def test_ps_filters_and_container_prune(engine, box):
    running, _ = box
    exited = cleanup.unique_name("exited")
    assert docker(engine, "run", "--name", exited, "-l", "lab=prune", IMAGE, "sh", "-c", "exit 3").returncode == 3
    try:
        def names(*filters):
            args = [a for f in filters for a in ("--filter", f)]
            return docker(engine, "ps", "-a", "--format", "{{.Names}}", *args).stdout.decode().split()
        assert names("exited=3") == [exited]
        assert docker(engine, "ps", "-q", "--filter", "exited=3").stdout == b""          # needs -a, as in dockerd
        assert docker(engine, "ps", "--format", "{{.Names}}", "--filter", "status=exited").stdout.decode().split() \
            == [exited]                                                                  # does not
        assert names("status=exited", "label=lab=prune") == [exited]
        assert running in names("status=running") and exited not in names("status=running")
        assert set(names(f"ancestor={IMAGE}")) >= {running, exited}
        assert names(f"name={running}") == [running]
        # A wrong filter is refused naming it, as dockerd does ("invalid filter 'status=stopped'").
        for wrong, named in (("status=stopped", "status=stopped"), ("exited=three", "exited=three"),
                             ("colour=red", "colour")):
            refused = docker(engine, "ps", "-a", "--filter", wrong)
            assert refused.returncode != 0 and f"'{named}'".encode() in refused.stderr, refused.stderr
        pruned = docker(engine, "container", "prune", "-f")
        assert pruned.returncode == 0 and json.loads(docker(engine, "inspect", running).stdout)
        assert exited not in names() and running in names()
    finally:
        docker(engine, "rm", "--force", exited)
