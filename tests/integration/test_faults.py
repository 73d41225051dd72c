"""Faults injected, and then proof - from the kernel's side - that nothing is left.

Each test breaks an experiment the way a learner's session breaks: a cell interrupted (SIGINT to a
real Jupyter kernel, exactly what the Stop button sends), the kernel killed outright (SIGKILL, what
"Restart kernel" or the OOM killer do), a container's pid 1 killed, an OOM kill, a fork bomb, a
process that ignores SIGTERM, orphans in sub-cgroups, two experiments racing for a name, two
notebooks side by side, an engine flooded with parallel requests. Afterwards it reads
/sys/fs/cgroup, /proc/self/mountinfo, /run/netns, /sys/class/net, /proc and /run/labkit/work
(tests/integration/kernel_state.py) - not labkit's bookkeeping - and fails on anything left.

The experiments run in separate processes ("kernels") so that they can be interrupted and killed
without touching the test process.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kernel_state as ks
from labkit import cleanup
from labkit.cgroups import Cgroup
from labkit.container import Container
from labkit.errors import Conflict
from labkit.namespaces import spawn

pytestmark = pytest.mark.root

PY = sys.executable
ENV = dict(os.environ, LABKIT_ALLOW_HOST="1", PYTHONUNBUFFERED="1")
ENV.pop("LABKIT_NO_WATCHDOG", None)


# --- a "kernel": an experiment in a child process that reports what it made -----------------------

def start_experiment(code: str, timeout: float = 60) -> tuple[subprocess.Popen, dict]:
    """Run `code` in a child Python; wait for its line `READY {json}` (names, pids)."""
    child = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in child.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if child.poll() is not None:
                break
            continue
        if line.startswith("READY "):
            child.lines = lines
            return child, json.loads(line[6:])
    child.kill()
    raise AssertionError(f"experiment did not get ready: {child.stderr.read()[-2000:]}")


def _processes_with(marker: str) -> dict[int, list[bytes]]:
    """Live processes whose command line has `marker` in it: {pid: argv}."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv and ks.alive([int(entry.name)]):
                found[int(entry.name)] = argv
    return found


def journal_lines(owner: int) -> list[str]:
    try:
        text = cleanup.WATCHDOG_JOURNAL.read_text()
    except FileNotFoundError:
        return []
    return [l for l in text.splitlines() if f"owner {owner} died" in l]


def assert_journal_names_only(owner: int, names) -> None:
    """The watchdog's journal lines for `owner` ("... removed KIND NAME WHERE") name only its objects.

    Which objects the watchdog itself removes, and which a sweep in another labkit process that
    happens to start at the same moment takes first, is a race on a shared machine (both remove
    only dead owners' objects) - so this checks attribution, and the caller checks that all is gone.
    """
    for line in journal_lines(owner):
        assert "; FAILED " not in line, f"the watchdog could not remove something: {line}"
        removed = line.split("; removed ", 1)[1].split()[1]
        assert removed in names, f"the watchdog of {owner} removed {removed}, not one of {names}: {line}"


# --- a real Jupyter kernel, interrupted the way the Stop button does it -----------------------------

class JupyterKernel:
    """An ipykernel started by jupyter_client; `interrupt()` is KernelManager.interrupt_kernel (SIGINT)."""

    def __init__(self):
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=ENV)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.pid

    def start(self, code: str, timeout: float = 60) -> tuple[str, dict]:
        """Execute `code`; return (msg_id, the READY report) once the cell printed it."""
        msg_id = self.kc.execute(code)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                text += content["text"]
                for line in text.splitlines():
                    if line.startswith("READY "):
                        return msg_id, json.loads(line[6:])
            elif kind == "error":
                raise AssertionError("cell failed before READY: " + "\n".join(content["traceback"])[-3000:])
        raise AssertionError(f"cell printed no READY line within {timeout}s: {text[-2000:]}")

    def interrupt_and_wait(self, msg_id: str, timeout: float = 60) -> dict:
        """SIGINT the kernel; return the cell's execute_reply content (the cell has ended)."""
        self.km.interrupt_kernel()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self.kc.get_shell_msg(timeout=1)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]
        raise AssertionError("the interrupted cell did not end")

    def run(self, code: str, timeout: float = 60) -> dict:
        return self.kc.execute_interactive(code, timeout=timeout, output_hook=lambda msg: None)["content"]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel():
    k = JupyterKernel()
    try:
        yield k
    finally:
        k.close()


def interrupted(kernel: JupyterKernel, code: str, settle: float = 0.5):
    """Run `code` in the kernel, interrupt it once it is mid-way, return (report, reply, before)."""
    before = ks.snapshot()
    msg_id, report = kernel.start(code)
    time.sleep(settle)                          # let it get into the middle of things
    reply = kernel.interrupt_and_wait(msg_id)
    return report, reply, before


