"""The engine's one rule, field by field: every field of Docker Engine API 1.41's container config
(Config and HostConfig) is either APPLIED - and the test reads it back from the kernel: /proc/PID,
the cgroup files, mountinfo - or REFUSED with a 400 that names the field.

The field list below is data copied from the API 1.41 spec (moby's docs/api/v1.41.yaml:
ContainerConfig, Resources and HostConfig). A field with a kernel check in `APPLIED` must be
applied; every other field must be refused when set. So an engine that silently ignores a field
fails here, and a field the engine starts to apply fails here until it gets a kernel check.
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import termios
from contextlib import contextmanager
from pathlib import Path

import pytest

from labkit import cleanup, rootfs
from labkit.engine.wire import UnixHTTPConnection
from engine_cli import docker, engine  # noqa: F401 (engine: the fixture)
from engine_cli import status as status_line
from kernel_state import wait_until

pytestmark = pytest.mark.root

IMAGE = "labkit-busybox"

# --- the spec, as data ----------------------------------------------------------------------------
CONFIG_FIELDS = [
    "Hostname", "Domainname", "User", "AttachStdin", "AttachStdout", "AttachStderr", "ExposedPorts",
    "Tty", "OpenStdin", "StdinOnce", "Env", "Cmd", "Healthcheck", "ArgsEscaped", "Image", "Volumes",
    "WorkingDir", "Entrypoint", "NetworkDisabled", "MacAddress", "OnBuild", "Labels", "StopSignal",
    "StopTimeout", "Shell",
]
RESOURCES_FIELDS = [
    "CpuShares", "Memory", "CgroupParent", "BlkioWeight", "BlkioWeightDevice", "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteIOps", "CpuPeriod", "CpuQuota",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpusetCpus", "CpusetMems", "Devices",
    "DeviceCgroupRules", "DeviceRequests", "KernelMemory", "KernelMemoryTCP", "MemoryReservation",
    "MemorySwap", "MemorySwappiness", "NanoCpus", "OomKillDisable", "Init", "PidsLimit", "Ulimits",
    "CpuCount", "CpuPercent", "IOMaximumIOps", "IOMaximumBandwidth",
]
HOSTCONFIG_FIELDS = RESOURCES_FIELDS + [
    "Binds", "ContainerIDFile", "LogConfig", "NetworkMode", "PortBindings", "RestartPolicy",
    "AutoRemove", "VolumeDriver", "VolumesFrom", "Mounts", "CapAdd", "CapDrop", "CgroupnsMode", "Dns",
    "DnsOptions", "DnsSearch", "ExtraHosts", "GroupAdd", "IpcMode", "Cgroup", "Links", "OomScoreAdj",
    "PidMode", "Privileged", "PublishAllPorts", "ReadonlyRootfs", "SecurityOpt", "StorageOpt", "Tmpfs",
    "UTSMode", "UsernsMode", "ShmSize", "Sysctls", "Runtime", "ConsoleSize", "Isolation",
    "MaskedPaths", "ReadonlyPaths",
]
ALL_FIELDS = [f"Config.{f}" for f in CONFIG_FIELDS] + [f"HostConfig.{f}" for f in HOSTCONFIG_FIELDS]

# A value that asks for something, for each field the engine must refuse.
REFUSED_SAMPLES = {
    "Config.ExposedPorts": {"80/tcp": {}}, "Config.Healthcheck": {"Test": ["CMD", "true"]},
    "Config.ArgsEscaped": True, "Config.Volumes": {"/data": {}}, "Config.MacAddress": "02:42:ac:11:00:02",
    "Config.OnBuild": ["RUN true"], "Config.Shell": ["/bin/sh", "-c"],
    "HostConfig.CgroupParent": "elsewhere", "HostConfig.BlkioWeight": 500,
    "HostConfig.BlkioWeightDevice": [{"Path": "/dev/loop0", "Weight": 100}],
    "HostConfig.BlkioDeviceReadBps": [{"Path": "/dev/loop0", "Rate": 1048576}],
    "HostConfig.BlkioDeviceWriteBps": [{"Path": "/dev/loop0", "Rate": 1048576}],
    "HostConfig.BlkioDeviceReadIOps": [{"Path": "/dev/loop0", "Rate": 100}],
    "HostConfig.BlkioDeviceWriteIOps": [{"Path": "/dev/loop0", "Rate": 100}],
    "HostConfig.CpuRealtimePeriod": 1000000, "HostConfig.CpuRealtimeRuntime": 950000,
    "HostConfig.CpusetMems": "0",
    "HostConfig.Devices": [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/x", "CgroupPermissions": "rwm"}],
    "HostConfig.DeviceCgroupRules": ["c 1:3 rwm"], "HostConfig.DeviceRequests": [{"Count": 1}],
    "HostConfig.KernelMemory": 64 << 20, "HostConfig.KernelMemoryTCP": 64 << 20,
    "HostConfig.MemoryReservation": 32 << 20, "HostConfig.MemorySwappiness": 10,
    "HostConfig.OomKillDisable": True, "HostConfig.CpuCount": 1, "HostConfig.CpuPercent": 50,
    "HostConfig.IOMaximumIOps": 100, "HostConfig.IOMaximumBandwidth": 1048576,
    "HostConfig.Binds": ["/tmp:/host"], "HostConfig.PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
    "HostConfig.VolumeDriver": "local", "HostConfig.VolumesFrom": ["other"],
    "HostConfig.Mounts": [{"Type": "tmpfs", "Target": "/x"}], "HostConfig.Dns": ["198.18.0.1"],
    "HostConfig.DnsOptions": ["ndots:1"], "HostConfig.DnsSearch": ["example.org"],
    "HostConfig.Cgroup": "host", "HostConfig.Links": ["other:alias"], "HostConfig.PidMode": "host",
    "HostConfig.Privileged": True, "HostConfig.PublishAllPorts": True,
    "HostConfig.StorageOpt": {"size": "1G"}, "HostConfig.UTSMode": "host",
}


# --- helpers: the CLI, the API, and the kernel's view ----------------------------------------------

def out(engine, *args) -> str:
    result = docker(engine, "run", "--rm", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def api(engine, method, path, body=None):
    conn = UnixHTTPConnection(engine.socket_path, timeout=30)
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    status, data = response.status, response.read()
    conn.close()
    return status, json.loads(data) if data.strip() else None


@contextmanager
def running(engine, *flags, command=("sleep", "600"), body=None):
    """A running container (by CLI flags, or by an API create body); yields its host pid."""
    name = cleanup.unique_name("field")
    if body is None:
        started = docker(engine, "run", "-d", "--name", name, *flags, IMAGE, *command)
        assert started.returncode == 0, started.stderr
    else:
        status, answer = api(engine, "POST", f"/v1.41/containers/create?name={name}",
                             {"Image": IMAGE, "Cmd": list(command), **body})
        assert status == 201, answer
        assert api(engine, "POST", f"/v1.41/containers/{name}/start")[0] == 204
    try:
        pid = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]
        assert pid > 0
        yield pid
    finally:
        docker(engine, "rm", "--force", name)


def cgroup_file(pid: int, v1: tuple[str, str], v2: str) -> str:
    """A cgroup file of the process's cgroup: (controller, file) on v1, file on v2."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["unified"]:
            paths[controller] = path.lstrip("/")
    controller, name = v1
    if controller in paths and Path("/sys/fs/cgroup", controller, paths[controller], name).exists():
        return Path("/sys/fs/cgroup", controller, paths[controller], name).read_text().strip()
    return Path("/sys/fs/cgroup", paths["unified"], v2).read_text().strip()


