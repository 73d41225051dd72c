"""labkit.container on the real kernel, checked from OUTSIDE the container.

What a container is made of is read where the kernel shows it: /proc/PID/root, /proc/PID/ns/*,
/proc/PID/status (NSpid), /proc/PID/cgroup, /sys/fs/cgroup/*/labkit-NAME, /proc/self/mountinfo and
the overlay's upper directory on the host - not labkit's own bookkeeping.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kernel_state as ks
from labkit import cleanup, container, escape, rootfs
from labkit.container import Container
from labkit.errors import Conflict, InvalidValue

pytestmark = pytest.mark.root

LABKIT = [sys.executable, "-m", "labkit.cli"]
CGROUP_ROOT = Path("/sys/fs/cgroup")


def status_field(pid: int, name: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1:]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def sleeper():
    box = Container("busybox", ["sleep", "30"], hostname="boxhost", mem_limit="64M", pids_limit=32)
    box.start()
    yield box
    box.delete(force=True)


def test_root_is_the_busybox_rootfs_and_host_files_are_unreachable(sleeper, tmp_path):
    pid = sleeper.pid
    base = rootfs.base_layer().path
    # what the container's pid 1 sees as / is the busybox tree (seen through /proc/PID/root)
    assert sorted(os.listdir(f"/proc/{pid}/root")) == sorted(os.listdir(base))
    assert "labkit busybox" in Path(f"/proc/{pid}/root/etc/os-release").read_text()
    assert os.path.samefile(f"/proc/{pid}/root/bin/busybox", sleeper.rootfs.merged / "bin/busybox")
    # its / is the overlay mount, with the upper dir in this container's work dir
    mounts = rootfs.read_mountinfo(pid)
    root = next(m for m in mounts if m["mountpoint"] == "/")
    assert root["fstype"] == "overlay"
    assert rootfs.overlay_layers(root)["upper"] == str(sleeper.rootfs.upper)
    assert not any(m["mountpoint"].startswith("/work") or m["mountpoint"] == "/home/host" for m in mounts)
    # a host file is not reachable by its path inside
    secret = tmp_path / "host-only.txt"
    secret.write_text("host secret\n")
    result = sleeper.exec(["cat", str(secret)])
    assert result.returncode != 0 and "host secret" not in result.stdout
    assert sleeper.exec(["ls", "/"]).stdout.split() == sorted(os.listdir(base))


def test_hostname_and_pid_1_are_the_containers(sleeper):
    pid = sleeper.pid
    for kind in ("pid", "mnt", "uts", "ipc", "net"):
        assert os.stat(f"/proc/{pid}/ns/{kind}").st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino, kind
    assert status_field(pid, "NSpid")[-1] == "1"            # host pid ... 1 inside
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"/sbin/tini"
    assert sleeper.exec(["hostname"]).stdout.strip() == "boxhost"
    assert os.uname().nodename != "boxhost"
    # an exec'd process joins the very same namespaces (inode numbers are global)
    for kind in ("uts", "net", "mnt"):
        inside = sleeper.exec(["readlink", f"/proc/self/ns/{kind}"]).stdout.strip()
        assert inside == os.readlink(f"/proc/{pid}/ns/{kind}")
    ps = sleeper.exec(["ps", "-o", "pid,comm"]).stdout
    assert "1 tini" in " ".join(ps.split())


def test_pid_1_reaps_orphans_only_with_the_init(tmp_path):
    """An orphan is re-parented to pid 1; tini reaps it, a plain command as pid 1 leaves a zombie."""
    script = ["sh", "-c", "sh -c 'sleep 0.1 &'; exec sleep 20"]   # the inner sh exits: sleep 0.1 is orphaned
    for init in (True, False):
        with Container("busybox", script, init=init) as box:
            box.start()
            pids_current = Path(box.cgroup.path("pids"), "pids.current")

            def settled():       # the orphan has exited: a zombie under pid 1, or reaped and gone
                commands = [_comm(p) for p in box.cgroup.procs()]
                return "sleep" in commands and len(commands) == (2 if init else 1) and \
                    int(pids_current.read_text()) == len(commands) + (0 if init else 1)
            assert ks.wait_until(settled, 10), (box.cgroup.procs(), pids_current.read_text())
            kids = Path(f"/proc/{box.pid}/task/{box.pid}/children").read_text().split()
            zombies = [k for k in kids if Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"]
            assert len(zombies) == (0 if init else 1), (init, kids)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_memory_limit_is_in_force_oom_at_the_limit():
    with Container("busybox", ["dd", "if=/dev/zero", "of=/dev/null", "bs=48M", "count=1"],
                   mem_limit="16M") as box:
        box.start()
        returncode = box.wait(30)
        limit = int((CGROUP_ROOT / "memory" / box.cgroup.relpath / "memory.limit_in_bytes").read_text()) \
            if box.cgroup.version == "v1" else int((CGROUP_ROOT / box.cgroup.relpath / "memory.max").read_text())
        if box.cgroup.version == "v1":
            oom = dict(line.split() for line in
                       (CGROUP_ROOT / "memory" / box.cgroup.relpath / "memory.oom_control").read_text().splitlines())
            assert int(oom["oom_kill"]) >= 1
        assert limit == 16 * 2**20
        assert returncode in (137, -9)          # tini reports its child's SIGKILL as 128+9
        assert box.oom_killed()


def test_pids_and_cpu_limits_are_in_force():
    cmd = ["sh", "-c", "sleep 0.5; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; wait"]
    with Container("busybox", cmd, pids_limit=6, cpu=0.5) as box:
        box.start()
        # the process really is in that cgroup, as /proc/PID/cgroup says
        assert any(line.endswith("/" + box.cgroup.relpath)
                   for line in Path(f"/proc/{box.pid}/cgroup").read_text().splitlines())
        assert wait_until(lambda: "can't fork" in box.logs() or "Resource" in box.logs())
        if box.cgroup.version == "v1":
            assert (CGROUP_ROOT / "pids" / box.cgroup.relpath / "pids.max").read_text().strip() == "6"
            assert (CGROUP_ROOT / "cpu" / box.cgroup.relpath / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert len(box.cgroup.procs()) <= 6


def test_copy_on_write_and_whiteouts_appear_in_the_upper_dir():
    base = rootfs.base_layer().path
    before = (base / "etc/hostname").read_text()
    with Container("busybox", ["sh", "-c", "echo changed > /etc/hostname; rm /etc/passwd; "
                                           "echo new > /root/new.txt; cat /etc/hostname"]) as box:
        box.start()
        assert box.wait(10) == 0
        assert box.logs().strip() == "changed"
        upper = box.rootfs.upper
        assert (upper / "etc/hostname").read_text() == "changed\n"          # copied up, then changed
        st = os.lstat(upper / "etc/passwd")                                   # a whiteout: char 0:0
        assert (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0
        assert (upper / "root/new.txt").read_text() == "new\n"
        assert ("D", "/etc/passwd") in box.rootfs.changes()
        assert ("C", "/etc/hostname") in box.rootfs.changes()
    # the read-only base layer never changed
    assert (base / "etc/hostname").read_text() == before
    assert (base / "etc/passwd").exists()


def test_read_only_root():
    result = container.run("busybox", ["sh", "-c", "touch /x || echo refused; touch /tmp/y || echo refused"],
                           read_only=True)
    assert result.stdout.split() == ["refused", "refused"]
    assert "Read-only file system" in result.stderr


def test_chroot_escape_works_but_not_after_pivot_root():
    escaped = escape.chroot_escape("chroot")
    assert escaped.escaped and escaped.root_entries == escaped.host_root
    contained = escape.chroot_escape("pivot_root")
    assert not contained.escaped
    assert "linuxrc" in contained.root_entries and contained.root_entries != contained.host_root


def test_create_waits_until_start():
    with Container("busybox", ["sh", "-c", "echo started"]) as box:
        box.create()
        assert box.state()["status"] == "created"
        pid = box.pid
        # everything exists: namespaces, cgroup membership, the pivoted root - but not the command
        assert os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        assert any(line.endswith("/" + box.cgroup.relpath) for line in
                   Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in line or line.startswith("0::"))
        assert os.path.exists(f"/proc/{pid}/root/bin/busybox")
        assert b"tini" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert box.logs() == ""
        box.start()
        assert box.wait(10) == 0
        assert box.state() == {"ociVersion": "1.0.2", "id": box.name, "status": "stopped", "pid": pid,
                               "bundle": str(box.rootfs.dir), "annotations": {}}
        assert box.logs() == "started\n"


def test_kill_stops_a_running_container():
    with Container("busybox", ["sleep", "60"]) as box:
        box.start()
        assert box.state()["status"] == "running"
        box.kill(signal.SIGTERM)
        assert box.wait(10) in (143, -15)
        assert box.state()["status"] == "stopped"


def test_two_containers_with_the_same_name_conflict():
    with Container("busybox", ["sleep", "10"], name="samename") as first:
        first.start()
        with pytest.raises(Conflict):
            Container("busybox", ["true"], name="samename").start()
        assert first.state()["status"] == "running"       # the loser did not disturb the winner
    assert container.run("busybox", ["true"], name="samename").returncode == 0


def ours() -> set:
    """Objects this test process owns (other engineers' live objects come and go meanwhile)."""
    return {(i.kind, i.name) for i in cleanup.find_all(include_in_use=True) if i.owner_pid == os.getpid()}


def test_bad_input_is_refused_before_anything_exists():
    before = ours()
    for kwargs in ({"mem_limit": "lots"}, {"pids_limit": -1}, {"name": "../etc"},
                   {"namespaces": ["pid", "uts"]}, {"hostname": "x" * 65}, {"working_dir": "rel"}):
        with pytest.raises(InvalidValue):
            Container("busybox", ["true"], **kwargs)
    assert ours() == before


def test_after_delete_nothing_remains():
    box = Container("busybox", ["sleep", "30"], mem_limit="32M", cpu=0.5, pids_limit=10)
    box.start()
    pid, name, work = box.pid, box.name, str(box.rootfs.dir)
    cgroup_dirs = [d for d in CGROUP_ROOT.glob(f"*/{box.cgroup.relpath}")] or \
        [CGROUP_ROOT / box.cgroup.relpath]
    assert cgroup_dirs and all(d.is_dir() for d in cgroup_dirs)
    mounted = [m["mountpoint"] for m in rootfs.read_mountinfo() if m["mountpoint"].startswith(work)]
    assert sorted(mounted) == [work, work + "/rootfs"]
    box.delete(force=True)
    assert not os.path.exists(f"/proc/{pid}")
    assert not [m for m in rootfs.read_mountinfo() if m["mountpoint"].startswith(work)]
    assert not any(d.exists() for d in cgroup_dirs)
    assert not os.path.exists(work)
    assert not [i for i in cleanup.find_all(include_in_use=True) if i.name == name]


def test_run_captures_output_and_exit_status():
    result = container.run("busybox", ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_cli_run_passes_output_and_exit_status_through():
    proc = subprocess.run([*LABKIT, "run", "--hostname", "clibox", "--memory", "32M", "--pids", "16",
                           "--", "sh", "-c", "hostname; exit 3"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (3, "clibox\n"), proc.stderr


def test_cli_run_forks_its_container_itself_and_imports_only_what_a_start_needs():
    """`labkit run` starts one container and exits: no starter (container.ONE_SHOT), so none of the
    starter's pickle and socket; its own argument parser, so no argparse; no subprocess. Checked
    after a real run, lazy imports included (tests/unit/test_start_imports.py: the static ones)."""
    code = ("import sys\nfrom labkit import cli\ncode = cli.main(['run', '--memory', '32M', '--', 'sh', '-c', 'exit 4'])\n"
            "print(code, ' '.join(m for m in ('labkit.starter', 'argparse', 'pickle', 'socket', 'subprocess', "
            "'dataclasses') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, LABKIT_ALLOW_HOST="1"))
    assert proc.stdout.split(" ", 1) == ["4", "\n"], (proc.stdout, proc.stderr)


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_cli_runs_a_runc_spec_bundle(tmp_path):
    subprocess.run(["runc", "spec"], cwd=tmp_path, check=True)
    rootfs.export(tmp_path / "rootfs")
    config = json.loads((tmp_path / "config.json").read_text())
    config["process"]["args"] = ["/bin/sh", "-c", "echo hi; hostname"]
    config["process"]["terminal"] = False
    config["hostname"] = "bundlehost"
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([*LABKIT, "run", "--bundle", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "hi\nbundlehost\n"), proc.stderr


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_cli_gives_a_terminal_bundle_a_pty_of_its_own(tmp_path):
    """process.terminal, as `runc spec` writes it, is applied, not ignored: pid 1's stdio is a pty
    of the container's devpts, sized by consoleSize, relayed to labkit's own stdout (a pipe here:
    the pty's \r\n line ends show it went through a terminal); its exit status comes back."""
    subprocess.run(["runc", "spec"], cwd=tmp_path, check=True)
    rootfs.export(tmp_path / "rootfs")
    config = json.loads((tmp_path / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", "tty; stty size; exit 5"]
    config["process"]["consoleSize"] = {"height": 30, "width": 100}
    assert config["process"]["terminal"] is True            # runc spec's default
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([*LABKIT, "run", "--bundle", str(tmp_path)], capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert (proc.returncode, proc.stdout) == (5, b"/dev/pts/0\r\n30 100\r\n"), proc.stderr


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_cli_refuses_an_unsupported_bundle_field(tmp_path):
    subprocess.run(["runc", "spec"], cwd=tmp_path, check=True)
    (tmp_path / "rootfs").mkdir()
    config = json.loads((tmp_path / "config.json").read_text())
    config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([*LABKIT, "run", "--bundle", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "linux.seccomp" in proc.stderr


def test_containers_on_a_network_reach_each_other():
    from labkit import net

    with net.Network() as network:
        with Container("busybox", ["sleep", "20"], network=network) as server, \
                Container("busybox", ["sh", "-c", "ip -4 -o addr show eth0; ping -c 1 -W 2 $PEER"],
                          network=network, environment={"PEER": ""}) as client:
            server.start()
            client.environment["PEER"] = server.ip
            client.start()
            assert client.wait(20) == 0, client.logs()
            assert client.ip in client.logs() and f"from {server.ip}" in client.logs()
            # seen from outside: the server's network namespace has an eth0 (/proc/PID/net/dev is per netns)
            assert "eth0:" in Path(f"/proc/{server.pid}/net/dev").read_text()
        # the containers' namespaces are gone with them; the veth ends too
        assert not [e for e in network.endpoints if e.label in (server.name, client.name)]


def test_delete_of_a_created_container_that_never_started():
    box = Container("busybox", ["sh", "-c", "echo never"], mem_limit="32M")
    box.create()
    pid, work = box.pid, str(box.rootfs.dir)
    assert os.path.exists(f"/proc/{pid}")
    box.delete()
    assert not os.path.exists(f"/proc/{pid}")
    assert not [m for m in rootfs.read_mountinfo() if m["mountpoint"].startswith(work)]
    assert not os.path.exists(work)
    assert not [i for i in cleanup.find_all(include_in_use=True) if i.name == box.name]