def assert_interrupted_clean(kernel, report, reply, before):
    assert reply["status"] == "error" and reply["ename"] in ("KeyboardInterrupt", "CancelledError"), reply
    # the kernel is still alive: what is gone was removed by the cell's own cleanup, not a watchdog
    assert kernel.km.is_alive()
    ks.assert_gone(report.get("names", ()), report.get("pids", ()), timeout=5)
    assert ks.new_objects(before, ks.snapshot(), owners={kernel.pid}) == []
    assert kernel.run("print(1)")["status"] == "ok"          # and it still works


def test_cell_interrupted_during_a_cgroup_experiment_with_a_live_sampler(kernel):
    code = """
import json
from labkit.cgroups import Cgroup
from labkit.monitor import Sampler
from labkit.namespaces import spawn
with Cgroup.create(memory="64M", cpu=0.5, pids=20) as cg:
    busy = spawn(["sh", "-c", "while :; do :; done"], namespaces="pid", cgroup=cg)
    sampler = Sampler(cg, rate=20)
    print("READY", json.dumps({"names": [cg.name], "pids": [busy.pid]}), flush=True)
    await sampler.run(seconds=120)
"""
    report, reply, before = interrupted(kernel, code, settle=1.0)
    assert_interrupted_clean(kernel, report, reply, before)
    # the sampler really ran against the live cgroup before the interrupt
    assert kernel.run("assert len(sampler.samples) >= 5, len(sampler.samples)")["status"] == "ok"


def test_cell_interrupted_during_a_container_run(kernel):
    code = """
import json
from labkit.container import Container
with Container("busybox", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], mem_limit="32M", pids_limit=10) as box:
    box.start()
    print("READY", json.dumps({"names": [box.name], "pids": [box.pid]}), flush=True)
    box.wait()
"""
    report, reply, before = interrupted(kernel, code)
    assert_interrupted_clean(kernel, report, reply, before)


def test_cell_interrupted_while_a_network_is_half_set_up(kernel):
    code = """
import json
from labkit.net import Network
with Network(subnet="198.18.7.0/24") as net:
    for i in range(60):
        net.connect(None)
        if i == 1:
            print("READY", json.dumps({"names": [net.switch.name] + [e.namespace.name for e in net.endpoints]}), flush=True)
"""
    report, reply, before = interrupted(kernel, code, settle=0.3)
    assert_interrupted_clean(kernel, report, reply, before)


def test_cell_interrupted_during_a_vm_boot(kernel):
    code = """
import json
from labkit.vm import VM
with VM(memory="128M") as vm:
    print("READY", json.dumps({"names": [vm.name], "pids": [vm.proc.pid]}), flush=True)
    vm.wait_ready()
"""
    report, reply, before = interrupted(kernel, code, settle=1.5)
    assert_interrupted_clean(kernel, report, reply, before)


def test_restart_kernel_mid_experiment_leaves_nothing(kernel):
    """"Restart kernel" in JupyterLab: jupyter_client SIGKILLs the kernel's process group."""
    code = """
import json
from labkit.cgroups import Cgroup
from labkit.container import Container
from labkit.engine import EngineProcess
from labkit.namespaces import spawn
from labkit.net import Network
net = Network(subnet="198.18.13.0/24").__enter__()
box = Container("busybox", ["sleep", "1000"], mem_limit="32M", network=net)
box.start()
cg = Cgroup.create(pids=10)
loose = spawn(["sleep", "1000"], namespaces="pid,net", cgroup=cg)
from labkit.engine.wire import UnixHTTPConnection
engine = EngineProcess().start()
def call(method, path, body=None):
    conn = UnixHTTPConnection(engine.socket_path)
    conn.request(method, path, body=json.dumps(body) if body else None, headers={"Content-Type": "application/json"})
    data = conn.getresponse().read()
    return json.loads(data) if data.strip() else None
made = call("POST", "/v1.41/containers/create", {"Image": "labkit-busybox", "Cmd": ["sleep", "1000"]})
call("POST", f"/v1.41/containers/{made['Id']}/start")
served = call("GET", f"/v1.41/containers/{made['Id']}/json")
print("READY", json.dumps({"names": [net.switch.name, box.name, cg.name, served["Labkit"]["LabkitName"]],
                           "pids": [box.pid, loose.pid, engine.pid, served["State"]["Pid"]]}), flush=True)
"""
    before, old_pid = ks.snapshot(), kernel.pid
    msg_id, report = kernel.start(code)
    assert ks.alive(report["pids"]) == report["pids"]
    dog = ks.watchdog_of(old_pid)
    assert dog, "the kernel has no watchdog"
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    assert kernel.pid != old_pid and not ks.alive([old_pid])
    ks.assert_gone(report["names"], report["pids"], timeout=30)
    assert ks.wait_until(lambda: ks.new_objects(before, ks.snapshot(), owners={old_pid} | set(report["pids"])) == [], 30), \
        ks.new_objects(before, ks.snapshot(), owners={old_pid} | set(report["pids"]))


# --- SIGINT at arbitrary moments of a container's life (create, start, run, delete) -------------------