def mount_at(pid: int, mountpoint: str) -> dict:
    """The top-most mount at `mountpoint` in the container's mount table."""
    found = [m for m in rootfs.read_mountinfo(pid) if m["mountpoint"] == mountpoint]
    assert found, f"nothing mounted at {mountpoint} in pid {pid}'s mount namespace"
    return found[-1]


def refused(engine, field: str, value, *, words: str = "") -> None:
    """A create with `field` set is answered 400, naming the field; no container exists after."""
    section, name = field.split(".")
    body = {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {}}
    (body["HostConfig"] if section == "HostConfig" else body)[name] = value
    status, answer = api(engine, "POST", "/v1.41/containers/create", body)
    assert status == 400, (field, status, answer)
    assert field in answer["message"] and words in answer["message"], answer["message"]
    assert docker(engine, "ps", "-a", "-q").stdout == b""


# --- the checks for applied fields: each reads the kernel -------------------------------------------

def check_hostname(engine):
    assert out(engine, "-h", "box", IMAGE, "cat", "/proc/sys/kernel/hostname") == "box\n"


def check_domainname(engine):
    assert out(engine, "--domainname", "lab.example", IMAGE, "cat", "/proc/sys/kernel/domainname") \
        == "lab.example\n"


def check_user(engine):
    with running(engine, "-u", "nobody") as pid:
        assert status_line(pid, "Uid").split() == ["65534"] * 4
        assert status_line(pid, "Gid").split() == ["65534"] * 4
    with running(engine, "-u", "1234:4321") as pid:
        assert status_line(pid, "Uid").split()[0] == "1234" and status_line(pid, "Gid").split()[0] == "4321"
    refused(engine, "Config.User", "nosuchuser", words="/etc/passwd")


