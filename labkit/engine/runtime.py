"""From an API request to a real container: the engine's runtime, a labkit Container per start.

In Docker, dockerd does not make namespaces itself: it asks containerd to create a *task*, and
containerd runs ``runc create`` (namespaces, cgroup, pivot_root; the process waits) and then
``runc start`` (the process execs the command). Here the same two steps are
`Container.create()` and `Container.start()` from chapter 4 - so a container made through the
Docker API is exactly the container of `labkit.container`, with its namespaces and its cgroup.

Docker's mapping, field by field (`options`; every applied field is listed, with where the kernel
shows it, in `spec.APPLIED`)::

    Config.Cmd / Entrypoint   -> command          HostConfig.Memory / MemorySwap -> mem_limit / memswap_limit
    Config.Env                -> environment      HostConfig.NanoCpus / CpuQuota -> cpu (fraction of a CPU)
    Config.Hostname           -> hostname         HostConfig.CpuShares / CpusetCpus -> cpu_shares / cpuset_cpus
    Config.WorkingDir         -> working_dir      HostConfig.PidsLimit  -> pids_limit
    Config.User, GroupAdd     -> user             HostConfig.Ulimits    -> rlimits
    Config.Tty / OpenStdin    -> tty / stdin_open HostConfig.ReadonlyRootfs, Tmpfs, ShmSize, ExtraHosts
    HostConfig.CapAdd/CapDrop -> cap_add/cap_drop HostConfig.SecurityOpt no-new-privileges -> no_new_privileges
    HostConfig.NetworkMode none -> a net namespace with only loopback (no network attached)

The container's stdout and stderr go to two files in its work directory (as Docker's json-file log
driver writes files); the engine follows them while the container runs.
"""
from __future__ import annotations

import os
import signal
import threading
from functools import partial
from pathlib import Path

from ..errors import CommandNotExecutable, CommandNotFound, InvalidValue, LabkitError
from .spec import ContainerSpec