@pytest.mark.parametrize("target", ["work dir", "upper", "cgroup"])
def test_a_sigint_right_after_a_mkdir_of_a_container_leaves_nothing(target, monkeypatch):
    """The moments test_sigint_at_any_moment_of_a_container_run hit by chance (delays 0.02, 0.1):
    a Ctrl-C right after the mkdir of a container's work directory (RootFS.mount) or of its
    cgroup in one v1 hierarchy (Cgroup.create) left that directory with no owner record, and
    nothing took it down. Now each is made whole with Ctrl-C held (labkit.interrupts), then
    undone, before the KeyboardInterrupt reaches the caller."""
    real_mkdir = os.mkdir
    sent = []

    def mkdir_then_sigint(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        path = os.fspath(path)
        name = os.path.basename(path)
        hit = {"work dir": name.startswith("labkit-ctr-") and "/sys/fs/cgroup/" not in path,
               "upper": name == "upper", "cgroup": path.startswith("/sys/fs/cgroup/")}[target]
        if hit and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGINT)

    before = ks.snapshot()
    monkeypatch.setattr(os, "mkdir", mkdir_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        Container("busybox", ["true"]).start()
    monkeypatch.undo()
    assert sent, f"no mkdir of the {target} was seen"
    assert ks.new_objects(before, ks.snapshot()) == []
    assert [i.describe() for i in cleanup.find_all(include_in_use=True) if i.name.startswith("labkit-ctr-")
            and i.owner_pid == os.getpid()] == []


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4])
def test_sigint_at_any_moment_of_a_container_run(delay):
    code = """
import json, os, sys
from labkit import container
print("READY", json.dumps({"pid": os.getpid()}), flush=True)
while True:                       # until the interrupt: it must land in the middle of something
    container.run("busybox", ["sh", "-c", "echo hi"], mem_limit="32M", pids_limit=10, cpu=0.5)
"""
    before = ks.snapshot()
    child, _ = start_experiment(code)
    time.sleep(0.3 + delay)
    child.send_signal(signal.SIGINT)
    child.wait(30)
    stderr = child.stderr.read()
    assert child.returncode != 0 and "KeyboardInterrupt" in stderr, (child.returncode, stderr[-2000:])
    assert ks.new_objects(before, ks.snapshot(), owners={child.pid}) == [], stderr[-2000:]


# --- the kernel killed outright --------------------------------------------------------------------------

EVERYTHING = """
import json, os, time
from labkit.cgroups import Cgroup
from labkit.container import Container
from labkit.engine import EngineProcess
from labkit.engine.wire import UnixHTTPConnection
from labkit.namespaces import spawn
from labkit.net import Network, veth_to_host
from labkit.rootfs import RootFS
from labkit.vm import VM
net = Network(subnet="198.18.9.0/24").__enter__()
bare = net.connect(None)
box = Container("busybox", ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], mem_limit="32M",
                network=net)
box.start()
cg = Cgroup.create(pids=10)
loose = spawn(["sleep", "1000"], namespaces="pid,net,mnt", cgroup=cg)
root = RootFS("busybox").mount()
link = veth_to_host(loose.pid, addresses=False).create()      # one end in the host's namespace
engine = EngineProcess().start()                                # and a container made over its API
def call(method, path, body=None):
    conn = UnixHTTPConnection(engine.socket_path)
    conn.request(method, path, body=json.dumps(body) if body else None, headers={"Content-Type": "application/json"})
    data = conn.getresponse().read()
    return json.loads(data) if data.strip() else None
made = call("POST", "/v1.41/containers/create", {"Image": "labkit-busybox", "Cmd": ["sleep", "1000"]})
call("POST", f"/v1.41/containers/{made['Id']}/start")
served = call("GET", f"/v1.41/containers/{made['Id']}/json")
vm = VM(memory="128M") if os.environ.get("WITH_VM") else None
if vm:
    vm.start()
# what the watchdog must remove itself (the host veth goes with its netns, the engine cleans up
# after its own containers when its pidfd on the owner says the owner died)
swept = [net.switch.name, bare.namespace.name, box.name, cg.name, root.name] + ([vm.name] if vm else [])
names = swept + [link.host_ifname, served["Labkit"]["LabkitName"]]
pids = [box.pid, loose.pid, engine.pid, served["State"]["Pid"]] + ([vm.proc.pid] if vm else [])
print("READY", json.dumps({"names": names, "pids": pids, "swept": swept}), flush=True)
time.sleep(1000)
"""


def _everything_exists(report) -> None:
    """Before the kill: each object really is in the kernel."""
    found = "\n".join(ks.present(report["names"]))
    for name in report["names"]:
        assert name in found, f"{name} was not created: {found}"
    assert ks.alive(report["pids"]) == report["pids"]