def check_attach_streams(engine):
    result = docker(engine, "run", "--rm", "-a", "stderr", IMAGE, "sh", "-c", "echo out; echo err >&2")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"err\n")
    result = docker(engine, "run", "--rm", "-a", "stdout", IMAGE, "sh", "-c", "echo out; echo err >&2")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"out\n", b"")


def check_tty(engine):
    with running(engine, "-t") as pid:
        assert all(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/pts/") for fd in (0, 1, 2))
        assert status_line(pid, "NSsid").split()[-1] == "1"           # session leader: its own terminal
    assert out(engine, "-t", IMAGE, "sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty") == "on-a-tty\r\n"


def check_console_size(engine):
    """Docker 23+ clients send the terminal's size with `run -t` (HostConfig.ConsoleSize): the kernel's
    window size of pid 1's pty (TIOCGWINSZ on its stdin, read from the host) is that size."""
    with running(engine, body={"Tty": True, "HostConfig": {"ConsoleSize": [33, 101]}}) as pid:
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY)
        try:
            rows, columns = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        finally:
            os.close(fd)
        assert (rows, columns) == (33, 101)
    status, answer = api(engine, "POST", "/v1.41/containers/create",
                         {"Image": IMAGE, "Cmd": ["true"], "HostConfig": {"ConsoleSize": [33, 101]}})
    assert status == 400 and "ConsoleSize" in answer["message"], answer     # a size without a terminal


def check_open_stdin(engine):
    with running(engine, "-i") as pid:
        assert os.readlink(f"/proc/{pid}/fd/0").startswith("pipe:")
    with running(engine) as pid:
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"


def check_attach_stdin(engine):
    """-i: the client's input reaches pid 1's stdin through attach, and its end (StdinOnce) ends it."""
    result = docker(engine, "run", "--rm", "-i", IMAGE, "sh", "-c", "cat; echo eof", input=b"one\ntwo\n")
    assert (result.returncode, result.stdout) == (0, b"one\ntwo\neof\n"), result.stderr


def check_env(engine):
    with running(engine, "-e", "GREETING=hello") as pid:
        assert b"GREETING=hello" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    # As dockerd: `-e NAME` for a NAME the client has not set sends a bare NAME, which removes it (here
    # from the image's env); a later NAME=value replaces an earlier one.
    body = {"Env": ["LABKIT_NOT_SET_IN_THE_CLIENT", "PATH", "TWICE=1", "TWICE=2"]}
    with running(engine, body=body) as pid:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"LABKIT_NOT_SET")]
        assert [e for e in environ if e.startswith(b"TWICE=")] == [b"TWICE=2"]
        assert [e for e in environ if e.startswith(b"PATH=")] == [b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def check_cmd(engine):
    with running(engine, command=("sleep", "601")) as pid:
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00601\x00"


def check_entrypoint(engine):
    with running(engine, "--entrypoint", "sleep", command=("602",)) as pid:
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00602\x00"


def check_image(engine):
    with running(engine) as pid:
        root = mount_at(pid, "/")
        assert root["fstype"] == "overlay"
        assert str(rootfs.base_layer().path) in root["superopts"]


def check_working_dir(engine):
    assert out(engine, "-w", "/newdir/deeper", IMAGE, "readlink", "/proc/self/cwd") == "/newdir/deeper\n"
    # Docker makes it even on a read-only root (in the writable layer, before / becomes read-only).
    assert out(engine, "--read-only", "-w", "/made", IMAGE, "readlink", "/proc/self/cwd") == "/made\n"


def check_network_disabled(engine):
    with running(engine, body={"NetworkDisabled": True}) as pid:
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        devices = [line.split(":")[0].strip() for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]]
        assert devices == ["lo"]


