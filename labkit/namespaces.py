"""Namespaces: the kernel's isolation primitive, the eight kinds, and processes started inside new ones.

A namespace wraps one global resource so that processes inside see their own copy of it. Each kind
has a clone flag (what unshare(2) and clone(2) take) and a file /proc/PID/ns/KIND whose inode number
*is* the namespace's identity: two processes share a namespace exactly when those inodes are equal.

How `spawn` starts a process in new namespaces without ever touching the calling process (a
notebook kernel is multi-threaded, and setns/unshare there would change the notebook itself):

    parent (notebook)            child                              grandchild (pid 1 inside)
    fork ------------------->    unshare(flags)
    writes uid_map/gid_map  <--  "mapped?" (with a user namespace)
    "2" ---------------------->  writes time offsets, then fork -->  waits on a pipe
    reads the grandchild's  <--  reports its pid; waits for it,
    pid, puts it in the cgroup   exits with its status
    and releases it: "1" --------------------------------------->   unshare(cgroup ns), mount /proc,
                                                                    sethostname, setup steps, exec

The extra fork is needed because a new pid (or time) namespace applies to the children of the
process that unshared it, not to that process itself (without pid and time there is no grandchild:
the child itself execs). The command is placed in its cgroup before it is released, so nothing it
runs can escape the limits; the waiting child stays outside, so the OOM killer never picks it.

Nothing may run outside its cgroup, whatever goes wrong in the parent (an error in cgroup.add,
Ctrl-C, the notebook killed): the command goes on only on the explicit byte "1" - end-of-file on
the pipe means "give up" - and until it execs, the child and grandchild die with their parent
(PR_SET_PDEATHSIG, then a check that the parent did not die before that was set). The command
starts with a clean slate of signals: every disposition default, nothing blocked, whatever its
starter ignored or blocked (runc does the same).
"""
from __future__ import annotations

import os
import resource
import select
import signal
import struct
import time
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence

from . import host, nssetup, syscalls
from .errors import CHILD_ERRORS, InvalidValue, LabkitError, exec_failure, from_oserror
from .nskinds import BY_NAME, KINDS, kind_available, parse_kinds  # noqa: F401 - notebooks 00 and 01 import the kinds from here

PIPE, DEVNULL = -1, -3  # subprocess's values (either module's may be passed), without importing it here

# The parent's bytes on the go pipe. Anything else - end-of-file above all - means "give up".
GO_MAPPED = b"2"     # uid_map and gid_map are written
GO_PLACED = b"1"     # the command's process is in its cgroup: exec it

# Kinds that only take effect in children of the process that unshares them.
_FOR_CHILDREN = {"pid", "time"}


def ns_inode(pid: int | str, kind: str) -> int:
    """The inode number that identifies process `pid`'s namespace of `kind`."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError as exc:
        raise from_oserror(exc, "read namespace of", f"pid {pid}") from None


def identity(pid: int | str = "self") -> dict[str, int]:
    """{kind: inode} for all eight kinds of process `pid` - equal inodes mean a shared namespace."""
    return {k.name: ns_inode(pid, k.name) for k in KINDS if kind_available(k)}


def children_identity(pid: int | str = "self") -> dict[str, int]:
    """Namespaces the *children* of `pid` will get (pid_for_children, time_for_children)."""
    return {k: ns_inode(pid, f"{k}_for_children") for k in ("pid", "time")}


# --- starting processes ------------------------------------------------------------------------------

class Result(namedtuple("Result", "args returncode stdout stderr pid")):
    """What `run` returns: like subprocess.CompletedProcess, plus the host pid it had."""
    __slots__ = ()


class Process:
    """A process started by `spawn`. Shaped like subprocess.Popen: wait, poll, kill, communicate.

    `pid` is the host's pid of the process running your command (pid 1 inside a new pid namespace);
    `returncode` is its exit status, or -SIGNAL when a signal killed it.
    """

    def __init__(self, args, pid: int, waiter_pid: int, stdin, stdout, stderr, pidfd: int | None = None):
        self.args, self.pid, self._waiter = list(args), pid, waiter_pid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        # a pidfd names exactly this process, even once its number is reused: spawn opens it while
        # the process still waits to be released, so it cannot be another one
        self._pidfd = pidfd

    def __repr__(self):
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<Process pid={self.pid} {self.args!r} {state}>"

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self._waiter, flags)
            except ChildProcessError:
                raise LabkitError(f"the exit status of {self.args[0]!r} (pid {self.pid}) is lost: "
                                  f"something else collected its waiter, pid {self._waiter} "
                                  "(SIGCHLD ignored, or a waitpid(-1) elsewhere)") from None
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._close_pidfd()
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and self.poll() is None:
            if not _readable(os.pidfd_open(self._waiter), timeout, close=True):
                raise _timed_out(self.args, timeout)
        return self._reap(0)

    def send_signal(self, sig: int) -> None:
        """Signal the process through its pidfd; a no-op once it has exited, as Popen's."""
        if self.returncode is not None:
            return
        if self._pidfd is None:
            if self.pid is None:    # never silently: a signal that goes nowhere teaches the wrong thing
                raise LabkitError(f"cannot send signal {sig} to {self.args[0]!r}: it has no process yet")
            return                  # it died before a pidfd could name it, as ProcessLookupError below
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def communicate(self, input: bytes | None = None, timeout: float | None = None):
        """Feed stdin, collect stdout/stderr until the process ends; like Popen.communicate."""
        out, err = _collect(self, input, timeout)
        self.wait(timeout)
        return out, err

    def namespaces(self) -> dict[str, int]:
        return identity(self.pid)

    def _close_pidfd(self):
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self.poll() is None:
                self.kill()
            self.wait()
        finally:
            self._close_pidfd()
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream:
                    stream.close()


