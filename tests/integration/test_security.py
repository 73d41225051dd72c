"""Security: who may use labkit, what its sockets and names allow, and what a container cannot do.

- the guard: nothing is created off a lab host unless opted in; non-root gets a clear refusal
- the engine's socket: root-owned, mode 0600, and an unprivileged user really cannot connect
- names and image references cannot reach outside labkit's directories
- a container cannot see or signal host processes, cannot read host files outside its root,
  and cannot write to the read-only image layer beneath it

JupyterLab (loopback only, token required) is tested in tests/integration/test_lab_server.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import kernel_state as ks
from labkit import cleanup, container, rootfs
from labkit.container import Container
from labkit.errors import InvalidValue, NotFound

pytestmark = pytest.mark.root

PY = sys.executable
LABKIT = str(Path(PY).parent / "labkit")
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
HERE = Path(__file__).resolve().parent

CREATE_SOMETHING = """
from labkit.cgroups import Cgroup
Cgroup.create(pids=5)
print("created")
"""


def _off_lab_host_env() -> dict:
    env = dict(os.environ, LABKIT_MARKER="/nonexistent/labkit/lab-host")
    env.pop("LABKIT_ALLOW_HOST", None)
    return env


# --- the guard ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [PY, "-c", CREATE_SOMETHING],
    [PY, "-c", "from labkit import container; container.run('busybox', ['true'])"],
    [LABKIT, "spawn", "--pids", "5", "--", "true"],
    [LABKIT, "run", "--", "true"],
    [LABKIT, "trace", "--socket", "/run/labkit/engine/labkit-guard-probe.sock", "--upstream", "/nonexistent"],
], ids=["Cgroup.create", "container.run", "labkit spawn", "labkit run", "labkit trace"])
def test_nothing_is_created_off_a_lab_host_without_the_opt_in(argv):
    before = ks.snapshot()
    refused = subprocess.run(argv, env=_off_lab_host_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "created" not in refused.stdout
    # the message says why and how to opt in
    assert "/nonexistent/labkit/lab-host" in refused.stderr, refused.stderr[-1500:]
    assert "LABKIT_ALLOW_HOST=1" in refused.stderr, refused.stderr[-1500:]
    assert "Traceback" not in refused.stderr or "NotPermitted" in refused.stderr
    assert ks.new_objects(before, ks.snapshot(), owners=set()) == []


def test_the_opt_in_is_what_makes_the_difference():
    env = dict(_off_lab_host_env(), LABKIT_ALLOW_HOST="1")
    allowed = subprocess.run([PY, "-c", CREATE_SOMETHING.replace("Cgroup.create(pids=5)",
                                                                 "Cgroup.create(pids=5).delete()")],
                             env=env, capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0 and allowed.stdout.strip() == "created", allowed.stderr[-1500:]


@pytest.fixture(scope="module")
def as_nobody():
    """run(args, **options): Python as nobody, with THIS checkout's labkit importable.

    nobody may not be able to read the checkout at all: a clone under /root, or under `mktemp -d`,
    lies in a 0700 directory, and so does the venv inside it. So the package is copied into a
    world-readable directory and run with the venv's base interpreter (labkit's refusal path needs
    the standard library only)."""
    import labkit

    view = Path(tempfile.mkdtemp(prefix="nobody-view-"))
    try:
        shutil.copytree(Path(labkit.__file__).parent, view / "labkit",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in [view, *view.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        python = _python_nobody_can_run()

        def run(args, env=None, **options):
            env = dict(os.environ if env is None else env, PYTHONPATH=str(view))
            return subprocess.run(NOBODY + [python, "-s", *args], env=env, capture_output=True,
                                  text=True, **options)
        yield run
    finally:
        shutil.rmtree(view)


def _python_nobody_can_run() -> str:
    """The venv's base interpreter, or the system's when that one lies in a private directory too
    (a pyenv build under /root)."""
    candidates = [getattr(sys, "_base_executable", PY), "/usr/bin/python3"]
    for python in candidates:
        probe = subprocess.run(NOBODY + [python, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return python
    pytest.fail(f"nobody can run none of {candidates}: no Python to test the refusal with")


NOBODY_CREATES = [["-c", CREATE_SOMETHING], ["-m", "labkit.cli", "spawn", "--", "true"]]


@pytest.mark.parametrize("argv", NOBODY_CREATES, ids=["Cgroup.create", "labkit spawn"])
def test_non_root_gets_a_clear_refusal(argv, as_nobody):
    before = ks.snapshot()
    env = dict(os.environ, LABKIT_ALLOW_HOST="1", HOME="/nonexistent")
    refused = as_nobody(argv, env=env, timeout=60)
    assert refused.returncode != 0 and "created" not in refused.stdout
    assert "needs root" in refused.stderr, refused.stderr[-1500:]
    assert ks.new_objects(before, ks.snapshot(), owners=set()) == []


def test_the_unprivileged_checks_pass_from_a_clone_in_a_0700_directory():
    """A newcomer clones as root into /root or `mktemp -d`, both 0700: nobody cannot enter the
    checkout, nor its venv. The checks that run labkit as nobody must pass from such a clone."""
    checkout = HERE.parent.parent
    outer = Path(tempfile.mkdtemp(prefix="clone-0700-"))
    try:
        assert stat.S_IMODE(outer.stat().st_mode) == 0o700
        clone = outer / "lab"
        for part in ("labkit", "tests"):
            shutil.copytree(checkout / part, clone / part,
                            ignore=shutil.ignore_patterns("__pycache__", "test-output"))
        shutil.copy2(checkout / "pyproject.toml", clone)
        # its own venv, inside the clone; the dependencies come from ours (a path entry, so its
        # .pth files - the editable install pointing at OUR checkout - are not read)
        venv = clone / ".venv"
        subprocess.run([getattr(sys, "_base_executable", PY), "-m", "venv", "--without-pip", str(venv)],
                       check=True, timeout=120)
        import sysconfig
        site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
        (site / "lab-0700.pth").write_text(f"{clone}\n{sysconfig.get_paths()['purelib']}\n")
        tests = clone / "tests" / "integration" / "test_security.py"
        inner = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{tests}::test_non_root_gets_a_clear_refusal",
             f"{tests}::test_the_engine_socket_is_root_only_and_nobody_cannot_connect"],
            cwd=clone, capture_output=True, text=True, timeout=300)
        assert inner.returncode == 0 and "3 passed" in inner.stdout, inner.stdout[-3000:] + inner.stderr[-2000:]
    finally:
        shutil.rmtree(outer)


# --- the engine's socket -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    from labkit.engine import EngineProcess

    with EngineProcess() as e:
        yield e


def _http(engine, method, path, body=None):
    from labkit.engine.wire import UnixHTTPConnection

    conn = UnixHTTPConnection(engine.socket_path, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.strip() else None
    finally:
        conn.close()


def test_the_engine_socket_is_root_only_and_nobody_cannot_connect(engine, as_nobody):
    st = os.stat(engine.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)\n")
    refused = as_nobody(["-c", probe, engine.socket_path], timeout=30)
    assert refused.stdout.strip() == "PermissionError", refused
    as_root = subprocess.run([PY, "-c", probe, engine.socket_path], capture_output=True, text=True, timeout=30)
    assert as_root.stdout.strip() == "connected"       # the probe itself works


@pytest.mark.parametrize("what", ["a regular file", "a live socket"])
def test_labkit_trace_never_unlinks_what_is_at_its_socket_path(what, tmp_path):
    """As root, `labkit trace --socket PATH` used to unlink whatever PATH was - a file, docker.sock."""
    import socket

    upstream = socket.socket(socket.AF_UNIX)
    upstream.bind(str(tmp_path / "upstream.sock"))
    upstream.listen()
    target = tmp_path / "target"
    live = None
    if what == "a regular file":
        target.write_text("precious\n")
    else:
        live = socket.socket(socket.AF_UNIX)
        live.bind(str(target))
        live.listen()
    try:
        before = os.lstat(target)
        refused = subprocess.run([LABKIT, "trace", "--socket", str(target), "--upstream", str(tmp_path / "upstream.sock")],
                                 env=dict(os.environ, LABKIT_ALLOW_HOST="1"), capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode != 0 and str(target) in refused.stderr, refused
        after = os.lstat(target)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)   # the same file, untouched
        if live is None:
            assert target.read_text() == "precious\n"
        else:
            probe = socket.socket(socket.AF_UNIX)
            probe.connect(str(target))                    # still the live socket, still listening
            probe.close()
    finally:
        upstream.close()
        if live is not None:
            live.close()


# --- names and image references stay inside labkit's directories ---------------------------------------

EVIL_NAMES = ["../../etc", "../../../tmp/x", "/etc/passwd", "a/../../b", "..", ".", "x/y", "~root",
              "box\0", "-rf", "name with space", "\n"]


@pytest.mark.parametrize("name", EVIL_NAMES, ids=repr)
def test_a_name_cannot_escape_labkits_directories(name):
    before = ks.snapshot()
    with pytest.raises(InvalidValue) as caught:
        Container("busybox", ["true"], name=name).start()
    assert repr(name) in str(caught.value)
    with pytest.raises(InvalidValue):
        rootfs.RootFS("busybox", name=name)
    assert ks.new_objects(before, ks.snapshot()) == []


@pytest.mark.parametrize("ref", ["../../etc", "../../../../../bin", "/", "/etc", "busybox/../../..", "..",
                                 "busybox\0"], ids=repr)
def test_an_image_reference_cannot_escape_the_image_store(ref):
    with pytest.raises((InvalidValue, NotFound)) as caught:
        rootfs.image(ref)
    assert repr(ref) in str(caught.value) or ref in str(caught.value)


def test_engine_names_and_image_references_never_become_paths(engine):
    for image in ("../../../../etc", "/", "labkit-busybox/../../../etc", "..%2F..%2Fetc"):
        status, body = _http(engine, "POST", "/v1.41/containers/create", {"Image": image, "Cmd": ["true"]})
        assert status == 404 and image in body["message"], (image, status, body)
    # a Docker-valid name with dots is kept as a label only: the kernel objects get labkit's own name
    dotted = "a..b." + secrets.token_hex(3)
    status, made = _http(engine, "POST", f"/v1.41/containers/create?name={dotted}",
                         {"Image": "labkit-busybox", "Cmd": ["sleep", "30"]})
    assert status == 201, made
    try:
        assert _http(engine, "POST", f"/v1.41/containers/{made['Id']}/start")[0] == 204
        status, inspected = _http(engine, "GET", f"/v1.41/containers/{made['Id']}/json")
        labkit_name = inspected["Labkit"]["LabkitName"]
        assert labkit_name.startswith(cleanup.PREFIX) and ".." not in labkit_name and dotted not in labkit_name
        assert not any(dotted in item for items in ks.snapshot().values() for item in items)
    finally:
        assert _http(engine, "DELETE", f"/v1.41/containers/{made['Id']}?force=1")[0] == 204


# --- what a container cannot do ---------------------------------------------------------------------------

def test_a_container_cannot_see_or_signal_host_processes():
    host_sleeper = subprocess.Popen(["sleep", "300"])
    try:
        script = (f"kill -9 {host_sleeper.pid}; echo kill=$?; kill -9 1 2>/dev/null; "
                  f"ls -d /proc/[0-9]* | wc -l; test -e /proc/{host_sleeper.pid} && echo visible || echo invisible")
        result = container.run("busybox", ["sh", "-c", script], init=False)
        lines = result.stdout.split()
        assert lines[0] == "kill=1", result          # kill: no such process
        assert int(lines[1]) <= 3, result            # sh, ls (and a subshell): nothing of the host
        assert lines[2] == "invisible" or int(host_sleeper.pid) <= 3
        assert host_sleeper.poll() is None, "the host process was killed from inside the container"
        # and the signal really was not delivered: the host process is still sleeping, not stopped
        assert Path(f"/proc/{host_sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"
    finally:
        host_sleeper.kill()
        host_sleeper.wait()


def test_a_container_cannot_read_host_files_outside_its_root():
    secret_name = cleanup.unique_name("secret")
    secrets_at = [Path("/run/labkit") / secret_name, Path("/tmp") / secret_name, Path("/root") / secret_name]
    token = secrets.token_hex(16)
    for path in secrets_at:
        path.write_text(token)
    try:
        paths = " ".join(str(p) for p in secrets_at)
        script = (f"for f in {paths}; do cat $f 2>/dev/null; done; cat /proc/1/root{secrets_at[1]} 2>/dev/null; "
                  "ls /proc/1/root/ | tr '\\n' ' '; echo; cat /etc/hostname 2>/dev/null; ls /root /run 2>&1")
        result = container.run("busybox", ["sh", "-c", script])
        assert token not in result.stdout + result.stderr
        assert (Path(rootfs.base_layer().path) / "bin" / "busybox").exists()
        # /proc/1/root inside is the container's own root: the busybox image, not the host's /
        listed = result.stdout.splitlines()[0].split()
        assert "bin" in listed and "work" not in listed and "boot" not in listed, listed
    finally:
        for path in secrets_at:
            path.unlink(missing_ok=True)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            p = Path(dirpath, name)
            st = p.lstat()
            digest.update(f"{p.relative_to(root)} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}\n".encode())
            if stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20:
                digest.update(p.read_bytes())
    return digest.hexdigest()


def test_a_container_cannot_write_to_its_read_only_base_layer():
    base = Path(rootfs.base_layer().path)
    before = _tree_digest(base)
    vandal = ("echo pwned > /bin/busybox.new; echo pwned >> /etc/passwd; rm -f /bin/ls; "
              "echo pwned > /bin/sh 2>/dev/null; mkdir -p /newdir && echo x > /newdir/f; "
              "mount -o remount,rw / 2>/dev/null; echo pwned > /etc/group; echo done")
    with Container("busybox", ["sh", "-c", vandal]) as box:
        box.start()
        box.wait(30)
        assert "done" in box.logs()
        changes = dict((path, kind) for kind, path in box.rootfs.changes())
        assert changes.get("/etc/passwd") == "C" and changes.get("/bin/ls") == "D", changes   # in the upper
    assert _tree_digest(base) == before, "the container changed the image's base layer"
    # a read-only root refuses writes outright
    result = container.run("busybox", ["sh", "-c", "echo x > /etc/passwd; echo rc=$?"], read_only=True)
    assert "rc=1" in result.stdout and "Read-only file system" in result.stderr, result
    assert _tree_digest(base) == before


def test_a_read_only_root_cannot_be_remounted_read_write_from_inside():
    result = container.run("busybox", ["sh", "-c", "mount -o remount,rw /; echo x > /probe && echo wrote"],
                           read_only=True)
    assert "wrote" not in result.stdout, result


def test_a_containers_root_keeps_only_dockers_default_capabilities():
    """Read from outside: the container's pid 1 and an exec'd process, in /proc/PID/status."""
    from labkit import capabilities

    with Container("busybox", ["sleep", "30"], init=False) as box:
        box.start()
        for which in ("CapEff", "CapBnd"):
            assert capabilities.of_process(box.pid, which) == set(capabilities.DOCKER_DEFAULT)
        inside = box.exec(["sh", "-c", "grep CapBnd /proc/self/status"]).stdout.split()[1]
        assert {n for i, n in enumerate(capabilities.NAMES) if int(inside, 16) >> i & 1} \
            == set(capabilities.DOCKER_DEFAULT)


# --- what a container inherits from whoever started it -------------------------------------------------------

STARTER_WITH_SIGNALS_IGNORED = """
import signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)            # as under nohup, or the engine's daemon
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
import ctypes, os                                       # and 32, as coreutils' timeout leaves it:
ignore = ctypes.create_string_buffer(32)                # glibc's own signal, out of Python's reach
ignore[0] = 1                                           # SIG_IGN
rt_sigaction = {"x86_64": 13, "aarch64": 134}[os.uname().machine]
assert ctypes.CDLL(None).syscall(rt_sigaction, 32, ignore, None, 8) == 0
from labkit import namespaces
from labkit.container import Container