def check_network_mode(engine):
    with running(engine, "--network", "none") as pid:
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    result = docker(engine, "run", "--rm", "--network", "host", IMAGE, "true")
    assert result.returncode != 0 and b"HostConfig.NetworkMode" in result.stderr


def check_labels(engine):
    with running(engine, "-l", "lab.part=fields") as pid:
        shown = docker(engine, "ps", "-q", "--filter", "label=lab.part=fields").stdout.split()
        assert len(shown) == 1 and pid > 0
        assert docker(engine, "ps", "-q", "--filter", "label=lab.part=other").stdout == b""


def check_stop_signal(engine):
    name = cleanup.unique_name("stopsig")
    script = "trap 'exit 7' USR1; while :; do sleep 0.05; done"
    assert docker(engine, "run", "-d", "--name", name, "--stop-signal", "USR1", IMAGE, "sh", "-c", script).returncode == 0
    try:
        pid = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]
        # pid 1 has a handler for USR1 once the trap ran: the kernel shows it in SigCgt
        assert _wait_for(lambda: int(status_line(pid, "SigCgt"), 16) & (1 << 9))
        assert docker(engine, "stop", name, timeout=30).returncode == 0
        assert json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["ExitCode"] == 7
    finally:
        docker(engine, "rm", "--force", name)


def check_stop_timeout(engine):
    """A shell that ignores SIGTERM, with --stop-timeout 1: `docker stop` (no -t) must end by SIGKILL
    well before Docker's default 10 s - the CLI call is given 8 s to finish."""
    name = cleanup.unique_name("stoptime")
    script = "trap '' TERM; while :; do sleep 0.05; done"
    assert docker(engine, "run", "-d", "--name", name, "--stop-timeout", "1", IMAGE, "sh", "-c", script).returncode == 0
    try:
        pid = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]
        assert _wait_for(lambda: int(status_line(pid, "SigIgn"), 16) & (1 << 14))   # TERM ignored
        assert docker(engine, "stop", name, timeout=8).returncode == 0
        assert json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["ExitCode"] == 137
    finally:
        docker(engine, "rm", "--force", name)


def check_memory(engine):
    with running(engine, "--memory", "48m") as pid:
        assert int(cgroup_file(pid, ("memory", "memory.limit_in_bytes"), "memory.max")) == 48 << 20


def check_memory_swap(engine):
    with running(engine, "--memory", "32m", "--memory-swap", "64m") as pid:
        v1 = Path(f"/sys/fs/cgroup/memory").is_dir() and "memory" in Path(f"/proc/{pid}/cgroup").read_text()
        if v1:
            assert int(cgroup_file(pid, ("memory", "memory.memsw.limit_in_bytes"), "")) == 64 << 20
        else:
            assert int(cgroup_file(pid, ("", ""), "memory.swap.max")) == 32 << 20


def check_cpu_shares(engine):
    with running(engine, "--cpu-shares", "512") as pid:
        value = cgroup_file(pid, ("cpu", "cpu.shares"), "cpu.weight")
        assert value in ("512", "50")          # v1 shares, or v2's weight (1024 shares = weight 100)


def check_nano_cpus(engine):
    with running(engine, "--cpus", "0.5") as pid:
        _assert_cpu(pid, 50000, 100000)


def check_cpu_quota(engine):
    with running(engine, "--cpu-quota", "25000") as pid:
        _assert_cpu(pid, 25000, 100000)


def check_cpu_period(engine):
    with running(engine, "--cpu-period", "100000", "--cpu-quota", "30000") as pid:
        _assert_cpu(pid, 30000, 100000)
    refused(engine, "HostConfig.CpuPeriod", 50000, words="100000")


def _assert_cpu(pid, quota, period):
    v1_quota = cgroup_file(pid, ("cpu", "cpu.cfs_quota_us"), "cpu.max").split()
    if len(v1_quota) == 2:
        assert v1_quota == [str(quota), str(period)]
    else:
        assert int(v1_quota[0]) == quota
        assert int(cgroup_file(pid, ("cpu", "cpu.cfs_period_us"), "")) == period


