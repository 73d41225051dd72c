"""The starter: a small, single-threaded process that forks containers for its owner.

Starting a container needs fork(), and forking the caller has two problems when the caller is a
notebook kernel (or the engine):

- fork copies the caller's page tables: the bigger the process (numpy and matplotlib loaded: about
  370 MiB), the slower every start;
- a fork while other threads run (a kernel has several) gives a child whose locks may be held by
  threads that do not exist in it - malloc's, the import lock, logging's - so the child can hang.

runc solves both with `runc init`, a fresh exec that does the container's setup, and containerd
runs one small shim per container. labkit does the same at Python's scale: on first use a process
starts `python -m labkit.starter`, a fresh interpreter that imports only what a start needs and
never starts a thread. Every container start goes through it:

    owner (notebook kernel)                    starter (one per owner)
    socketpair, exec ---------------------->   waits for requests and for its containers' ends
    request: the spec, pickled,
    + fds (channel, stdio) ---------------->   namespaces.spawn(...): fork, unshare, cgroup,
                                               pivot_root, exec - as without a starter
               <------------------------------ "started": pid, + a pidfd
               <------------------------------ "exited": its status (a pidfd tells it when)

A container *created* but not yet started (`Container.create()`, runc's `create`) waits just before
exec for a "start" message on its channel - and spawn waits with it. So such a start is done by a
shim, a fork of the starter for that one container, and the starter goes on serving the others.

The sockets are SOCK_SEQPACKET: the kernel keeps message boundaries (one sendmsg, one recvmsg), so
the protocol needs no framing of its own; file descriptors travel beside a message (SCM_RIGHTS).
Each message is a pickled tuple; each start gets its own channel.

What the starter does not do: own anything. Cgroups, mounts and work directories are made and
claimed by the owner (labkit.cleanup: its watchdog removes them when the owner dies); the starter
only forks. It dies with its owner: PR_SET_PDEATHSIG (when started from the owner's main thread -
the signal follows the *thread* that forked it) and, in any case, a pidfd on the owner that it
polls beside its socket. A failure in the child (a command not found, a mount refused) comes back
on the channel as the exception the child raised.
"""
from __future__ import annotations

import atexit
import functools
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from . import forking, namespaces, start_stamps
from .errors import LabkitError

MAX_MESSAGE = 1 << 20           # a request (argv, environment, setup steps) is a few kB
KEEP = "keep"   # a stdio spec: the child's 0, 1 or 2 is what its setup steps make it (a terminal they open)
MAX_FDS = 8                     # channel + stdin, stdout, stderr
DEVNULL, PIPE = subprocess.DEVNULL, subprocess.PIPE



# --- the owner's side ---------------------------------------------------------------------------

class _Starter:
    """The owner's connection to its starter process.

    A threaded or big owner (a notebook kernel) gets a fresh interpreter: `python -m labkit.starter`.
    A small single-threaded one (a script) has nothing to fear from fork and little to copy
    (labkit/forking.py), so its starter is a plain fork of it - the same code from main() on,
    without the 50-100 ms a fresh interpreter takes to start and import."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        main_thread = threading.current_thread() is threading.main_thread()
        args = [str(theirs.fileno()), str(os.getpid()), "1" if main_thread else "0"]
        if forking.small_and_single_threaded():
            self.process = _Forked(os.fork())
            if self.process.pid == 0:
                code = 1
                try:
                    args[0] = str(forking.become_helper(theirs.fileno()))
                    code = main(args)
                finally:
                    os._exit(code)
        else:
            env = dict(os.environ)
            package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
            env["LABKIT_NO_WATCHDOG"] = "1"     # it owns nothing: the owner's watchdog covers its objects
            # subprocess forks and execs in C with nothing in between: safe in a threaded process
            self.process = subprocess.Popen([sys.executable, "-m", "labkit.starter", *args],
                                            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, env=env)
        theirs.close()
        self.socket = ours
        self.pid = self.process.pid

    def send(self, message, fds) -> None:
        socket.send_fds(self.socket, [pickle.dumps(message)], fds)

    def close(self) -> None:
        self.socket.close()             # the starter sees end-of-file and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Forked:
    """A forked starter, with the two methods of subprocess.Popen that _Starter uses."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:   # collected by someone else (a waitpid(-1) elsewhere): gone
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None:
            fd = os.pidfd_open(self.pid)
            try:
                if not _readable(fd, timeout):
                    raise subprocess.TimeoutExpired(["labkit.starter"], timeout)
            finally:
                os.close(fd)
        return self.poll()

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