def _readable(fd: int, timeout: float | None, close: bool = False) -> bool:
    """Is `fd` readable within `timeout` seconds? (poll, not select: fd numbers above 1023 work.)"""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(timeout, 0) * 1000))
    finally:
        if close:
            os.close(fd)


def _timed_out(args, timeout: float) -> Exception:
    """subprocess.TimeoutExpired, as Popen raises it (callers catch that class). subprocess is
    imported only here: labkit-runtime's create, on every `docker run`, never waits with a timeout."""
    import subprocess
    return subprocess.TimeoutExpired(args, timeout)


def _collect(proc: Process, input: bytes | None, timeout: float | None):
    """Feed stdin while reading stdout and stderr, all in one loop: a command that answers before it
    has read all its input (cat) would otherwise fill its output pipe and wait for us, while we wait
    for it to take more input. Writes may be short; the timeout covers the whole exchange."""
    import selectors        # here: only communicate() needs it, labkit-runtime never does

    chunks = {proc.stdout: [], proc.stderr: []}
    pending = memoryview(input or b"")
    with selectors.DefaultSelector() as sel:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                sel.register(stream, selectors.EVENT_READ)
        if proc.stdin:
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        while sel.get_map():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _timed_out(proc.args, timeout)
            for key, _ in sel.select(remaining):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]):]
                    except (BrokenPipeError, BlockingIOError) as exc:
                        if isinstance(exc, BrokenPipeError):   # it stopped reading: the rest is moot
                            pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fileobj].append(data)
                else:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
    out = b"".join(chunks[proc.stdout]) if proc.stdout else None
    err = b"".join(chunks[proc.stderr]) if proc.stderr else None
    return out, err


def _stdio_fd(spec, index: int, parent_ends: list, child_fds: list):
    """Turn None/PIPE/DEVNULL/int/file into the fd the child gets; remember pipes to close."""
    if spec is None:
        return None
    if spec == PIPE:
        r, w = os.pipe()
        parent_end, child_end = (w, r) if index == 0 else (r, w)
        parent_ends.append(parent_end)
        child_fds.append(child_end)
        mode = "wb" if index == 0 else "rb"
        return child_end, os.fdopen(parent_end, mode, buffering=0)
    if spec == DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        child_fds.append(fd)
        return fd, None
    if isinstance(spec, int):
        return spec, None
    return spec.fileno(), None


