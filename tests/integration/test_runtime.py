"""labkit-runtime behind the real Docker: the same docker commands through `--runtime runc` and
`--runtime labkit`, and the same kernel facts read for both from outside (/proc/PID/ns, /proc/PID/status,
cgroupfs, mountinfo) - never from labkit's own bookkeeping.

Needs what `make test` provisions: docker.io, and labkit-runtime registered in /etc/docker/daemon.json
as the runtime `labkit` (vagrant/provision.sh does it). A missing registration fails, it is not skipped.

The same tests run on this lab's host (cgroup v1, Docker's cgroupfs driver, dockerd's own containerd)
and in the Debian 13 guest tier (cgroup v2, Docker's systemd driver, the system's containerd): every
cgroup file is found from /proc/PID/cgroup, and the runtime's --root from the shim (observe.docker_layout).
"""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

import labkit
from labkit import cleanup, dockerd, rootfs
from labkit.emulation import scaled

pytestmark = pytest.mark.root
RUNTIMES = ("runc", "labkit")
V2 = not Path("/sys/fs/cgroup/memory").is_dir()
# the same limit under its v1 and v2 file names
FILES = {"memory": ("memory.limit_in_bytes", "memory.max"), "memsw": ("memory.memsw.limit_in_bytes", "memory.swap.max"),
         "pids": ("pids.max", "pids.max"), "quota": ("cpu.cfs_quota_us", "cpu.max"),
         "freezer": ("freezer.state", "cgroup.freeze"), "procs": ("cgroup.procs", "cgroup.procs")}
CONTROLLER = {"memory": "memory", "memsw": "memory", "pids": "pids", "quota": "cpu", "freezer": "freezer",
              "procs": "pids"}


@pytest.fixture(scope="module")
def image():
    with dockerd.Dockerd() as daemon:
        runtimes = json.loads(daemon.docker("info", "--format", "{{json .Runtimes}}").stdout)
        assert "labkit" in runtimes, "labkit-runtime is not registered with Docker: run vagrant/provision.sh"
        entry = Path(runtimes["labkit"]["path"])
        checkout = Path(labkit.__file__).resolve().parents[1]
        assert f"sys.path[:0] = [\"{checkout}\"]" in entry.read_text(), (
            f"Docker's runtime 'labkit' ({entry}) runs another checkout's labkit, not this one's "
            f"({checkout}): LABKIT_RUNTIME_TAKEOVER=1 bash vagrant/provision.sh")
        ref = dockerd.import_rootfs(rootfs.base_layer().path)
        try:
            yield ref
        finally:
            dockerd.remove_image(ref)


@pytest.fixture(scope="module")
def layout(image):
    """Where this Docker keeps things (runtime --root, cgroup driver), read from a container's shim."""
    from labkit.runtime import observe
    name = cleanup.unique_name("rt-layout")
    cleanup.claim("docker-container", name)
    try:
        cid = run("runc", image, "sleep", "30", name=name, options=("-d",)).stdout.decode().strip()
        where = observe.docker_layout(int(docker("inspect", "-f", "{{.State.Pid}}", cid).stdout))
    finally:
        docker("rm", "--force", name)
        cleanup.release("docker-container", name)
    return where


@pytest.fixture
def names():
    """Unique container names, claimed by this test (so no sweep takes them), removed afterwards."""
    made = []

    def make(runtime: str) -> str:
        name = cleanup.unique_name(f"rt-{runtime}")
        cleanup.claim("docker-container", name)
        made.append(name)
        return name
    yield make
    for name in made:
        dockerd.docker("rm", "--force", name, check=False)
        cleanup.release("docker-container", name)


def docker(*args, timeout=60) -> subprocess.CompletedProcess:
    return dockerd.docker(*args, timeout=timeout, check=False)


def run(runtime, image, *args, name=None, options=()) -> subprocess.CompletedProcess:
    return docker("run", "--runtime", runtime, "--network", "none", *(["--name", name] if name else []),
                  *options, image, *args)