def check_cpuset(engine):
    with running(engine, "--cpuset-cpus", "0") as pid:
        assert cgroup_file(pid, ("cpuset", "cpuset.cpus"), "cpuset.cpus") == "0"
        assert status_line(pid, "Cpus_allowed_list") == "0"


def check_pids_limit(engine):
    with running(engine, "--pids-limit", "17") as pid:
        assert cgroup_file(pid, ("pids", "pids.max"), "pids.max") == "17"


def check_ulimits(engine):
    with running(engine, "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=300") as pid:
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert [l.split()[3:5] for l in limits.splitlines() if l.startswith("Max open files")] == [["1024", "2048"]]
        assert [l.split()[2:4] for l in limits.splitlines() if l.startswith("Max processes")] == [["300", "300"]]
    refused(engine, "HostConfig.Ulimits", [{"Name": "bogus", "Soft": 1, "Hard": 1}], words="nofile")


def check_init(engine):
    with running(engine, "--init") as pid:
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"/sbin/tini"
    with running(engine) as pid:            # no init unless asked: the command is pid 1
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"


def check_cap_add(engine):
    with running(engine, "--cap-add", "NET_ADMIN") as pid:
        assert int(status_line(pid, "CapBnd"), 16) & (1 << 12)          # CAP_NET_ADMIN
        assert int(status_line(pid, "CapEff"), 16) & (1 << 12)
    with running(engine) as pid:
        assert not int(status_line(pid, "CapBnd"), 16) & (1 << 12)


def check_cap_drop(engine):
    with running(engine, "--cap-drop", "ALL") as pid:
        assert int(status_line(pid, "CapBnd"), 16) == 0 and int(status_line(pid, "CapEff"), 16) == 0
    with running(engine, "--cap-drop", "CHOWN") as pid:
        assert not int(status_line(pid, "CapBnd"), 16) & 1 and int(status_line(pid, "CapBnd"), 16) & (1 << 5)


def check_group_add(engine):
    with running(engine, "--group-add", "65534", "--group-add", "4242") as pid:
        assert sorted(status_line(pid, "Groups").split()) == ["4242", "65534"]
        assert status_line(pid, "Uid").split()[0] == "0"


def check_security_opt(engine):
    with running(engine, "--security-opt", "no-new-privileges") as pid:
        assert status_line(pid, "NoNewPrivs") == "1"
    with running(engine) as pid:
        assert status_line(pid, "NoNewPrivs") == "0"
    refused(engine, "HostConfig.SecurityOpt", ["seccomp=unconfined"], words="no-new-privileges")


def check_read_only(engine):
    with running(engine, "--read-only") as pid:
        assert "ro" in mount_at(pid, "/")["options"].split(",")
    result = docker(engine, "run", "--rm", "--read-only", IMAGE, "touch", "/x")
    assert result.returncode != 0 and b"Read-only file system" in result.stderr


def check_tmpfs(engine):
    with running(engine, "--read-only", "--tmpfs", "/scratch:size=64k") as pid:
        mount = mount_at(pid, "/scratch")
        assert mount["fstype"] == "tmpfs" and "size=64k" in mount["superopts"]
        assert {"nosuid", "nodev", "noexec"} <= set(mount["options"].split(","))
    assert out(engine, "--read-only", "--tmpfs", "/scratch", IMAGE, "sh", "-c",
               "echo hi > /scratch/f && cat /scratch/f") == "hi\n"


def check_shm_size(engine):
    with running(engine, "--shm-size", "1m") as pid:
        assert "size=1024k" in mount_at(pid, "/dev/shm")["superopts"]


def check_extra_hosts(engine):
    with running(engine, "--add-host", "db:198.18.0.5") as pid:
        assert mount_at(pid, "/etc/hosts")
        assert "198.18.0.5\tdb" in Path(f"/proc/{pid}/root/etc/hosts").read_text().splitlines()
    assert "198.18.0.5\tdb\n" in out(engine, "--add-host", "db:198.18.0.5", IMAGE, "cat", "/etc/hosts")