def spawn(argv: Sequence[str], namespaces: str | Iterable[str] | None = "all", *,
          cgroup=None, hostname: str | None = None, mount_proc: bool | None = None,
          setup: Sequence[Callable[[], None]] = (), env: dict | None = None, cwd: str | None = None,
          stdin=None, stdout=None, stderr=None, uid_map: str | None = None,
          gid_map: str | None = None, time_offsets: dict | None = None,
          join: tuple[int, Iterable[str]] | None = None, pass_fds: Sequence[int] = (),
          detach: bool = False) -> Process:
    """Start `argv` in new namespaces of the given kinds, inside `cgroup`; return a Process.

    namespaces   kinds to create: "all", "pid,uts", ["net"], or None for none
    cgroup       anything with .add(pid) (a labkit Cgroup): the process is in it before it execs
    hostname     set inside a new uts namespace
    mount_proc   mount a fresh /proc (default: when both pid and mnt are new, like unshare --mount-proc)
    setup        callables run in the final child just before exec (e.g. pivot_root into a rootfs);
                 they run in a forked copy of this process: syscalls only, no imports, no threads
    uid_map      with a user namespace: "INSIDE OUTSIDE COUNT" lines (default: root inside = our uid)
    time_offsets with a time namespace: {"monotonic": seconds, "boottime": seconds}
    join         (pid, kinds): enter those existing namespaces of `pid` instead of creating new ones
    pass_fds     extra file descriptors the child keeps (every other inherited one is closed)
    detach       the waiter exits as soon as the command's process exists, instead of waiting for it:
                 that process then belongs to the nearest subreaper (containerd's shim), as `runc
                 create` leaves it. The returned Process can signal it but not wait for it.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise InvalidValue("command", argv, "a non-empty list such as ['sh', '-c', 'echo hi']")
    kinds = parse_kinds(namespaces)
    names = {k.name for k in kinds}
    if hostname is not None and "uts" not in names:
        raise InvalidValue("hostname", hostname, "a uts namespace too (it would rename the host)")
    if hostname is not None and not (0 < len(hostname) <= 64):
        raise InvalidValue("hostname", hostname, "1 to 64 characters")
    if time_offsets and "time" not in names:
        raise InvalidValue("time_offsets", time_offsets, "a time namespace too")
    if (uid_map or gid_map) and "user" not in names:
        raise InvalidValue("uid_map", uid_map, "a user namespace too")
    if mount_proc is None:
        mount_proc = {"pid", "mnt"} <= names
    time_lines = nssetup.time_offset_lines(time_offsets) if time_offsets else None
    host.require_lab_host("start a process in new namespaces")
    join_fds = _open_join(join) if join else {}
    flags = 0
    for kind in kinds:
        flags |= kind.flag
    needs_fork = bool(names & _FOR_CHILDREN) or "pid" in join_fds or "time" in join_fds

    parent_ends: list[int] = []
    child_fds: list[int] = []
    stdio = [_stdio_fd(s, i, parent_ends, child_fds) for i, s in enumerate((stdin, stdout, stderr))]
    go_r, go_w = os.pipe()          # parent -> child: "your ids are mapped", "you are in the cgroup"
    report_r, report_w = os.pipe()  # child -> parent: "I unshared the user ns", the command's pid
    err_r, err_w = os.pipe()        # child -> parent: why it failed; closes on a successful exec
    env = dict(os.environ if env is None else env)
    parent = os.getpid()

    # What runs in the child between fork and exec is syscalls only: no imports, no locks, no
    # threads (a notebook kernel forks with other threads running; see tests/integration/test_faults.py
    # for the proof that a child never waits for a lock another thread held at fork time).
    pid = os.fork()
    if pid == 0:  # ---------------------------------------------------------------- the child
        status = 127
        try:
            if needs_fork or not detach:   # (detached, the command itself outlives its caller)
                _die_with_parent(parent)
            # Keep only what we need: another thread's spawn may have pipes open right now, and
            # holding their ends would make that parent wait for us.
            close_fds_except({go_r, report_w, err_w, *child_fds, *join_fds.values(), *pass_fds,
                               *(entry[0] for entry in stdio if entry)})
            for fd in join_fds.values():
                syscalls.setns(fd, 0)
            if flags & ~syscalls.CLONE_NEWCGROUP:
                syscalls.unshare(flags & ~syscalls.CLONE_NEWCGROUP)
            if "user" in names:
                os.write(report_w, b"U")
                _await(go_r, GO_MAPPED)                   # parent has written uid_map/gid_map
                if nssetup.maps_root(uid_map):
                    nssetup.become_root_inside()
                if needs_fork or not detach:
                    _die_with_parent(parent)              # a change of ids clears it: again
            if time_lines:
                syscalls.write_file("/proc/self/timens_offsets", time_lines)
            if needs_fork:
                _become_waiter(report_w, err_w, go_r, stdio, detach)   # returns only in the new process
            else:
                os.write(report_w, struct.pack("i", os.getpid()))
            os.close(report_w)
            _await(go_r, GO_PLACED)                       # parent has put us in the cgroup
            os.close(go_r)
            if "cgroup" in names:  # after joining the cgroup, so that it becomes our "/"
                syscalls.unshare(syscalls.CLONE_NEWCGROUP)
            _exec_final(argv, env, cwd, stdio, names, hostname, mount_proc, setup, join_fds)
        except BaseException as exc:  # noqa: BLE001 - must never return into the parent's code
            try:
                os.write(err_w, _describe(exc).encode())
            except BaseException:
                pass
        finally:
            os._exit(status)

    # ------------------------------------------------------------------------------------ the parent
    for fd in (go_r, report_w, err_w, *child_fds):
        os.close(fd)
    for fd in join_fds.values():
        os.close(fd)
    pidfd = None
    try:
        if "user" in names:
            if read_exact(report_r, 1) == b"U":
                nssetup.write_id_maps(pid, uid_map, gid_map)
                os.write(go_w, GO_MAPPED)
        raw = read_exact(report_r, 4)
        if len(raw) == 4:
            final_pid = struct.unpack("i", raw)[0]
            pidfd = os.pidfd_open(final_pid)   # it waits for us: this pid is still that process
            if cgroup is not None:   # the command is in its cgroup before it can run a single line
                cgroup.add(final_pid)
            os.write(go_w, GO_PLACED)
        error = _read_all(err_r)
        if error or len(raw) != 4:
            _reap_quietly(pid)
            raise _failure(argv, error or "the child exited before it could start the command")
    except BaseException:
        _kill_quietly(pid)      # the waiter; the command, not yet released, dies with it
        if pidfd is not None:
            os.close(pidfd)
        for stream in stdio:
            if stream and stream[1]:
                stream[1].close()
        raise
    finally:
        for fd in (go_w, report_r, err_r):
            os.close(fd)
    pipes = [s[1] if s else None for s in stdio]
    return Process(argv, final_pid, pid, *pipes, pidfd=pidfd)


def close_fds_except(keep: set[int]) -> None:
    """Close every descriptor above 2 but `keep` (in a freshly forked child: fds other threads opened)."""
    previous = 2
    for fd in sorted(fd for fd in keep if fd > 2):
        os.closerange(previous + 1, fd)
        previous = fd
    os.closerange(previous + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _open_join(join) -> dict[str, int]:
    """Open /proc/PID/ns/KIND for each kind to join, user first (as nsenter does), mnt late."""
    pid, kinds = join
    order = ["user", "cgroup", "ipc", "uts", "net", "pid", "time", "mnt"]
    wanted = {k.name for k in parse_kinds(kinds)}
    fds = {}
    try:
        for name in order:
            if name in wanted:
                fds[name] = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        for fd in fds.values():
            os.close(fd)
        raise from_oserror(exc, "open namespaces of", f"pid {pid}") from None
    return fds


def _die_with_parent(parent: int) -> None:
    """Until exec: die (SIGKILL) when the process that forked us dies - and if it died before we
    asked, go now. (The signal follows the forking *thread*; spawn's thread stays in spawn until
    the command has exec'd, and the signal is cleared just before exec.)"""
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _await(fd: int, expected: bytes) -> None:
    """Go on only on the parent's explicit byte: end-of-file means it failed, or died."""
    if read_exact(fd, 1) != expected:
        os._exit(1)


def _become_waiter(report_w: int, err_w: int, go_r: int, stdio, detach: bool = False) -> None:
    """In the child: fork the real process into the new pid/time namespace, then wait for it.

    Returns only in the new process. The waiter itself stays outside the container's cgroup (so it is
    never the OOM killer's victim there) and ignores Ctrl-C: the command inside reacts to it.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    waiter = os.pidfd_open(os.getpid())   # inside a new pid namespace getppid() says 0: watch this
    exec_r, exec_w = os.pipe()            # close-on-exec: end-of-file once the command exec'd
    final = os.fork()
    if final == 0:
        if not detach:    # detached, it must outlive the waiter, which exits at once
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            if _readable(waiter, 0):      # the waiter died before we asked to die with it
                os._exit(1)
        os.close(waiter)
        os.close(exec_r)
        return
    os.close(waiter)
    os.write(report_w, struct.pack("i", final))
    for fd in (report_w, go_r, exec_w, *(entry[0] for entry in stdio if entry)):
        if fd > 2:
            os.close(fd)
    if detach:      # orphan it: the kernel hands it to the nearest subreaper (containerd's shim)
        os._exit(0)
    # Hold err_w until the command has exec'd (or died): spawn returns only then, so the thread that
    # forked us - the one our PR_SET_PDEATHSIG watches - is still there until we clear it.
    os.read(exec_r, 1)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 0)
    os.close(exec_r)
    os.close(err_w)
    while True:
        _, status = os.waitpid(final, 0)
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):  # die of the same signal, so our parent sees what really happened
            sig = os.WTERMSIG(status)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught anyway
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)


_FORWARDED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


def _reset_signals() -> None:
    """Every disposition back to default, nothing blocked: an ignored signal and the signal mask
    survive exec, so the command would otherwise inherit its starter's (nohup's SIGHUP, Python's
    SIGPIPE and SIGXFSZ, the waiter's blocked Ctrl-C) - and a shell inside could not trap them."""
    for sig in _CATCHABLE:
        signal.signal(sig, signal.SIG_DFL)
    for sig in _RESERVED_BY_LIBC:
        syscalls.default_disposition(sig)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


_CATCHABLE = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))
# The real-time signals below SIGRTMIN that glibc reserves (32, 33): Python cannot name them.
_RESERVED_BY_LIBC = tuple(range(32, signal.SIGRTMIN))