def started(runtime, image, names, *options, command=("sleep", "60")) -> tuple[str, int]:
    """A detached container; (its id, its pid 1's host pid)."""
    name = names(runtime)
    result = run(runtime, image, *command, name=name, options=("-d", *options))
    assert result.returncode == 0, result.stderr
    cid = result.stdout.decode().strip()
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
    assert pid > 0
    return cid, pid


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def cgroup_dir(pid: int, controller: str) -> Path:
    """The process's cgroup directory, as /proc/PID/cgroup names it (v2: the one hierarchy)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if V2 and controllers == "":
            return Path(f"/sys/fs/cgroup{path}")
        if not V2 and controller in controllers.split(","):
            return Path(f"/sys/fs/cgroup/{controller}{path}")
    raise KeyError(controller)


def cgroup_file(pid: int, what: str) -> str:
    """A limit of the container whose pid 1 is `pid`, read from its cgroup (v2's freeze as v1's words)."""
    value = (cgroup_dir(pid, CONTROLLER[what]) / FILES[what][V2]).read_text().strip()
    return {"0": "THAWED", "1": "FROZEN"}.get(value, value) if what == "freezer" else value


def wait_for(condition, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_run_rm_prints_and_leaves_nothing(image, names, runtime, tmp_path, layout):
    name = names(runtime)
    result = run(runtime, image, "echo", "hi", name=name, options=("--rm", "--cidfile", str(tmp_path / "cid")))
    assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr
    cid = (tmp_path / "cid").read_text().strip()
    assert name not in docker("ps", "-a", "--format", "{{.Names}}").stdout.decode().split()
    # neither the runtime's state directory nor the container's cgroup outlives it
    assert not (Path(layout["runtime root"]) / cid).exists()
    # (cgroupfs driver: docker/ID in each hierarchy; systemd driver: system.slice/docker-ID.scope)
    assert not [d for pattern in (f"docker/{cid}", f"*/docker/{cid}", f"system.slice/docker-{cid}.scope")
                for d in Path("/sys/fs/cgroup").glob(pattern)]


def test_same_kernel_facts_for_both_runtimes(image, names):
    facts = {}
    host_ns = {k: os.stat(f"/proc/self/ns/{k}").st_ino for k in ("pid", "mnt", "net", "uts", "ipc")}
    for runtime in RUNTIMES:
        cid, pid = started(runtime, image, names, "--memory", "32m", "--pids-limit", "20", "--cpus", "0.5")
        own = {k for k in host_ns if os.stat(f"/proc/{pid}/ns/{k}").st_ino != host_ns[k]}
        parent = int(status_field(pid, "PPid"))
        facts[runtime] = {
            "own namespaces": own,
            "pid inside": status_field(pid, "NSpid").split()[-1],
            "parent": Path(f"/proc/{parent}/comm").read_text().strip(),
            "cgroup": sorted({line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                              if line.split(":")[1] in (("",) if V2 else ("memory", "pids", "cpu,cpuacct", "cpu"))}),
            "memory": cgroup_file(pid, "memory"),
            "memsw": cgroup_file(pid, "memsw"),
            "pids": cgroup_file(pid, "pids"),
            "quota": cgroup_file(pid, "quota"),
            "CapBnd": status_field(pid, "CapBnd"),
            "Seccomp": status_field(pid, "Seccomp"),
            "hostname": docker("exec", cid, "hostname").stdout.decode().strip() == cid[:12],
        }
        facts[runtime]["cgroup"] = [c.replace(cid, "ID") for c in facts[runtime]["cgroup"]]
        docker("rm", "--force", cid)
    assert facts["labkit"] == facts["runc"]
    assert facts["labkit"]["own namespaces"] == set(host_ns)
    assert facts["labkit"]["parent"].startswith("containerd-shim")     # pid 1 belongs to the shim
    assert facts["labkit"]["memory"] == str(32 * 2**20) and facts["labkit"]["pids"] == "20"
    assert facts["labkit"]["quota"] in ("50000", "50000 100000") and facts["labkit"]["cgroup"]


def kernel_log() -> str:
    """What the kernel's ring buffer holds now (/dev/kmsg, read without blocking)."""
    lines = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                lines.append(os.read(fd, 8192).decode(errors="replace"))
            except BlockingIOError:
                return "".join(lines)
            except BrokenPipeError:      # a record overwritten while we read: go on with the next
                continue
    finally:
        os.close(fd)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_memory_limit_oom_kills_and_docker_sees_it(image, names, runtime, layout):
    name = names(runtime)
    result = run(runtime, image, "sh", "-c", 'x=a; while true; do x="$x$x"; done', name=name,
                 options=("--memory", "16m", "--memory-swap", "16m"))
    assert result.returncode == 137
    state = json.loads(docker("inspect", "-f", "{{json .State}}", name).stdout)
    if not layout["systemd cgroup"]:
        assert state["OOMKilled"] is True
        return
    # Under Docker's systemd driver, systemd removes a scope's cgroup the moment its last process is
    # gone (here: 0.5 ms after the OOM kill), and the shim learns of OOM kills by reading the cgroup's
    # memory.events when inotify wakes it: if it wakes later (under emulation it does), the file is
    # gone and Docker never hears of it - with runc as with labkit (seen in the guest tier for both).
    # So the kernel is asked: its OOM report names the container's scope as the memory cgroup.
    cid = docker("inspect", "-f", "{{.Id}}", name).stdout.decode().strip()
    assert f"oom_memcg=/system.slice/docker-{cid}.scope" in kernel_log()