def check_sysctls(engine):
    assert out(engine, "--sysctl", "net.ipv4.ip_forward=1", IMAGE, "cat", "/proc/sys/net/ipv4/ip_forward") == "1\n"
    refused(engine, "HostConfig.Sysctls", {"kernel.panic": "1"}, words="namespaced")


def check_oom_score_adj(engine):
    with running(engine, "--oom-score-adj", "500") as pid:
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "500"


def check_masked_paths(engine):
    with running(engine, body={"HostConfig": {"MaskedPaths": ["/etc/passwd"]}}) as pid:
        assert mount_at(pid, "/etc/passwd")
        assert Path(f"/proc/{pid}/root/etc/passwd").read_text() == ""


def check_readonly_paths(engine):
    with running(engine, body={"HostConfig": {"ReadonlyPaths": ["/etc"]}}) as pid:
        assert "ro" in mount_at(pid, "/etc")["options"].split(",")


def check_cgroupns(engine):
    with running(engine, "--cgroupns", "private") as pid:
        assert os.readlink(f"/proc/{pid}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup")
    with running(engine, "--cgroupns", "host") as pid:
        assert os.readlink(f"/proc/{pid}/ns/cgroup") == os.readlink("/proc/self/ns/cgroup")


def check_ipc_mode(engine):
    with running(engine, "--ipc", "private") as pid:
        assert os.readlink(f"/proc/{pid}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
    refused(engine, "HostConfig.IpcMode", "host", words="own ipc namespace")


def check_userns_mode(engine):
    with running(engine, "--userns", "host") as pid:
        assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    refused(engine, "HostConfig.UsernsMode", "private", words="no user namespace")


def check_auto_remove(engine):
    name = cleanup.unique_name("autorm")
    result = docker(engine, "run", "--rm", "--name", name, IMAGE, "sh", "-c", "cat /proc/self/cgroup")
    assert result.returncode == 0
    groups = {line.split(":", 2)[2] for line in result.stdout.decode().splitlines()}
    assert docker(engine, "ps", "-a", "-q", "--filter", f"name={name}").stdout == b""
    labkit = [g for g in groups if "labkit-" in g]
    assert labkit and not any(p.is_dir() for g in labkit for p in Path("/sys/fs/cgroup").glob("*" + g))


def check_log_config(engine):
    name = cleanup.unique_name("nolog")
    result = docker(engine, "run", "--name", name, "--log-driver", "none", IMAGE, "echo", "seen live")
    try:
        assert (result.returncode, result.stdout) == (0, b"seen live\n")    # attach still streams
        logs = docker(engine, "logs", name)
        assert logs.returncode != 0 and b"does not support reading" in logs.stderr
    finally:
        docker(engine, "rm", "--force", name)
    refused(engine, "HostConfig.LogConfig", {"Type": "syslog", "Config": {}}, words="json-file or none")
    refused(engine, "HostConfig.LogConfig", {"Type": "json-file", "Config": {"max-size": "1m"}})


def check_restart_policy(engine):
    """The engine starts it again: a new pid 1 each time (test_engine_lifecycle has the policies)."""
    name = cleanup.unique_name("restart")
    assert docker(engine, "run", "-d", "--name", name, "--restart", "on-failure:1", IMAGE,
                  "sh", "-c", "echo $$ > /dev/null; exit 1").returncode == 0
    try:
        assert _wait_for(lambda: (lambda c: c["RestartCount"] == 1 and c["State"]["Status"] == "exited")(
            json.loads(docker(engine, "inspect", name).stdout)[0]))
    finally:
        docker(engine, "rm", "--force", name)
    assert out(engine, "--restart", "no", IMAGE, "echo", "once") == "once\n"
    refused(engine, "HostConfig.RestartPolicy", {"Name": "sometimes", "MaximumRetryCount": 0})


def check_runtime(engine):
    assert out(engine, "--runtime", "labkit", IMAGE, "echo", "labkit") == "labkit\n"
    refused(engine, "HostConfig.Runtime", "runc", words="labkit")


def check_isolation(engine):
    assert out(engine, "--isolation", "default", IMAGE, "echo", "ok") == "ok\n"
    refused(engine, "HostConfig.Isolation", "hyperv")


def check_container_id_file(engine, tmp_path_factory=None):
    path = Path("/run/labkit", cleanup.unique_name("cid"))
    try:
        result = docker(engine, "run", "--rm", "--cidfile", str(path), IMAGE, "true")
        assert result.returncode == 0 and len(path.read_text()) == 64      # the CLI wrote it
    finally:
        path.unlink(missing_ok=True)


def _wait_for(condition) -> bool:
    return wait_until(condition, timeout=20, interval=0.02)


APPLIED = {
    "Config.Hostname": check_hostname, "Config.Domainname": check_domainname, "Config.User": check_user,
    "Config.AttachStdout": check_attach_streams, "Config.AttachStderr": check_attach_streams,
    "Config.Env": check_env, "Config.Tty": check_tty, "HostConfig.ConsoleSize": check_console_size, "Config.OpenStdin": check_open_stdin,
    "Config.AttachStdin": check_attach_stdin, "Config.StdinOnce": check_attach_stdin, "Config.Cmd": check_cmd, "Config.Entrypoint": check_entrypoint,
    "Config.Image": check_image, "Config.WorkingDir": check_working_dir,
    "Config.NetworkDisabled": check_network_disabled, "Config.Labels": check_labels,
    "Config.StopSignal": check_stop_signal, "Config.StopTimeout": check_stop_timeout,
    "HostConfig.Memory": check_memory, "HostConfig.MemorySwap": check_memory_swap,
    "HostConfig.CpuShares": check_cpu_shares, "HostConfig.NanoCpus": check_nano_cpus,
    "HostConfig.CpuQuota": check_cpu_quota, "HostConfig.CpuPeriod": check_cpu_period,
    "HostConfig.CpusetCpus": check_cpuset, "HostConfig.PidsLimit": check_pids_limit,
    "HostConfig.Ulimits": check_ulimits, "HostConfig.Init": check_init,
    "HostConfig.CapAdd": check_cap_add, "HostConfig.CapDrop": check_cap_drop,
    "HostConfig.GroupAdd": check_group_add, "HostConfig.SecurityOpt": check_security_opt,
    "HostConfig.ReadonlyRootfs": check_read_only, "HostConfig.Tmpfs": check_tmpfs,
    "HostConfig.ShmSize": check_shm_size, "HostConfig.ExtraHosts": check_extra_hosts,
    "HostConfig.Sysctls": check_sysctls, "HostConfig.OomScoreAdj": check_oom_score_adj,
    "HostConfig.MaskedPaths": check_masked_paths, "HostConfig.ReadonlyPaths": check_readonly_paths,
    "HostConfig.CgroupnsMode": check_cgroupns, "HostConfig.IpcMode": check_ipc_mode,
    "HostConfig.UsernsMode": check_userns_mode, "HostConfig.NetworkMode": check_network_mode,
    "HostConfig.AutoRemove": check_auto_remove, "HostConfig.LogConfig": check_log_config,
    "HostConfig.RestartPolicy": check_restart_policy, "HostConfig.Runtime": check_runtime,
    "HostConfig.Isolation": check_isolation, "HostConfig.ContainerIDFile": check_container_id_file,
}
REFUSED = [f for f in ALL_FIELDS if f not in APPLIED]


def test_every_field_of_api_1_41_is_either_checked_as_applied_or_expected_refused():
    assert not set(APPLIED) - set(ALL_FIELDS), "a check for a field API 1.41 does not have"
    assert sorted(REFUSED) == sorted(REFUSED_SAMPLES), "every refused field needs a sample value"


def test_the_engines_own_table_agrees_with_the_kernel_checks():
    from labkit.engine import spec
    assert set(spec.APPLIED) == set(APPLIED)


@pytest.mark.parametrize("field", sorted(APPLIED))
def test_applied_field_is_visible_in_the_kernel(engine, field):
    APPLIED[field](engine)


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_unapplied_field_is_refused_naming_it(engine, field):
    refused(engine, field, REFUSED_SAMPLES[field])


def test_the_docker_clis_default_create_body_asks_for_nothing_refused(engine):
    assert out(engine, IMAGE, "echo", "defaults") == "defaults\n"


def test_a_refused_flag_reaches_the_cli_user_with_its_name(engine):
    result = docker(engine, "run", "--rm", "--privileged", IMAGE, "true")
    assert result.returncode != 0
    assert b"HostConfig.Privileged" in result.stderr and b"--privileged" in result.stderr