with Container("busybox", ["sleep", "60"], init=False) as box:
    box.start()
    with namespaces.spawn(["sleep", "60"], "pid,mnt") as waited, namespaces.spawn(["sleep", "60"], None) as bare:
        exec_line = box.exec(["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status | tr '\\n' ' '"]).stdout
        print("PIDS", box.pid, waited.pid, bare.pid, flush=True)
        print("EXEC", exec_line, flush=True)
        sys.stdin.read()                                  # until the test has looked
        waited.kill(); bare.kill()
"""


def _signal_masks(status: str) -> dict[str, int]:
    return {key: int(value, 16) for key, value in
            (line.split(":") for line in status.splitlines() if line.startswith(("SigIgn", "SigBlk")))}


def test_a_container_starts_with_default_signal_dispositions_and_nothing_blocked():
    """Ignored signals and the signal mask survive exec: read the container's processes' SigIgn and
    SigBlk in /proc while the process that started them ignores HUP and QUIT and blocks USR1, TERM."""
    starter = subprocess.Popen([PY, "-c", STARTER_WITH_SIGNALS_IGNORED], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = starter.stdout.readline().split()[1:]
        exec_line = starter.stdout.readline()
        assert len(pids) == 3, starter.stderr.read()[-2000:] if starter.poll() is not None else pids
        starter_masks = _signal_masks(Path(f"/proc/{starter.pid}/status").read_text())
        assert starter_masks["SigIgn"] & (1 << signal.SIGHUP - 1) and starter_masks["SigBlk"], starter_masks
        assert starter_masks["SigIgn"] & (1 << 32 - 1), starter_masks
        for pid in pids:                                  # pid 1 of a container, of a spawn, a bare spawn
            assert _signal_masks(Path(f"/proc/{pid}/status").read_text()) == {"SigIgn": 0, "SigBlk": 0}
        assert _signal_masks(exec_line.replace(" Sig", "\nSig")) == {"SigIgn": 0, "SigBlk": 0}, exec_line
    finally:
        starter.communicate("", timeout=60)
    assert starter.returncode == 0


CAPS_FROM_A_GENEROUS_STARTER = """
import json
from labkit import capabilities
from labkit.container import Container