def test_sigkill_of_the_kernel_mid_experiment_the_watchdog_removes_everything():
    before = ks.snapshot()
    child, report = start_experiment(EVERYTHING, timeout=120)
    _everything_exists(report)
    dog = ks.watchdog_of(child.pid)
    assert dog, "no watchdog runs for the experiment"
    kinds = {line.split(":")[0] for line in ks.present(report["names"])}
    assert {"cgroup", "mount", "netns", "link", "process", "state"} <= kinds, kinds

    child.kill()
    child.wait()
    ks.assert_gone(report["names"], report["pids"], timeout=30)
    assert ks.new_objects(before, ks.snapshot(), owners={child.pid}) == []
    # the watchdog did its sweep and exited; what it journaled was the dead owner's, nothing else
    assert ks.wait_until(lambda: not ks.alive([dog]), 10), "the watchdog should exit after its sweep"
    assert_journal_names_only(child.pid, report["names"])


def test_sigkill_of_a_kernel_that_had_a_vm_booting_kills_qemu():
    env_code = "import os; os.environ['WITH_VM'] = '1'\n" + EVERYTHING
    child, report = start_experiment(env_code, timeout=120)
    try:
        qemu = report["pids"][-1]
        assert b"qemu-system" in Path(f"/proc/{qemu}/cmdline").read_bytes()
        dog = ks.watchdog_of(child.pid)
    finally:                                     # a failed check must not leave the "kernel" running
        child.kill()
        child.wait()
    ks.assert_gone(report["names"], report["pids"], timeout=30)
    assert ks.wait_until(lambda: not ks.alive([dog]), 10)     # it writes its journal, then exits
    assert_journal_names_only(child.pid, report["names"])