class Running:
    """What the engine holds while a container runs: a labkit Container, started."""

    def __init__(self, container):
        self.container = container
        self.pid = container.pid
        self._details = self._read_details()
        self.stdout_path = Path(container.rootfs.dir, "stdout")
        self.stderr_path = Path(container.rootfs.dir, "stderr")
        if container.tty_master is not None:
            # With a terminal there is one stream: what the pty's master reads goes to the same
            # file the engine follows for stdout (Docker's logs of a -t container are raw too).
            self._copier = threading.Thread(target=_copy_terminal, name=f"{container.name}-tty", daemon=True,
                                            args=(os.dup(container.tty_master), self.stdout_path))
            self._copier.start()

    def write_stdin(self, data: bytes) -> None:
        """The client's input (attach with stdin=1): into the pty, or the stdin pipe (-i)."""
        fd = self.container.tty_master
        if fd is None and self.container.stdin is not None and not self.container.stdin.closed:
            fd = self.container.stdin.fileno()
        if fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except (BrokenPipeError, OSError):      # it stopped reading (exited): the rest is dropped
            pass

    def close_stdin(self) -> None:
        """End-of-file on the command's stdin (the client half-closed, and StdinOnce is set)."""
        if self.container.stdin is not None and not self.container.stdin.closed:
            self.container.stdin.close()

    def pause(self) -> None:
        self.container.pause()

    def unpause(self) -> None:
        self.container.unpause()

    def update(self, **limits) -> None:
        """New limits written into the running container's cgroup (docker update)."""
        self.container.cgroup.set(**limits)

    @property
    def cgroup(self):
        return self.container.cgroup

    @property
    def upper(self):
        """The overlay's upper directory: what the container changed (docker commit copies it)."""
        return self.container.rootfs.upper

    def resize(self, rows: int, columns: int) -> None:
        from ..ptyrelay import set_size
        if self.container.tty_master is not None:
            set_size(self.container.tty_master, rows, columns)     # the process in it gets SIGWINCH

    def poll(self) -> int | None:
        return self.container.process.poll()

    def wait(self) -> int:
        """Exit status, Popen-style: negative when a signal killed it."""
        return self.container.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.container.kill(sig)

    def exec(self, argv, *, env, working_dir, user, stdin: bool, tty: bool):
        """Start `argv` inside (docker exec): (process, stdin fd or None, {fd: stream}, pty master or None)."""
        from .. import namespaces
        from .streams import STDOUT

        if tty:
            master, slave = self.container.open_pty()
            try:
                process = self.container.exec_process(argv, environment=env, working_dir=working_dir,
                                                      user=user, tty=slave)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            return process, master, {master: STDOUT}, master
        return _piped(self.container.exec_process(argv, environment=env, working_dir=working_dir, user=user,
                                                  stdin=namespaces.PIPE if stdin else None,
                                                  stdout=namespaces.PIPE, stderr=namespaces.PIPE))

    def oom_killed(self) -> bool:
        try:
            return self.container.oom_killed()
        except Exception:       # the cgroup is gone already: no OOM kill to report
            return False

    def release(self, keep_root: bool = False) -> None:
        """Kill what is left in the cgroup, remove cgroup, mounts and work directory (keep_root: all
        but the root filesystem, which docker commit and cp of the stopped container use until rm)."""
        self.container.delete(force=True, keep_root=keep_root)

    def run_in_root(self, argv, stdin: bool):
        """As exec, for a stopped container (docker cp): no namespaces are left to join, so `argv`
        runs chrooted into its kept root, in a mount namespace of its own."""
        from .. import namespaces, starter
        from ..container_options import DEFAULT_PATH

        process = starter.spawn(argv, ["mnt"], setup=[partial(os.chroot, str(self.container.rootfs.path))],
                                cwd="/", env={"PATH": DEFAULT_PATH}, stdin=namespaces.PIPE if stdin else None,
                                stdout=namespaces.PIPE, stderr=namespaces.PIPE)
        return _piped(process)

    def details(self) -> dict:
        """What `inspect` shows of the kernel side: namespaces (by inode) and the cgroup."""
        return self._details

    def _read_details(self) -> dict:
        """Read while the process waits between create and start: a fast command may be gone after."""
        from ..namespaces import identity

        container = self.container
        try:
            namespaces = identity(self.pid)
        except (OSError, LabkitError):
            namespaces = {}
        cgroup = container.cgroup
        return {"LabkitName": container.name, "Namespaces": namespaces,
                "Cgroup": cgroup.relpath if cgroup is not None else "",
                "CgroupPaths": {c: cgroup.path(c) for c in ("memory", "cpu", "pids")} if cgroup else {},
                "RootFS": str(container.rootfs.path), "Init": container.process_argv()[0]}


def _piped(process):
    """(process, stdin fd or None, {fd: stream}, None) of a process started with pipes."""
    from .streams import STDERR, STDOUT

    stdin_fd = os.dup(process.stdin.fileno()) if process.stdin else None
    outputs = {os.dup(process.stdout.fileno()): STDOUT, os.dup(process.stderr.fileno()): STDERR}
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream:
            stream.close()
    return process, stdin_fd, outputs, None


def _copy_terminal(master: int, path: Path) -> None:
    """Until the terminal's last holder closes it (EIO): master -> the stdout file."""
    with open(path, "ab", buffering=0) as out:
        try:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                out.write(data)
        finally:
            os.close(master)