_lock = threading.Lock()
_current: _Starter | None = None


def _starter() -> _Starter:
    """This process's starter, started on first use (and again if it died)."""
    global _current
    with _lock:
        if _current is None or _current.process.poll() is not None:
            _current = _Starter()
        return _current


def pid() -> int:
    """The pid of this process's starter (started now if there is none yet)."""
    return _starter().pid


@atexit.register
def _stop() -> None:
    global _current
    if _current is not None:
        _current, starter = None, _current
        starter.close()


def _forget_in_child() -> None:
    """A forked copy of the owner gets a starter of its own, should it start containers."""
    global _current, _lock
    if _current is not None:
        _current.socket.close()
    _current, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def _pidfd_of_waiting(pid: int) -> int | None:
    """A pidfd for a created process (None if something killed it already: its status follows)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


class StartedProcess(namespaces.Process):
    """The owner's handle on a process the starter started: a namespaces.Process (send_signal,
    kill, communicate... through the pidfd taken at start) whose status comes over the channel,
    since the process is not this one's child.

    `stamps` holds time.monotonic() values of the steps of the start, for
    benchmarks/start_latency.py: request, received, forked, placing, placed, ready, execd,
    started_seen, exited, exited_seen (the clock is the same in every process).
    """

    def __init__(self, args, channel: socket.socket, stdin, stdout, stderr, stamps: dict):
        self.args, self._channel = list(args), channel
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.pid: int | None = None
        self.returncode: int | None = None
        self.stamps = stamps
        self._pidfd: int | None = None
        self.handed_over: list[int] = []
        self._lock = threading.Lock()       # poll() in one thread, wait() in another (the engine)

    def _receive(self, timeout: float | None) -> str | None:
        """Take the starter's next message: its kind, or None when `timeout` passed first.
        A "failed" message raises the exception the child raised."""
        if self._channel.fileno() < 0:
            raise LabkitError(f"{self.args[0]!r}: no longer connected to its starter")
        if timeout is not None and not _readable(self._channel.fileno(), timeout):
            return None
        data, fds, _, _ = socket.recv_fds(self._channel, MAX_MESSAGE, 1)
        if not data:
            self._close()
            raise LabkitError(f"the starter of {self.args[0]!r} ended without reporting (killed?): "
                              "the command's status is unknown")
        kind, value, stamps = pickle.loads(data)
        self.stamps.update(stamps)
        self.stamps[f"{kind}_seen"] = time.monotonic()
        if kind == "created":       # its fds: what setup steps handed over (a terminal's master)
            self.pid, self.handed_over = value, fds
            # it waits for release() before exec, so its pid cannot have passed to another process
            # yet: a pidfd taken now names it, and kill() works before start as runc's does
            self._pidfd = _pidfd_of_waiting(value)
        elif kind == "started":
            self.pid = value
            if fds:
                self._close_pidfd()
                self._pidfd = fds[0]
        elif kind == "exited":
            self.returncode = value
            self._close()
        elif kind == "failed":
            self._close()
            raise value
        return kind

    def _expect(self, kind: str) -> None:
        got = self._receive(None)
        if got != kind:
            self._close()
            raise LabkitError(f"starter protocol: expected {kind!r}, got {got!r}")

    def release(self) -> None:
        """A process started with gate=True waits before exec: let it run (like `runc start`)."""
        self._channel.send(pickle.dumps(("start",)))
        self._expect("started")

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                if self.returncode is None:
                    self._receive(0)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            if not self._lock.acquire(timeout=-1 if left is None else left):
                raise subprocess.TimeoutExpired(self.args, timeout)
            try:
                if self.returncode is None:
                    left = None if deadline is None else max(deadline - time.monotonic(), 0)
                    if self._receive(left) is None:
                        raise subprocess.TimeoutExpired(self.args, timeout)
            finally:
                self._lock.release()
        return self.returncode

    def close(self) -> None:
        """Stop listening. A process created with gate=True and never released sees end-of-file
        and exits without running its command."""
        self._close()

    def _close(self) -> None:
        self._close_pidfd()
        self._channel.close()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _readable(fd: int, timeout: float | None) -> bool:
    poller = select.poll()          # not select.select: it fails on descriptors >= 1024
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def spawn(argv, namespaces="all", *, setup=(), stdin=None, stdout=None, stderr=None, gate: bool = False,
          **options) -> StartedProcess:
    """namespaces.spawn(argv, namespaces, ...), done by this process's starter.

    Takes spawn's arguments (cgroup, hostname, mount_proc, env, cwd, uid_map, gid_map,
    time_offsets, join) and returns once the command has exec'd - or, with `gate=True`, once the
    process is set up and waits just before exec for `release()`. The setup steps, the cgroup and
    the options are pickled: a step must be a module-level function or a functools.partial of one
    (a lambda or a nested function cannot be sent; it is refused here, by name).
    stdin/stdout/stderr: None (this process's own), DEVNULL, PIPE, KEEP, a file descriptor or a file.
    """
    if "pass_fds" in options:
        raise LabkitError("pass_fds: not supported through the starter (descriptors get other "
                          "numbers there); use stdin/stdout/stderr, or gate=True to hold a process")
    argv = [str(a) for a in argv]
    if options.get("env") is None:
        options["env"] = dict(os.environ)       # the owner's environment, not the starter's
    for step in setup:
        try:
            pickle.dumps(step)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise LabkitError(f"setup step {step!r} cannot be sent to the starter ({exc}): make it a "
                              "module-level function or a functools.partial of one") from None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds, stdio, mine, close_after = [theirs.fileno()], [], [], [theirs]
    for index, spec in enumerate((stdin, stdout, stderr)):
        if spec == KEEP:
            stdio.append(None)
            mine.append(None)
            continue
        if spec == DEVNULL:
            stdio.append(DEVNULL)
            mine.append(None)
            continue
        if spec == PIPE:
            r, w = os.pipe()
            child, parent = (r, w) if index == 0 else (w, r)
            close_after.append(child)
            mine.append(os.fdopen(parent, "wb" if index == 0 else "rb", buffering=0))
            fd = child
        else:
            fd = index if spec is None else spec if isinstance(spec, int) else spec.fileno()
            mine.append(None)
            if spec is None and not _is_open(fd):    # we have no stdin (say): the child gets /dev/null
                stdio.append(DEVNULL)
                continue
        stdio.append(len(fds))
        fds.append(fd)
    stamps = {"request": time.monotonic()}
    request = {"argv": argv, "namespaces": namespaces, "setup": list(setup), "options": options,
               "stdio": stdio, "gate": gate}
    try:
        try:
            _starter().send(request, fds)
        except (BrokenPipeError, ConnectionResetError):   # it died (killed?): one more, fresh
            _starter().send(request, fds)
    except BaseException:
        ours.close()
        for stream in mine:
            if stream:
                stream.close()
        raise
    finally:
        for item in close_after:
            item.close() if hasattr(item, "close") else os.close(item)
    process = StartedProcess(argv, ours, *mine, stamps)
    try:
        process._expect("created" if gate else "started")
    except BaseException:       # a child-side error, or Ctrl-C while it starts: it never runs
        process._close()        # outside its cgroup (the cgroup's removal makes its join fail)
        for stream in mine:
            if stream:
                stream.close()
        raise
    return process


# --- the starter's side -------------------------------------------------------------------------

def main(args: list[str]) -> int:
    control_fd, owner, deathsig = int(args[0]), int(args[1]), args[2] == "1"
    from . import syscalls
    if deathsig:   # SIGKILL when the owner's thread that started us ends (its main thread: the owner)
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != owner:          # the owner died before the line above took effect
        return 0
    owner_fd = os.pidfd_open(owner)     # readable once the owner has exited, thread or no thread
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C in the owner's terminal is not for us
    control = socket.socket(fileno=control_fd)
    poller = select.poll()
    poller.register(control_fd, select.POLLIN)
    poller.register(owner_fd, select.POLLIN)
    ended: dict[int, Callable[[], None]] = {}    # pidfd of a process -> what to do once it has ended

    def watch(pid: int, then: Callable[[], None]) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:      # ended already
            then()
            return
        ended[fd] = then
        poller.register(fd, select.POLLIN)

    while True:
        for fd, _ in poller.poll():
            if fd == owner_fd:
                return 0
            if fd in ended:
                poller.unregister(fd)
                os.close(fd)
                ended.pop(fd)()
            elif fd == control_fd and not _serve(control, watch):
                return 0                # the owner closed its end: it is done with us


def _serve(control: socket.socket, watch) -> bool:
    """One request: start the process (False when the owner has closed the connection)."""
    data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, MAX_FDS)
    if not data:
        return False
    stamps = {"received": time.monotonic()}
    for fd in fds:
        os.set_inheritable(fd, False)
    channel = socket.socket(fileno=fds[0])
    try:
        request = pickle.loads(data)   # imports the setup steps' modules, once, here
    except BaseException as exc:  # noqa: BLE001 - reported to the owner, the starter goes on
        _send(channel, "failed", LabkitError(f"starter: cannot read the request: {exc!r}"), {})
        channel.close()
        return True
    if not request["gate"]:         # spawn returns at exec: here, and report the exit when it comes
        process = _start(request, channel, fds[1:], stamps)
        if process is None:
            channel.close()
        else:
            watch(process.pid, functools.partial(_finish, process, channel))
        return True
    # A created process waits before exec for "start" - and spawn with it: so a shim (a fork of
    # this process, one per created container) does that one, and we go on serving.
    shim = os.fork()
    if shim == 0:
        try:
            _close_all_but({channel.fileno(), *fds[1:]})   # our socket, other containers' channels
            stamps["forked"] = time.monotonic()
            process = _start(request, channel, fds[1:], stamps)
            if process is not None:
                _finish(process, channel)
        except BaseException as exc:  # noqa: BLE001 - a bug in the shim: tell the owner
            _send(channel, "failed", LabkitError(f"starter: {exc!r}"), {})
        finally:
            os._exit(0)
    watch(shim, functools.partial(os.waitpid, shim, 0))
    channel.close()
    for fd in fds[1:]:
        os.close(fd)
    return True


def _close_all_but(wanted: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2 and int(name) not in wanted:
            try:
                os.close(int(name))
            except OSError:
                pass                    # the directory listdir read: closed already


def _send(channel: socket.socket, kind: str, value, stamps: dict, fds=()) -> None:
    data = pickle.dumps((kind, value, stamps)) if kind != "failed" else _failure(value, stamps)
    try:
        socket.send_fds(channel, [data], list(fds))
    except OSError:
        pass                            # the owner stopped listening (deleted, or died)


def _start(request: dict, channel: socket.socket, fds: list[int], stamps: dict):
    """namespaces.spawn as the request says; report "started" (or "failed": then None)."""

    page = start_stamps.new_page()     # shared with the forked children
    stdio = [fds[entry - 1] if isinstance(entry, int) and entry > 0 else entry for entry in request["stdio"]]
    setup = [functools.partial(start_stamps.note_host_pid, page), *request["setup"], functools.partial(start_stamps.stamp, page, "ready")]
    options = dict(request["options"])
    if request["gate"]:
        setup.append(functools.partial(start_stamps.wait_for_start, channel.fileno(), page))
        options["pass_fds"] = (channel.fileno(),)
    kinds = {kind.name for kind in namespaces.parse_kinds(request["namespaces"])}
    start_stamps.arrange_placement(setup, options, kinds, page)
    try:
        process = namespaces.spawn(request["argv"], request["namespaces"], setup=setup,
                                   stdin=stdio[0], stdout=stdio[1], stderr=stdio[2], **options)
    except BaseException as exc:  # noqa: BLE001 - the owner raises it
        _send(channel, "failed", exc, {**stamps, **start_stamps.read_stamps(page)})
        for fd in set(stdio) - {None, DEVNULL}:
            os.close(fd)
        return None
    stamps["execd"] = time.monotonic()
    stamps.update(start_stamps.read_stamps(page))
    for fd in set(stdio) - {None, DEVNULL}:
        os.close(fd)
    try:
        pidfd = [os.pidfd_open(process.pid)]
    except OSError:
        pidfd = []
    _send(channel, "started", process.pid, stamps, pidfd)
    for fd in pidfd:
        os.close(fd)
    return process


def _finish(process, channel: socket.socket) -> None:
    """The process has ended (or is about to: its waiter reports right after): report its status."""
    returncode = process.wait()
    _send(channel, "exited", returncode, {"exited": time.monotonic()})
    channel.close()


def _failure(exc: BaseException, stamps: dict) -> bytes:
    """A "failed" message: the exception itself when it survives pickling (some exceptions take
    other constructor arguments than they store, and cannot be rebuilt), else its text."""
    try:
        data = pickle.dumps(("failed", exc, stamps))
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001
        return pickle.dumps(("failed", LabkitError(str(exc) or type(exc).__name__), stamps))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