def test_sigkill_of_the_kernel_and_its_watchdog_the_next_labkit_process_sweeps():
    before = ks.snapshot()
    child, report = start_experiment(EVERYTHING, timeout=120)
    _everything_exists(report)
    dog = ks.watchdog_of(child.pid)
    assert dog
    os.kill(dog, signal.SIGKILL)                 # the watchdog first: nobody is left to clean up
    assert ks.wait_until(lambda: not ks.alive([dog]), 5)
    child.kill()
    child.wait()
    # the next process that creates lab objects (here: just passes the guard) starts a watchdog
    # whose first act is a sweep of dead owners' objects
    nxt = subprocess.run([PY, "-c", "from labkit import host; host.require_lab_host(); print('ok')"],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert nxt.stdout.strip() == "ok", nxt.stderr
    ks.assert_gone(report["names"], report["pids"], timeout=30)
    assert ks.new_objects(before, ks.snapshot(), owners={child.pid}) == []
    assert journal_lines(child.pid) == []        # its own watchdog was dead: it did not do this


ENGINE_FROM_A_THREAD = """
import json, threading, time
from labkit.engine import EngineProcess
started = []
starter = threading.Thread(target=lambda: started.append(EngineProcess().start()))
starter.start(); starter.join()                  # the thread that forked the engine is gone now
engine = started[0]
print("READY", json.dumps({"pid": engine.pid, "socket": engine.socket_path}), flush=True)
time.sleep(1000)
"""


def test_the_engine_outlives_the_thread_that_started_it_and_stops_with_its_process():
    """PR_SET_PDEATHSIG follows the forking *thread*: an engine started from a thread that ended got
    SIGTERM at once. It watches its owner process instead (a pidfd)."""
    from labkit import dockerd

    child, report = start_experiment(ENGINE_FROM_A_THREAD, timeout=120)
    try:
        assert dockerd.ping(report["socket"]), "the engine stopped when its starting thread ended"
        assert ks.alive([report["pid"]]) == [report["pid"]]
    finally:
        child.kill()                             # the owner process dies: the engine must follow
        child.wait()
    assert ks.wait_until(lambda: not ks.alive([report["pid"]]), 30), "the engine outlived its owner"
    assert not os.path.exists(report["socket"])


FORK_WHILE_LOCKS_ARE_HELD = """
import faulthandler, logging, os, sys, threading, time, builtins
from labkit import container, escape, namespaces, rootless
from labkit.net import probes

def every_fork(say):
    say("spawn", namespaces.run(["echo", "ok"], "pid,mnt,uts").stdout.strip())
    say("bare", namespaces.run(["echo", "ok"], None).stdout.strip())
    say("container", container.run("busybox", ["echo", "ok"]).stdout.strip())
    say("probe", probes._child_result(*probes._in_child(len, [1, 2, 3]), timeout=30))
    say("rootless", rootless.run(["echo", "ok"]).stdout.strip())
    say("escape", "ok" if not escape.chroot_escape("pivot_root").escaped else "escaped")

faulthandler.dump_traceback_later(90, exit=True)     # a hang shows where it is
every_fork(lambda *words: None)    # once before: this process's own imports and caches are done
# thread 1 sits inside an import: it holds that module's import lock
sys.path.insert(0, sys.argv[1])
builtins.labkit_gate = threading.Event()
importing = threading.Thread(target=lambda: __import__("slow_module"), daemon=True)
importing.start()
# thread 2 holds a logging handler's lock (logging's module lock CPython's os.fork takes itself:
# a fork waits until no thread holds it)
logging.basicConfig(stream=sys.stderr)
logging_held, release = threading.Event(), threading.Event()
def hold_logging():
    with logging.getLogger().handlers[0].lock:
        logging_held.set()
        release.wait()
threading.Thread(target=hold_logging, daemon=True).start()
logging_held.wait()
while "slow_module" not in sys.modules:       # the import has begun and is blocked inside
    time.sleep(0.01)

# every kind of fork labkit does, from this threaded process, while those locks are held
every_fork(lambda *words: print(*words, flush=True))
builtins.labkit_gate.set(); release.set()
"""


def test_forks_from_a_threaded_process_never_wait_for_a_lock_another_thread_holds(tmp_path):
    """A forked child has only the forking thread: a lock another thread held at fork time stays held
    for good in the child. What labkit runs between fork and exec must need none of them."""
    (tmp_path / "slow_module.py").write_text("import builtins\nbuiltins.labkit_gate.wait()\n")
    forked = subprocess.run([PY, "-c", FORK_WHILE_LOCKS_ARE_HELD, str(tmp_path)], env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert forked.stdout.split("\n")[:6] == ["spawn ok", "bare ok", "container ok", "probe 3", "rootless ok",
                                              "escape ok"], \
        forked.stdout + forked.stderr[-2000:]
    assert forked.returncode == 0, forked.stderr[-2000:]


# --- a start that fails half-way ---------------------------------------------------------------------------

PLACEMENT_FAILS = """
import os, signal, sys, time
from labkit.namespaces import spawn

class Placement:                      # stands in for a Cgroup whose add() goes wrong
    def add(self, pid):
        print("COMMAND", pid, flush=True)
        how = sys.argv[2]
        if how == "raises":
            raise OSError(28, "No space left on device")
        if how == "interrupted":
            raise KeyboardInterrupt
        if how == "killed-while-a-fork-holds-the-pipe":
            helper = os.fork()        # holds every pipe end we hold: no end-of-file for the child
            if helper == 0:
                os.closerange(0, 3)   # but not the test's output pipes
                time.sleep(60)
                os._exit(0)
            print("HELPER", helper, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)     # the notebook killed mid-start

try:
    spawn(["sleep", sys.argv[1]], sys.argv[3], cgroup=Placement())
except BaseException as exc:
    print("RAISED", type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("kinds", ["pid,mnt", "uts"], ids=["with a waiter", "without"])
@pytest.mark.parametrize("how", ["raises", "interrupted", "killed", "killed-while-a-fork-holds-the-pipe"])
def test_a_start_whose_cgroup_placement_fails_leaves_nothing_running_outside_a_cgroup(how, kinds):
    """The command must never run unless it was placed: the parent's failure (an error, Ctrl-C, or
    the parent killed) means end-of-file on the go pipe, and the processes waiting for it die."""
    marker = f"{3000 + int.from_bytes(os.urandom(2), 'big')}.{os.getpid()}"   # a unique `sleep` argument
    try:
        starter = subprocess.run([PY, "-c", PLACEMENT_FAILS, marker, how, kinds], env=ENV,
                                 capture_output=True, text=True, timeout=60)
        report = dict(line.split(" ", 1) for line in starter.stdout.splitlines() if " " in line)
        command = int(report["COMMAND"])
        if how in ("raises", "interrupted"):
            assert report.get("RAISED") in ("OSError", "KeyboardInterrupt"), starter
        else:
            assert starter.returncode == -signal.SIGKILL, starter
        # from /proc: the process that was waiting to become the command is gone, and nothing runs it
        assert ks.wait_until(lambda: not ks.alive([command]), 10), \
            f"pid {command} lives on outside its cgroup: " + Path(f"/proc/{command}/cgroup").read_text()
        assert [argv for argv in _processes_with(marker).values() if argv[0] == b"sleep"] == []
    finally:
        for pid in _processes_with(marker):      # what escaped, and the helper: all started here
            os.kill(pid, signal.SIGKILL)


CAT_200_KB = """
import sys
from labkit.namespaces import run
data = bytes(range(256)) * 800                      # 200 kB: more than a pipe holds, both ways
result = run(["cat"], sys.argv[1] or None, input=data + b"end", timeout=float(sys.argv[2]))
print(len(result.stdout), result.stdout.endswith("end"), result.returncode)
"""


@pytest.mark.parametrize("kinds", ["pid,mnt", ""], ids=["new namespaces", "none"])
def test_a_command_fed_more_than_a_pipe_holds_neither_deadlocks_nor_loses_input(kinds):
    """run() writes stdin while it reads stdout: `cat` answers before it has read everything."""
    fed = subprocess.run([PY, "-c", CAT_200_KB, kinds, "60"], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert fed.stdout.split() == [str(200 * 1024 + 3), "True", "0"], fed.stderr[-2000:]


def test_the_timeout_of_run_covers_feeding_the_input():
    """A command that never reads its input: the timeout still fires (and the command is killed)."""
    never_reads = CAT_200_KB.replace('["cat"]', '["sleep", "1000"]')
    fed = subprocess.run([PY, "-c", never_reads, "pid", "1"], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert "did not finish within 1.0 s; it was killed" in fed.stderr, fed.stderr[-2000:]


# --- faults inside a running container --------------------------------------------------------------------

def test_a_containers_pid_1_killed_takes_everything_in_it_down():
    with Container("busybox", ["sh", "-c", "sleep 1000 & sleep 1000 & (sleep 1000 &); wait"],
                   init=False) as box:
        box.start()
        assert ks.wait_until(lambda: len(box.cgroup.procs()) >= 4, 5), box.cgroup.procs()
        inside = box.cgroup.procs()
        os.kill(box.pid, signal.SIGKILL)          # from the host, like `kill -9` of the container's init
        assert box.wait(10) == -signal.SIGKILL
        # the kernel killed every process of the pid namespace with its init, orphans included
        assert ks.wait_until(lambda: not ks.alive(inside), 5), ks.alive(inside)
        assert box.state()["status"] == "stopped"
        name = box.name
    ks.assert_gone([name], inside)


def test_a_container_oom_killed_is_reported_and_removed():
    with Container("busybox", ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived"],
                   mem_limit="16M", init=False) as box:
        box.start()
        box.wait(30)
        assert box.oom_killed() and box.cgroup.stats()["oom_kills"] >= 1
        assert "survived" in box.logs()          # the shell lives on; dd was the OOM killer's pick
        name = box.name
    ks.assert_gone([name])


BOMB = """
import os, time
while True:                       # parent and every child keep forking; EAGAIN only slows them down
    try:
        os.fork()
    except OSError:
        time.sleep(0.02)
"""


def test_a_bounded_fork_bomb_hits_pids_max_and_is_removed_completely():
    # not in a pid namespace: delete() must hunt down every process while they keep forking
    with Cgroup.create(pids=40, memory="512M") as cg:
        bomb = spawn([PY, "-c", BOMB], namespaces=None, cgroup=cg)
        events = Path(cg.path("pids"), "pids.events")
        assert ks.wait_until(lambda: int(events.read_text().split()[1]) > 0, 20), "fork never refused"
        assert ks.wait_until(lambda: len(cg.procs()) >= 35, 20), len(cg.procs())
        assert int(Path(cg.path("pids"), "pids.current").read_text()) <= 40
        assert int(Path(cg.path("pids"), "pids.max").read_text()) == 40
        inside, name = cg.procs(), cg.name
    bomb.wait(10)
    ks.assert_gone([name], inside)


def _ignores(pid: int, sig: int) -> bool:
    """Does the kernel hold `sig` as ignored for `pid` (SigIgn in /proc/PID/status)?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return bool(int(status.split("SigIgn:")[1].split()[0], 16) >> (sig - 1) & 1)


def test_a_process_that_ignores_sigterm_is_still_removed():
    stubborn = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
    with Container("busybox", stubborn, init=False) as box:
        box.start()
        assert ks.wait_until(lambda: _ignores(box.pid, signal.SIGTERM), 10), "the trap was never installed"
        box.kill(signal.SIGTERM)                 # an ignored signal is discarded when it is sent
        assert ks.alive([box.pid]) == [box.pid] and _ignores(box.pid, signal.SIGTERM)
        name, pid = box.name, box.pid
    ks.assert_gone([name], [pid])

    # the same without a container: a bare cgroup whose process ignores SIGTERM
    with Cgroup.create(pids=10) as cg:
        proc = spawn(stubborn[:2] + ["trap '' TERM; sleep 1000"], namespaces=None, cgroup=cg)
        assert ks.wait_until(lambda: _ignores(proc.pid, signal.SIGTERM), 10)
        os.kill(proc.pid, signal.SIGTERM)
        assert ks.alive([proc.pid]) == [proc.pid] and _ignores(proc.pid, signal.SIGTERM)
        name = cg.name
    proc.wait(5)
    ks.assert_gone([name], [proc.pid])


def test_a_cgroup_with_sub_cgroups_and_orphaned_grandchildren_is_deleted():
    script = "(sleep 1000 &); (sleep 1000 &); (sleep 1000 &); exec sleep 1000"
    with Cgroup.create(pids=20, memory="64M") as cg:
        proc = spawn(["sh", "-c", script], namespaces=None, cgroup=cg)
        assert ks.wait_until(lambda: len(cg.procs()) == 4, 5), cg.procs()
        orphans = [p for p in cg.procs() if p != proc.pid]
        for pid in orphans:                      # their parent subshell exited: re-parented, not ours
            assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != proc.pid
        # sub-cgroups two levels deep, each holding an orphan, in every hierarchy of this cgroup
        for i, pid in enumerate(orphans[:2]):
            for directory in {cg.path(c) for c in ("memory", "pids", "cpu", "cpuset")}:
                sub = Path(directory, f"sub{i}", "deeper")
                sub.mkdir(parents=True)
                if (sub / "cpuset.cpus").exists():   # a new v1 cpuset cgroup starts with no CPUs
                    for level in (sub.parent, sub):
                        for f in ("cpuset.cpus", "cpuset.mems"):
                            (level / f).write_text(Path(level.parent, f).read_text())
                (sub / "cgroup.procs").write_text(str(pid))
        assert any(f"/sub0/deeper" in line for line in Path(f"/proc/{orphans[0]}/cgroup").read_text().splitlines())
        name, everyone = cg.name, cg.procs()
    proc.wait(5)
    ks.assert_gone([name], everyone)


# --- races ------------------------------------------------------------------------------------------------

WINNER = """
import json, sys
from labkit.cgroups import Cgroup
from labkit.namespaces import spawn
group = Cgroup.create(name=NAME, pids=10)
sleeper = spawn(["sleep", "1000"], None, cgroup=group)
print("READY", json.dumps({"pid": sleeper.pid}), flush=True)
sys.stdin.read()
sleeper.kill(); sleeper.wait(); group.delete()
"""


@pytest.mark.parametrize("lost_at", ["the claim", "mkdir"])
def test_losing_a_race_for_a_cgroup_name_never_touches_the_winners_group(lost_at, monkeypatch):
    """Two processes create cgroup NAME at once; the loser checked "not there yet" just before the
    winner's mkdir. Its rollback used to kill the winner's processes and remove its group."""
    import labkit.cgroups as cgroups

    name = cleanup.unique_name("race")
    winner, report = start_experiment(f"NAME = {name!r}\n" + WINNER)
    try:
        monkeypatch.setattr(cgroups.backend(), "exists", lambda self: False)
        if lost_at == "mkdir":          # as if the claim had passed (a race with a creator that does not claim)
            monkeypatch.setattr(cleanup, "claim", lambda *args, **kwargs: None)
        with pytest.raises(Conflict):
            Cgroup.create(name=name, pids=5)
        monkeypatch.undo()
        # the kernel: the winner's process lives on, in the winner's group; its record still names it
        assert ks.alive([report["pid"]]) == [report["pid"]]
        assert any(line.endswith(f"/{name}") for line in Path(f"/proc/{report['pid']}/cgroup").read_text().split())
        assert cleanup.owner("cgroup", name) == (winner.pid, True)
    finally:
        _, err = winner.communicate("", timeout=60)
    assert winner.returncode == 0, err
    ks.assert_gone([name], [report["pid"]], timeout=10)


def test_two_containers_started_with_the_same_name_at_the_same_time():
    before = ks.snapshot()
    for _ in range(5):
        name = cleanup.unique_name("same")
        barrier = threading.Barrier(2)
        outcome: list = [None, None]
        boxes = [Container("busybox", ["sleep", "1000"], name=name) for _ in range(2)]

        def go(i):
            barrier.wait()
            try:
                boxes[i].start()
                outcome[i] = "started"
            except Conflict as exc:
                outcome[i] = exc

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(map(str, outcome)).count("started") == 1, outcome
        loser = next(o for o in outcome if o != "started")
        assert name in str(loser)
        winner = boxes[outcome.index("started")]
        assert ks.alive([winner.pid]) == [winner.pid]      # the loser did not hurt the winner
        for box in boxes:
            box.delete(force=True)
        ks.assert_gone([name])
    assert ks.new_objects(before, ks.snapshot()) == []


SAME_NAME = """
import json, os, sys, time
from labkit.container import Container
from labkit.errors import Conflict
box = Container("busybox", ["sleep", "1000"], name=sys.argv[1])
print("READY", flush=True)
while not os.path.exists(sys.argv[2]):      # both processes start here together
    time.sleep(0.001)
try:
    box.start()
except Conflict as exc:
    print("CONFLICT", exc, flush=True)
    sys.exit(0)
print("STARTED", box.pid, flush=True)
sys.stdin.readline()
box.delete(force=True)
"""


def test_two_processes_start_a_container_with_the_same_name_at_once(tmp_path):
    before = ks.snapshot()
    name, go = cleanup.unique_name("twin"), tmp_path / "go"
    twins = [subprocess.Popen([PY, "-c", SAME_NAME, name, str(go)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    for twin in twins:                           # both imported labkit and wait at the line
        assert twin.stdout.readline() == "READY\n", twin.stderr.read()[-2000:]
    go.touch()
    first = [t.stdout.readline().split(" ", 1) for t in twins]
    assert sorted(word for word, _ in first) == ["CONFLICT", "STARTED"], first
    loser = twins[[w for w, _ in first].index("CONFLICT")]
    winner = twins[[w for w, _ in first].index("STARTED")]
    assert name in dict(first)["CONFLICT"]
    assert loser.wait(10) == 0
    winner_pid = int(dict(first)["STARTED"])
    assert ks.alive([winner_pid]) == [winner_pid]        # the loser's failure did not touch it
    winner.stdin.write("done\n")
    winner.stdin.flush()
    assert winner.wait(30) == 0, winner.stderr.read()[-2000:]
    ks.assert_gone([name], [winner_pid])
    assert ks.new_objects(before, ks.snapshot(), owners={t.pid for t in twins}) == []


NOTEBOOK_A = """
import json, sys
from labkit.cgroups import Cgroup
from labkit.container import Container
from labkit.namespaces import spawn
from labkit.net import Network
with Network(subnet="198.18.11.0/24") as net, Cgroup.create(pids=10) as cg:
    box = Container("busybox", ["sleep", "1000"], network=net)
    box.start()
    loose = spawn(["sleep", "1000"], namespaces="pid", cgroup=cg)
    print("READY", json.dumps({"names": [net.switch.name, box.name, cg.name], "pids": [box.pid, loose.pid]}), flush=True)
    sys.stdin.readline()                       # until the test says: finish
    box.delete(force=True)
print("DONE", flush=True)
"""

NOTEBOOK_B = """
import json, subprocess, sys
from labkit import cleanup, container
from labkit.cgroups import Cgroup
from labkit.container import Container
from labkit.net import Network
for i in range(3):
    assert container.run("busybox", ["echo", "b"], mem_limit="32M").stdout == "b\\n"
with Network(subnet="198.18.11.0/24") as net:      # the same subnet: separate switch namespaces
    net.connect(None); net.connect(None)
    assert all(net.reachability().values())
removed = cleanup.sweep()                            # what labkit does before it creates anything
subprocess.run([sys.executable, "-m", "labkit.cli", "cleanup"], check=True, capture_output=True)
box = Container("busybox", ["sleep", "1000"], mem_limit="32M")
box.start()
cg = Cgroup.create(pids=5)
print("READY", json.dumps({"names": [box.name, cg.name], "pids": [box.pid],
                           "swept": [i.name for i in removed]}), flush=True)
import time; time.sleep(1000)
"""


def test_two_notebooks_side_by_side_never_remove_each_others_objects():
    before = ks.snapshot()
    a, a_report = start_experiment(NOTEBOOK_A)
    b, b_report = start_experiment(NOTEBOOK_B, timeout=120)
    try:
        # B ran experiments, a sweep and `labkit cleanup`, then was killed: A's objects are untouched
        assert not set(a_report["names"]) & set(b_report["swept"])
        b.kill()
        b.wait()
        ks.assert_gone(b_report["names"], b_report["pids"], timeout=30)   # B's watchdog cleaned up B
        assert ks.alive(a_report["pids"]) == a_report["pids"]
        found = "\n".join(ks.present(a_report["names"]))
        assert all(name in found for name in a_report["names"]), found
    finally:
        a.stdin.write("finish\n")
        a.stdin.flush()
        a.wait(30)
    assert a.returncode == 0, a.stderr.read()[-2000:]
    ks.assert_gone(a_report["names"], a_report["pids"])
    assert ks.new_objects(before, ks.snapshot(), owners={a.pid, b.pid}) == []


def test_the_engine_answers_parallel_requests_and_leaks_nothing():
    from concurrent.futures import ThreadPoolExecutor

    from labkit.engine import EngineProcess
    from labkit.engine.wire import UnixHTTPConnection

    def call(sock, method, path, body=None):
        conn = UnixHTTPConnection(sock, timeout=60)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data.strip() else None
        finally:
            conn.close()

    before = ks.snapshot()
    with EngineProcess() as engine:
        sock = engine.socket_path

        def lifecycle(i):
            status, made = call(sock, "POST", f"/v1.41/containers/create?name={cleanup.unique_name(f'p{i}')}",
                                {"Image": "labkit-busybox", "Cmd": ["sh", "-c", f"exit {i}"],
                                 "HostConfig": {"Memory": 32 << 20}})
            assert status == 201, made
            started = call(sock, "POST", f"/v1.41/containers/{made['Id']}/start")
            assert started[0] == 204, started
            status, waited = call(sock, "POST", f"/v1.41/containers/{made['Id']}/wait")
            removed = call(sock, "DELETE", f"/v1.41/containers/{made['Id']}")
            assert removed[0] == 204, removed
            return waited["StatusCode"]

        shared = cleanup.unique_name("race")

        def same_name(_):
            return call(sock, "POST", f"/v1.41/containers/create?name={shared}",
                        {"Image": "labkit-busybox", "Cmd": ["true"]})

        with ThreadPoolExecutor(16) as pool:
            codes = pool.map(lifecycle, range(12))
            racers = list(pool.map(same_name, range(8)))
            listings = list(pool.map(lambda _: call(sock, "GET", "/v1.41/containers/json?all=1")[0], range(8)))
            assert list(codes) == list(range(12))
        assert sorted(s for s, _ in racers) == [201] + [409] * 7, racers
        assert all("already in use" in body["message"] for s, body in racers if s == 409)
        assert listings == [200] * 8
        assert call(sock, "DELETE", f"/v1.41/containers/{shared}?force=1")[0] == 204
        assert call(sock, "GET", "/v1.41/containers/json?all=1")[1] == []
        engine_pid = engine.pid
        # the engine itself is still up (its record stays); none of its 21 containers left anything
        assert [o for o in ks.new_objects(before, ks.snapshot(), owners={engine_pid})
                if "/run/labkit/engine/" not in o] == []
    assert ks.new_objects(before, ks.snapshot(), owners={engine_pid, os.getpid()}) == []