def test_read_only_user_and_cap_drop(image, names):
    seen = {}
    for runtime in RUNTIMES:
        cid, pid = started(runtime, image, names, "--read-only", "--user", "1000:1000",
                           "--cap-drop", "CHOWN", "--cap-drop", "NET_RAW")
        root = next(line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                    if line.split()[4] == "/")
        touch = docker("exec", cid, "touch", "/x")
        seen[runtime] = (status_field(pid, "Uid").split()[0], status_field(pid, "Gid").split()[0],
                         status_field(pid, "CapBnd"), status_field(pid, "CapEff"),
                         "ro" in root.split()[5].split(","), touch.returncode,
                         b"Read-only file system" in touch.stderr)
        docker("rm", "--force", cid)
    assert seen["labkit"] == seen["runc"]
    assert seen["labkit"][:2] == ("1000", "1000") and seen["labkit"][4] is True
    bounding = int(seen["labkit"][2], 16)
    assert not bounding & (1 << 0) and not bounding & (1 << 13)         # CHOWN, NET_RAW dropped


def test_exec_joins_the_container(image, names):
    cid, pid = started("labkit", image, names)
    result = docker("exec", cid, "sh", "-c", "readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; cat /proc/self/cgroup")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == os.readlink(f"/proc/{pid}/ns/pid") and lines[1] == os.readlink(f"/proc/{pid}/ns/mnt")
    if os.readlink(f"/proc/{pid}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup"):
        # its own cgroup namespace (Docker's default on v2): the root of it is the container's cgroup,
        # so "0::/" says the exec'd process joined both; a process elsewhere would see "/../..."
        assert lines[2:] == ["0::/"], lines
    else:
        assert any(f"docker/{cid}" in line or f"docker-{cid}.scope" in line for line in lines[2:])