def _exec_final(argv, env, cwd, stdio, names, hostname, mount_proc, setup, join_fds):
    """In the process that becomes the command: finish the namespace setup and exec."""
    _reset_signals()
    if "mnt" in names:  # keep our mounts from propagating back to the host
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    if hostname is not None:
        syscalls.sethostname(hostname)
    for step in setup:
        step()
    if mount_proc:
        syscalls.mount("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    if cwd is not None:
        os.chdir(cwd)
    elif "mnt" in join_fds:
        os.chdir("/")
    for target, entry in enumerate(stdio):
        if entry is not None:
            os.dup2(entry[0], target)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, 0)   # placed and set up: it outlives whoever started it
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:           # no such program, not executable...: said by name, for callers
        raise exec_failure(argv[0], exc) from None


def read_exact(fd: int, n: int) -> bytes:
    """`n` bytes from a pipe, fewer only at end-of-file (the writer died or gave up)."""
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode(errors="replace")
        chunks.append(chunk)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LabkitError):
        return f"{type(exc).__name__}:{exc}"
    if isinstance(exc, OSError):
        return f"OSError:{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}:{exc}"


def _failure(argv, error: str) -> LabkitError:
    kind, _, message = error.partition(":")
    if kind in CHILD_ERRORS:
        return CHILD_ERRORS[kind](message)
    if kind == "InvalidValue":
        return LabkitError(message)
    return LabkitError(f"could not start {argv[0]!r}: {message or error}")


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap_quietly(pid)


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def run(argv: Sequence[str], namespaces: str | Iterable[str] | None = "all", *,
        input: bytes | str | None = None, timeout: float | None = 30, **options) -> Result:
    """Run `argv` in new namespaces, wait for it, and return its output (decoded) and status."""
    if isinstance(input, str):
        input = input.encode()
    proc = spawn(argv, namespaces, stdin=PIPE if input is not None else DEVNULL,
                 stdout=PIPE, stderr=PIPE, **options)
    return finish(proc, input, timeout)


def finish(proc: Process, input: bytes | None, timeout: float | None) -> Result:
    """Feed `input`, collect the output, wait; kill the process if `timeout` passes first. What
    `run` does after `spawn` (rootless.run shares it)."""
    import subprocess

    with proc:
        try:
            out, err = proc.communicate(input, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise LabkitError(f"{proc.args[0]!r} did not finish within {timeout} s; it was killed") from None
    return Result(proc.args, proc.returncode, out.decode(errors="replace"),
                  err.decode(errors="replace"), proc.pid)


def enter(pid: int, kinds: str | Iterable[str], argv: Sequence[str], **options) -> Result:
    """Run `argv` inside the existing namespaces of process `pid` (what nsenter(1) does)."""
    return run(argv, None, join=(pid, kinds), **options)