def options(spec: ContainerSpec, hostname: str = "") -> dict:
    """The labkit Container keyword arguments for a create request (docker SDK names)."""
    opts = dict(hostname=spec.hostname or hostname or None, environment=spec.env,
                working_dir=spec.working_dir or "/", init=spec.init, read_only=spec.read_only,
                cap_add=spec.cap_add, cap_drop=spec.cap_drop, no_new_privileges=spec.no_new_privileges,
                rlimits=spec.ulimits, tmpfs=spec.tmpfs, extra_hosts=spec.extra_hosts,
                sysctls=spec.sysctls, masked_paths=spec.masked_paths, readonly_paths=spec.readonly_paths,
                cgroupns=spec.cgroupns, user=spec.user, tty=spec.tty, stdin_open=spec.open_stdin)
    for key, value in (("mem_limit", spec.memory), ("cpu", spec.cpu), ("pids_limit", spec.pids),
                       ("memswap_limit", spec.memory_swap), ("cpu_shares", spec.cpu_shares),
                       ("cpuset_cpus", spec.cpuset), ("shm_size", spec.shm_size),
                       ("oom_score_adj", spec.oom_score_adj), ("domainname", spec.domainname or None)):
        if value is not None:
            opts[key] = value
    return opts


def validate(spec: ContainerSpec, image) -> None:
    """Refuse what this host cannot apply (more CPUs than it has, a bad tmpfs option...) at create
    time, as a 400: a Container is built from the options - which checks them - but not created."""
    from ..container import Container

    try:
        Container(image.labkit_image(), spec.argv, **options(spec))
    except InvalidValue as exc:            # name the API field, not labkit's keyword
        option = exc.what.split()[0]
        field = next((f for words, f in FIELD_OF_OPTION if option in words), "")
        raise InvalidValue(f"{field} ({exc.what})" if field else exc.what, exc.value, exc.accepted) from None


# labkit option words (as its errors name them) -> the API field they came from
FIELD_OF_OPTION = [
    (("sysctl",), "HostConfig.Sysctls"), (("tmpfs",), "HostConfig.Tmpfs"), (("shm_size",), "HostConfig.ShmSize"),
    (("cpu_shares", "cpu_weight"), "HostConfig.CpuShares"), (("memswap_limit", "swap"), "HostConfig.MemorySwap"),
    (("domainname",), "Config.Domainname"), (("hostname",), "Config.Hostname"), (("memory",), "HostConfig.Memory"),
    (("cpu",), "HostConfig.NanoCpus"), (("pids",), "HostConfig.PidsLimit"), (("cpuset",), "HostConfig.CpusetCpus"),
    (("capability",), "HostConfig.CapAdd/CapDrop"), (("working_dir",), "Config.WorkingDir"),
    (("environment",), "Config.Env"), (("command",), "Config.Cmd"),
]


class CommandFailed(InvalidValue):
    """The container's command could not be executed, worded as runc words it: the docker CLI takes
    `docker run`'s exit status from these words ("executable file not found" 127, "permission denied"
    126, else 125), and dockerd records the same code as the container's ExitCode."""

    def __init__(self, argv0: str, exc: LabkitError):
        if isinstance(exc, CommandNotFound):
            text, self.exit_code = f'exec: "{argv0}": executable file not found in $PATH', 127
        else:
            text, self.exit_code = str(exc).replace("Permission denied", "permission denied"), 126
        self.what, self.value, self.accepted = "Config.Cmd", argv0, "a command the container can execute"
        LabkitError.__init__(self, text)


def launch(spec: ContainerSpec, image, hostname: str = "", kept: Running | None = None) -> Running:
    """Create and start a labkit Container for `spec` on `image` (an engine Image); with `kept` (the
    last run of a stopped container) in that run's root, so its writable layer carries over."""
    from ..container import Container

    container = Container(image.labkit_image(), spec.argv, **options(spec, hostname))  # a fresh labkit-ctr-...
    if kept is not None:
        container.reuse_root(kept.container.rootfs)
    try:
        container.create()          # like `runc create`: namespaces, cgroup, root; the process waits
        if spec.console_size and container.tty_master is not None:
            from ..ptyrelay import set_size
            set_size(container.tty_master, *spec.console_size)   # before pid 1 runs: it starts at that size
        running = Running(container)
        container.start()           # like `runc start`: the command runs
    except BaseException as exc:
        container.delete(force=True)
        if isinstance(exc, (CommandNotFound, CommandNotExecutable)):   # what execve said of the command
            raise CommandFailed(spec.argv[0], exc) from None
        raise
    return running