def test_stop_kill_logs_pause(image, names):
    cid, pid = started("labkit", image, names, command=(
        "sh", "-c", 'echo ready; trap "echo got TERM; exit 3" TERM; while true; do sleep 0.1; done'))
    wait_for(lambda: b"ready" in docker("logs", cid).stdout, "the container's first line")
    assert docker("pause", cid).returncode == 0
    assert cgroup_file(pid, "freezer") == "FROZEN"
    assert docker("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == b"paused"
    assert docker("unpause", cid).returncode == 0
    assert cgroup_file(pid, "freezer") == "THAWED"
    top = docker("top", cid)
    assert str(pid).encode() in top.stdout
    assert docker("stop", "-t", "10", cid).returncode == 0
    assert docker("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == b"3"
    assert docker("logs", cid).stdout == b"ready\ngot TERM\n"
    assert not os.path.exists(f"/proc/{pid}") or status_field(pid, "State").startswith("Z")


def test_kill_and_update(image, names):
    cid, pid = started("labkit", image, names, "--memory", "32m")
    assert docker("update", "--memory", "48m", "--memory-swap", "48m", cid).returncode == 0
    assert cgroup_file(pid, "memory") == str(48 * 2**20)
    assert docker("kill", cid).returncode == 0
    assert docker("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip() == b"137"


def test_tty_through_a_pty(image, names):
    """`docker run -it`: the pty master travels over --console-socket; inside, stdin is /dev/pts/0."""
    master, slave = pty.openpty()
    name = names("labkit")
    proc = subprocess.Popen([dockerd.DOCKER, "run", "--rm", "-it", "--runtime", "labkit", "--network", "none",
                             "--name", name, image, "sh", "-c", "tty; echo done"],
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + scaled(30)
    while b"done" not in out and time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                out += os.read(master, 1024)
            except OSError:
                break
    assert proc.wait(scaled(30)) == 0
    os.close(master)
    assert b"/dev/pts/0" in out, out


def test_unsupported_field_is_refused_by_name(image, names):
    """`--cpu-shares` writes linux.resources.cpu.shares, which labkit does not apply: refused at create."""
    result = run("labkit", image, "true", name=names("labkit"), options=("--cpu-shares", "512"))
    assert result.returncode != 0
    assert b"linux.resources.cpu.shares" in result.stderr
    assert run("runc", image, "true", name=names("runc"), options=("--cpu-shares", "512")).returncode == 0


def test_exercise_checker_of_notebook_41(image, names):
    """observe.check_pid_one: right for the container's pid 1, wrong for its parent, for another
    process inside it, and for something that is not a pid."""
    from labkit.runtime import observe

    cid, pid = started("labkit", image, names)
    docker("exec", "-d", cid, "sleep", "30")
    inside = wait_for(lambda: [p for p in map(int, cgroup_file(pid, "procs").split()) if p != pid],
                      "the exec'd process")
    assert observe.check_pid_one(cid, str(pid))[0]
    assert not observe.check_pid_one(cid, str(int(status_field(pid, "PPid"))))[0]
    correct, why = observe.check_pid_one(cid, str(inside[0]))
    assert not correct and "not 1" in why
    assert not observe.check_pid_one(cid, "pid one")[0]


def test_systemd_driver_limits_survive_daemon_reload(image, names, layout):
    """Docker's systemd cgroup driver: the container is a scope systemd made, and its limits are the
    unit's own properties - a `systemctl daemon-reload`, which rewrites every unit's cgroup files from
    its properties, leaves them as runc's (and `docker update` changes the property too)."""
    if not layout["systemd cgroup"]:
        pytest.skip("this Docker uses the cgroupfs driver (no systemd as init here); the guest tier runs this")
    seen = {}
    for runtime in RUNTIMES:
        cid, pid = started(runtime, image, names, "--memory", "32m", "--pids-limit", "20", "--cpus", "0.5")
        unit = f"docker-{cid}.scope"
        assert cgroup_dir(pid, "memory") == Path(f"/sys/fs/cgroup/system.slice/{unit}")
        subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
        seen[runtime] = {what: cgroup_file(pid, what) for what in ("memory", "pids", "quota")}
        seen[runtime]["unit"] = [subprocess.run(["systemctl", "show", "-P", key, unit], capture_output=True,
                                                text=True).stdout.strip() for key in ("ActiveState", "Delegate")]
        if runtime == "labkit":
            assert docker("update", "--memory", "48m", "--memory-swap", "48m", cid).returncode == 0
            assert subprocess.run(["systemctl", "show", "-P", "MemoryMax", unit], capture_output=True,
                                  text=True).stdout.strip() == str(48 * 2**20)
        docker("rm", "--force", cid)
        wait_for(lambda: subprocess.run(["systemctl", "is-active", unit], capture_output=True,
                                        text=True).stdout.strip() != "active", f"{unit} stopped")
    assert seen["labkit"] == seen["runc"]
    assert seen["labkit"]["memory"] == str(32 * 2**20) and seen["labkit"]["pids"] == "20"
    assert seen["labkit"]["quota"] == "50000 100000" and seen["labkit"]["unit"] == ["active", "yes"]