with Container("busybox", ["sleep", "60"], init=False) as root_box, \\
        Container("busybox", ["sleep", "60"], init=False, user=(1000, 1000)) as user_box:
    root_box.start(); user_box.start()
    sets = {}
    for name, box in (("root", root_box), ("user", user_box)):
        sets[name] = {which: sorted(capabilities.of_process(box.pid, which))
                      for which in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
        line = box.exec(["sh", "-c", "grep -E '^Cap(Inh|Prm|Eff)' /proc/self/status | tr '\\\\n' ' '"]).stdout
        sets[name]["exec"] = line.split()[1::2]
    print(json.dumps(sets))
"""


def test_a_container_gets_no_capability_from_its_starters_inheritable_set():
    """Exec gives root (inheritable AND the file's inheritable) on top of the bounding set: a starter
    with CAP_SYS_ADMIN inheritable would hand it past the bounding set. Read from /proc."""
    from labkit import capabilities

    generous = subprocess.run(["setpriv", "--inh-caps", "+sys_admin,+net_admin,+sys_module", PY, "-c",
                               CAPS_FROM_A_GENEROUS_STARTER], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, LABKIT_ALLOW_HOST="1"))
    assert generous.returncode == 0, generous.stderr[-2000:]
    sets = json.loads(generous.stdout)
    default = sorted(capabilities.DOCKER_DEFAULT)
    assert sets["root"] == {"CapInh": [], "CapPrm": default, "CapEff": default, "CapBnd": default, "CapAmb": [],
                            "exec": sets["root"]["exec"]}, sets["root"]
    assert sets["user"] == {"CapInh": [], "CapPrm": [], "CapEff": [], "CapBnd": default, "CapAmb": [],
                            "exec": sets["user"]["exec"]}, sets["user"]
    mask = f"{sum(1 << capabilities.NAMES.index(c) for c in default):016x}"
    assert sets["root"]["exec"] == ["0" * 16, mask, mask]     # CapInh, CapPrm, CapEff of an exec'd process
    assert sets["user"]["exec"] == ["0" * 16] * 3             # exec runs as the container's user too


def test_exec_runs_as_the_containers_user_with_its_rlimits_and_no_new_privs():
    import resource

    with Container("busybox", ["sleep", "60"], init=False, user=(1000, 1000), no_new_privileges=True,
                   rlimits={resource.RLIMIT_NOFILE: (64, 64)}) as box:
        box.start()
        line = box.exec(["sh", "-c", "id -u; id -g; ulimit -n; grep NoNewPrivs /proc/self/status"]).stdout.split()
    assert line == ["1000", "1000", "64", "NoNewPrivs:", "1"], line


def test_kill_never_reaches_a_process_that_got_the_containers_pid_number():
    """Container.kill signals through the pidfd taken at start, not by number: here the number is
    made to name a host process, as it would once the container's process is gone and the pid reused."""
    host_sleeper = subprocess.Popen(["sleep", "300"])
    try:
        with Container("busybox", ["sleep", "60"], init=False) as box:
            box.start()
            container_pid, box.pid = box.pid, host_sleeper.pid
            box.kill(signal.SIGKILL)
            assert ks.wait_until(lambda: not ks.alive([container_pid]), 10), "the container was not killed"
            assert host_sleeper.poll() is None, "kill() signalled whatever process has the number"
            box.pid = container_pid
    finally:
        host_sleeper.kill()
        host_sleeper.wait()
