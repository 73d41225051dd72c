"""A container: namespaces + a cgroup + a root filesystem (+ a network), with an OCI runtime's verbs.

    with Container("busybox", ["sh", "-c", "hostname; ps"], hostname="box", mem_limit="32M") as c:
        c.create()      # optional: without it, start() creates and runs in one go
        c.start()
        c.wait()
        print(c.logs())

is the seed's definition - "an isolated area of an OS with resource usage limits applied" - put
together from the pieces of the earlier chapters:

    create   RootFS: overlay of the image's read-only layers + a writable tmpfs layer  (labkit.rootfs)
             Cgroup with the memory / cpu / pids limits                               (labkit.cgroups)
             spawn: a child in new pid, mnt, uts, ipc, net namespaces, placed in the cgroup before
             it runs anything, pivot_root into the rootfs, /proc /dev /sys mounted  (labkit.namespaces)
             ... and there it WAITS, on a pipe, like runc's `create` waits on exec.fifo
    start    one byte down that pipe: the child execs the command
    exec     another process joins the running container's namespaces and cgroup (like nsenter)
    kill     a signal to the container's pid 1
    delete   everything in the cgroup killed, cgroup removed, rootfs unmounted, work dir gone
    state    the OCI state: {"id", "status": created|running|stopped, "pid", "bundle"}

Keyword names follow the docker SDK for Python where they overlap (image, command, name,
hostname, environment, working_dir, mem_limit, memswap_limit, nano_cpus, cpu_shares, cpuset_cpus,
pids_limit, network, read_only, init, tmpfs, extra_hosts, shm_size, sysctls, domainname, cap_add,
cap_drop, tty, stdin_open), so what you learn here carries over to `docker.from_env().containers.run(...)`.
Beyond the OCI verbs: `exec_process` (docker exec: setns into a running container), `pause` /
`unpause` (the freezer) and `open_pty` (a terminal of the container's own devpts).

Pid 1 and orphans: a process whose parent dies is re-parented to pid 1 of its pid namespace, and
only pid 1 can reap it. A shell or a server is not written to do that, so by default (`init=None`)
labkit runs the image's /sbin/tini as pid 1 - the same tiny reaper `docker run --init` injects -
and tini runs the command as its child, forwards signals to it and exits with its status. It costs
one fork+exec of a 700 kB static binary: about 1 ms of CPU per start here (measured interleaved, 30
runs: 12.4 ms with tini, 11.5 ms without). A reaper in Python would have been a forked copy of the
whole interpreter (of the notebook kernel!) as pid 1 in every container - more memory charged to the
container, and its /proc/1/cmdline would show the host's command line. busybox has no reaper fit for
the job (its init wants an inittab and runs forever). `init=False` makes the command pid 1.
"""
from __future__ import annotations

import os
import signal
from collections import namedtuple
from functools import partial
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence

from . import (capabilities as _caps, cleanup, container_options, container_steps, pivot, rootfs as _rootfs,
               start_stamps, syscalls)
from .container_options import DEFAULT_PATH  # noqa: F401 - its public name here since before the split
from .errors import Conflict, InvalidValue, LabkitError, NotFound, Unsupported
from .interrupts import hold_interrupts
from .nskinds import parse_kinds

DEFAULT_NAMESPACES = ("pid", "mnt", "uts", "ipc", "net")
INIT = "/sbin/tini"
_INITS = {"init", "tini", "tini-static", "dumb-init", "catatonit", "docker-init", "systemd"}
OCI_VERSION = "1.0.2"
# Who forks a container's process. A notebook kernel, the engine, a script: labkit.starter (starter.py
# says why). The `labkit` command, which starts one container and exits, sets this: it forks the
# process itself, the way the starter would - a starter would be one more process, and a pickled
# request and reply, for a single start (about 6 ms of a `labkit run`).
ONE_SHOT = False


class Result(namedtuple("Result", "args returncode stdout stderr pid oom_killed", defaults=(False,))):
    """What `run` returns (shaped like namespaces.Result / subprocess.CompletedProcess): returncode
    is negative when a signal killed it; pid is the host pid the container's pid 1 had."""
    __slots__ = ()

    @property
    def exit_status(self) -> int:
        """What a shell reports: 128+N for a process killed by signal N."""
        return self.returncode if self.returncode >= 0 else 128 - self.returncode


class Container:
    """One container. Arguments are checked here, before anything exists; `create()` makes it."""

    def __init__(self, image: str | _rootfs.Image = "busybox", command: str | Sequence[str] | None = None,
                 *, name: str | None = None, hostname: str | None = None,
                 environment: Mapping[str, str] | Iterable[str] | None = None,
                 working_dir: str | None = None, mem_limit=None, memory=None, nano_cpus: int | None = None,
                 cpu=None, pids_limit: int | None = None, network=None,
                 namespaces: Iterable[str] = DEFAULT_NAMESPACES, read_only: bool = False,
                 init: bool | None = None, layers: Sequence[_rootfs.Layer] = (),
                 rootfs: str | os.PathLike | None = None, user: tuple[int, int] | None = None,
                 rlimits: Mapping[int, tuple[int, int]] | None = None, no_new_privileges: bool = False,
                 masked_paths: Sequence[str] = (), readonly_paths: Sequence[str] = (),
                 oom_score_adj: int | None = None, umask: int | None = None, default_env: bool = True,
                 attach: bool = False, bundle: str | None = None, cap_add: Iterable[str] = (),
                 cap_drop: Iterable[str] = (), capabilities: Iterable[str] | None = None,
                 cpu_shares: int | None = None, memswap_limit=None, cpuset_cpus: str | None = None,
                 tmpfs: Mapping[str, str] | None = None, extra_hosts: Mapping[str, str] | None = None,
                 shm_size: int | None = None, sysctls: Mapping[str, str] | None = None,
                 domainname: str | None = None, cgroupns: bool = False, seccomp=None,
                 stdin_open: bool = False, tty: bool = False):

        self.name = cleanup.checked_name(name) if name else cleanup.unique_name("ctr")
        self.command = container_options.command_argv(command)
        self.kinds = tuple(k.name for k in parse_kinds(namespaces))
        if "mnt" not in self.kinds:
            raise InvalidValue("namespaces", list(namespaces), "a list including 'mnt' (a container "
                                                               "needs its own mount table to get its own /)")
        if hostname is None and "uts" in self.kinds:
            hostname = self.name[:64]
        if hostname is not None and "uts" not in self.kinds:
            raise InvalidValue("hostname", hostname, "a 'uts' namespace too (it would rename the host)")
        if hostname is not None and not (0 < len(hostname) <= 64) or hostname and "/" in hostname:
            raise InvalidValue("hostname", hostname, "1 to 64 characters without '/'")
        self.hostname = hostname
        self.environment = container_options.environment_variables(environment, hostname or "") if default_env else \
            container_options.environment_variables(environment, "", defaults=False)
        self.working_dir = working_dir or "/"
        if not self.working_dir.startswith("/"):
            raise InvalidValue("working_dir", working_dir, "an absolute path inside the container")
        if mem_limit is not None and memory is not None:
            raise InvalidValue("memory", memory, "either mem_limit or memory, not both")
        if nano_cpus is not None and cpu is not None:
            raise InvalidValue("cpu", cpu, "either nano_cpus or cpu, not both")
        if nano_cpus is not None:
            if isinstance(nano_cpus, bool) or not isinstance(nano_cpus, int) or nano_cpus <= 0:
                raise InvalidValue("nano_cpus", nano_cpus, "a positive integer (1e9 = one CPU)")
            cpu = nano_cpus / 1e9
        memory = mem_limit if mem_limit is not None else memory
        self.limits = {k: v for k, v in {"memory": memory, "cpu": cpu, "pids": pids_limit,
                                         "cpu_weight": container_options.cpu_shares_to_weight(cpu_shares),
                                         "swap": container_options.swap_limit(memswap_limit, memory),
                                         "cpuset": cpuset_cpus}.items() if v is not None}
        if self.limits:
            from .cgroups.limits import parse
            parse(self.limits)          # InvalidValue now, before anything is created
        if network is not None:
            from . import net
            if not isinstance(network, net.Network):
                raise InvalidValue("network", network, "a labkit.net.Network (or None: a private, empty "
                                                      "network namespace, like docker run --network none)")
            if "net" not in self.kinds:
                raise InvalidValue("network", network, "a 'net' namespace too")
        self.network = network
        # What root inside may do: Docker's default list, adjusted like `docker run --cap-add/--cap-drop`
        # (or an explicit list, as an OCI bundle's process.capabilities.bounding gives it).
        self.capabilities = _caps.effective_set(cap_add, cap_drop,
                                                base=_caps.DOCKER_DEFAULT if capabilities is None else capabilities)
        if seccomp is not None and not callable(getattr(seccomp, "install", None)):
            raise InvalidValue("seccomp", seccomp, "a labkit.seccomp.Filter (or None: no filter)")
        self.seccomp = seccomp
        self.read_only = bool(read_only)
        self.user = user
        self.rlimits = dict(rlimits or {})
        self.no_new_privileges = no_new_privileges
        self.masked_paths, self.readonly_paths = list(masked_paths), list(readonly_paths)
        self.oom_score_adj, self.umask = oom_score_adj, umask
        self.attach = attach
        self.bundle = bundle
        if (stdin_open or tty) and attach:
            raise InvalidValue("stdin_open/tty", True, "attach=False (with attach the command uses this terminal)")
        self.stdin_open, self.tty = bool(stdin_open), bool(tty)
        self.tty_master: int | None = None      # with tty: the pty's master side, ours to read and write
        self.tmpfs = container_options.tmpfs_mounts(tmpfs or {})
        self.extra_hosts = dict(extra_hosts or {})
        if shm_size is not None and (isinstance(shm_size, bool) or not isinstance(shm_size, int)
                                     or shm_size < 4096):
            raise InvalidValue("shm_size", shm_size, "a size in bytes of at least 4096")
        self.shm_size = shm_size
        self.sysctls = container_options.namespaced_sysctls(sysctls or {})
        if domainname is not None and ("uts" not in self.kinds or not 0 < len(domainname) <= 64):
            raise InvalidValue("domainname", domainname, "1 to 64 characters, with a 'uts' namespace")
        self.domainname = domainname
        if cgroupns and "cgroup" not in self.kinds:
            self.kinds += ("cgroup",)
        # The overlay itself stays writable, like Docker's rw layer: the working directory and mount
        # points are made in it first, then the container's "/" is remounted read-only (read_only).
        self.rootfs = _rootfs.RootFS(image if rootfs is None else None, name=self.name, bind=rootfs,
                                     readonly=self.read_only and rootfs is not None,
                                     unique=not name) if not layers else \
            _rootfs.RootFS(_rootfs.image(image, layers), name=self.name, unique=not name)
        if init and "pid" not in self.kinds:
            raise InvalidValue("init", init, "a 'pid' namespace too (the reaper must be pid 1)")
        self.init = init
        self.cgroup = None
        self.process = None
        self.pid: int | None = None
        self.status = "new"
        self._gate = None       # while created: the starter.StartedProcess waiting before exec
        self._netns = None

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.status} pid={self.pid}>"

    # -- OCI verbs -------------------------------------------------------------------------------------

    def create(self) -> "Container":
        """Make everything - root filesystem, cgroup, namespaces, the process - but do not run the
        command yet: the container's process waits on a pipe until `start()`."""
        return self._create(gate=True)

    def start(self) -> "Container":
        """Run the command: from `created` release the waiting process; from new, create and run."""
        if self.status == "new":
            if self.network is None and not self.tty:
                return self._create(gate=False)
            self._create(gate=True)        # plug the network in / take the terminal before it runs
        if self.status != "created":
            raise Conflict(f"container {self.name} is {self.status}; only a created container starts")
        gated, self._gate = self._gate, None
        try:
            gated.release()
        except BaseException:
            self.status = "stopped"
            raise
        self.process = gated
        self.status = "running"
        return self

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command to end; its exit status (negative: killed by that signal)."""
        if self.process is None:
            raise Conflict(f"container {self.name} is {self.status}: start it first")
        returncode = self.process.wait(timeout)
        self.status = "stopped"
        return returncode

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the container's pid 1 (with tini as pid 1, it forwards it to the command)."""
        if self.status in ("running", "created") and self.pid:
            if self.status == "running" and self.process.args[0] == INIT and \
                    sig not in (signal.SIGKILL, signal.SIGSTOP):
                self._await_init_ready(sig)
            # through the pidfd held since create: a pid number may name another process by now
            (self.process or self._gate).send_signal(sig)

    def _await_init_ready(self, sig: int, timeout: float = 2.0) -> None:
        """The kernel drops a signal to a pid namespace's pid 1 that has no handler for it. Right
        after exec, tini has not yet blocked the signals it forwards, so wait until it has (its
        SigBlk in /proc/PID/status), else a kill() just after start() would be lost."""
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            blocked = int(status.split("SigBlk:")[1].split()[0], 16)
            if blocked & (1 << (sig - 1)):
                return
            time.sleep(0.001)

    def exec(self, command: str | Sequence[str], *, environment=None, timeout: float | None = 30):
        """Run another command inside the running container (its namespaces, its cgroup, its root)."""
        from . import namespaces

        if self.state()["status"] != "running":
            raise Conflict(f"container {self.name} is {self.status}: exec needs a running container")
        env = dict(self.environment)
        env.update(container_options.environment_variables(environment, self.hostname or ""))
        # what pid 1 got, as `docker exec`: the user, no_new_privs, rlimits, capabilities, seccomp
        return namespaces.enter(self.pid, self.kinds, container_options.command_argv(command), cgroup=self.cgroup,
                                env=env, cwd=self.working_dir, timeout=timeout, setup=self._process_steps())

    def exec_process(self, command: str | Sequence[str], *, environment=None, working_dir: str | None = None,
                     user: tuple | None = None, stdin=None, stdout=None, stderr=None, tty: int | None = None):
        """Start another command in the running container and return it running (like `runc exec`):
        it joins the container's namespaces (setns) and cgroup, and gets what pid 1 got - the
        capability bounding set, no_new_privs, rlimits, the user (or `user`: (uid, gid, groups)).

        stdin/stdout/stderr: PIPE, DEVNULL or a file descriptor. tty: the slave side of a pty
        (os.openpty()) to give the command as its controlling terminal, instead of the three."""
        from . import namespaces

        if self.state()["status"] != "running":
            raise Conflict(f"container {self.name} is {self.status}: exec needs a running container")
        env = dict(self.environment)
        env.update(container_options.environment_variables(environment, self.hostname or "", defaults=False))
        steps = self._process_steps(user=user)
        if tty is not None:
            stdin = stdout = stderr = tty
            steps.append(container_steps.take_terminal)
        from . import starter
        return starter.spawn(container_options.command_argv(command), None, join=(self.pid, self.kinds), cgroup=self.cgroup,
                             env=env, cwd=working_dir or self.working_dir, setup=steps,
                             stdin=namespaces.DEVNULL if stdin is None else stdin,
                             stdout=namespaces.DEVNULL if stdout is None else stdout,
                             stderr=namespaces.DEVNULL if stderr is None else stderr)

    def pause(self, timeout: float = 10.0) -> None:
        """Freeze every process of the container (docker pause): the freezer cgroup - v1's
        freezer.state = FROZEN, v2's cgroup.freeze = 1 - stops them where they are, off the CPU,
        until unpause(). Returns once the kernel reports the whole cgroup frozen."""
        self._freeze(True, timeout)

    def unpause(self, timeout: float = 10.0) -> None:
        """Thaw the container's processes (docker unpause)."""
        self._freeze(False, timeout)

    def frozen(self) -> bool:
        """Is the container's cgroup frozen, as the kernel reports it?"""
        if self.cgroup is None:
            return False
        if self.cgroup.version == "v1":
            return Path(self.cgroup.path("freezer"), "freezer.state").read_text().strip() == "FROZEN"
        events = Path(self.cgroup.path("cgroup"), "cgroup.events").read_text().split()
        return events[events.index("frozen") + 1] == "1"

    def _freeze(self, freeze: bool, timeout: float) -> None:
        import time
        if self.status != "running" or self.cgroup is None:
            raise Conflict(f"container {self.name} is {self.status}: only a running container "
                           f"{'pauses' if freeze else 'unpauses'}")
        if self.cgroup.version == "v1":
            syscalls.write_file(str(Path(self.cgroup.path("freezer"), "freezer.state")),
                                "FROZEN" if freeze else "THAWED")
        else:
            syscalls.write_file(str(Path(self.cgroup.path("cgroup"), "cgroup.freeze")), "1" if freeze else "0")
        deadline = time.monotonic() + timeout
        while self.frozen() != freeze:          # FREEZING -> FROZEN once every task has stopped
            if time.monotonic() > deadline:
                raise LabkitError(f"container {self.name}: the freezer did not "
                                  f"{'freeze' if freeze else 'thaw'} it within {timeout} s")
            time.sleep(0.001)

    @property
    def stdin(self):
        """With stdin_open: the write end of the command's stdin (a pipe); closing it is its EOF."""
        process = self.process or self._gate
        return process.stdin if process is not None else None

    def open_pty(self) -> tuple[int, int]:
        """A pty (master, slave) from the container's own devpts (its /dev/pts, reached through
        /proc/PID/root): inside, ttyname() finds the terminal as /dev/pts/N, as under Docker."""
        return container_steps.open_pty(f"/proc/{self.pid}/root/dev/pts")

    def state(self) -> dict:
        """The OCI runtime state of this container."""
        if self.status == "running" and self.process.poll() is not None:
            self.status = "stopped"
        if self.status in ("new", "deleted"):
            raise NotFound(f"container {self.name} does not exist ({self.status})")
        return {"ociVersion": OCI_VERSION, "id": self.name, "status": self.status, "pid": self.pid,
                "bundle": str(self.bundle or self.rootfs.dir), "annotations": {}}

    def delete(self, force: bool = False, keep_root: bool = False) -> None:
        """Remove everything: processes (with force), cgroup, network, root filesystem, work dir.
        keep_root: all but the root filesystem (its upper layer, for docker commit/cp of a stopped
        container); status "stopped" until a delete() without it."""
        if self.status == "deleted":
            return
        if self.status == "running" and self.process.poll() is None and not force:
            raise Conflict(f"container {self.name} is running: kill it first, or delete(force=True)")
        with hold_interrupts():
            try:
                self._stop_everything()
            finally:
                self._teardown(keep_root)

    def logs(self, stdout: bool = True, stderr: bool = True) -> str:
        """What the command wrote (kept in the container's work dir, like Docker's log files)."""
        if self.attach:
            raise Unsupported("this container's output went to the terminal (attach=True)")
        text = ""
        for wanted, stream in ((stdout, "stdout"), (stderr, "stderr")):
            if wanted:
                try:
                    text += (self.rootfs.dir / stream).read_text(errors="replace")
                except FileNotFoundError:
                    raise NotFound(f"logs of {self.name}: the container was deleted") from None
        return text

    @property
    def ip(self) -> str | None:
        """The container's address on its network (None without one)."""
        return self._netns.endpoint.ip if self._netns is not None else None

    def oom_killed(self) -> bool:
        return bool(self.cgroup and self.cgroup.oom_kills())

    def __enter__(self) -> "Container":
        return self     # create() or start() inside the block; leaving it deletes everything

    def __exit__(self, *exc) -> None:
        self.delete(force=True)

    # -- how create works ------------------------------------------------------------------------------

    def process_argv(self) -> list[str]:
        """The argv the container's first process runs: the command, behind tini when an init is wanted."""
        init = self.init
        has_tini = os.path.exists(f"{self.rootfs.path}{INIT}")
        if init is None:
            init = has_tini and "pid" in self.kinds and os.path.basename(self.command[0]) not in _INITS
        elif init and not has_tini:
            raise Unsupported(f"init=True needs {INIT} in the image (the base layer copies it from "
                              "Debian's tini package: apt-get install tini, then rebuild the image)")
        return [INIT, "--", *self.command] if init else list(self.command)

    def reuse_root(self, rootfs: _rootfs.RootFS) -> None:
        """Run in a stopped container's kept root (delete(keep_root=True)) instead of a fresh one,
        as dockerd restarts a container on its writable layer: the last run's changes stay."""
        if self.status != "new" or not rootfs.mounted:
            raise Conflict(f"container {self.name} is {self.status}, or {rootfs.name} is not mounted")
        for stream in ("stdout", "stderr"):         # the last run's output was read already
            (rootfs.dir / stream).unlink(missing_ok=True)
        self.rootfs = rootfs

    def _create(self, gate: bool) -> "Container":
        """The container's process is forked by labkit.starter (a small single-threaded process),
        not by this one - see starter.py for why - unless this process is the one-shot `labkit`
        command (ONE_SHOT) and nothing has to wait between create and start (gate)."""
        from . import namespaces
        from .cgroups import Cgroup

        if self.status != "new":
            raise Conflict(f"container {self.name} is {self.status} already")
        try:
            # A Ctrl-C lands before the root is mounted, or once it is marked ours to take down:
            # held in between, it is raised here, where the teardown below catches it.
            with hold_interrupts():
                if not self.rootfs.mounted:               # (mounted: a kept root, reuse_root)
                    self.rootfs.mount()                   # Conflict when the name is taken
                self.status = "creating"
            self.cgroup = Cgroup.create(name=self.name, **self.limits)
            stdin, stdout = (None, None) if self.attach else (namespaces.DEVNULL, None)
            stderr = None
            if self.tty:    # pid 1 opens its terminal in its own devpts (container_steps.open_terminal)
                from . import starter
                stdin = stdout = stderr = starter.KEEP
            elif not self.attach:
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                stdout = os.open(self.rootfs.dir / "stdout", flags, 0o600)
                stderr = os.open(self.rootfs.dir / "stderr", flags, 0o600)
                if self.stdin_open:                 # docker run -i: a pipe, its write end ours
                    stdin = namespaces.PIPE
            before, inside = self._inside_steps()
            steps = pivot.pivot_steps(self.rootfs.path, readonly=self.read_only,
                                        masked=self.masked_paths, readonly_paths=self.readonly_paths,
                                        inside=inside)
            steps[1:1] = before             # after the root is bind-mounted, while the host is visible
            steps += self._process_steps()
            if self.tty:
                steps.append(container_steps.open_terminal)
            options = dict(cgroup=self.cgroup, hostname=self.hostname, mount_proc=False,
                           env=self.environment, cwd=self.working_dir,
                           stdin=stdin, stdout=stdout, stderr=stderr)
            argv = self.process_argv()
            try:
                if ONE_SHOT and not gate:
                    process = _fork_here(argv, self.kinds, steps, options)
                else:
                    from . import starter
                    process = starter.spawn(argv, self.kinds, setup=steps, gate=gate, **options)
                self.pid = process.pid
                if gate:    # set up, waiting just before exec, like runc's `create`
                    self._gate, self.status = process, "created"
                    if self.tty:
                        self.tty_master, = process.handed_over
                else:
                    self.process, self.status = process, "running"
            finally:
                for fd in {fd for fd in (stdout, stderr) if isinstance(fd, int)}:
                    os.close(fd)
            if self.network is not None:
                self._connect_network()
        except BaseException:
            with hold_interrupts():
                self._stop_everything()
                self._teardown()
            raise
        return self

    def _inside_steps(self) -> tuple[list, list]:
        """Setup steps (before pivot_root, right after it) for what Docker prepares in the container's
        root: the working directory, tmpfs mounts, /dev/shm's size, an /etc/hosts, sysctls.
        Like every step, each is a module-level function or a partial of one (they travel pickled)."""
        before, inside = [], []
        if self.domainname:
            inside.append(partial(syscalls.write_file, "/proc/sys/kernel/domainname", self.domainname))
        for key, value in self.sysctls.items():    # namespaced sysctls: written in OUR namespaces
            inside.append(partial(syscalls.write_file, "/proc/sys/" + key.replace(".", "/"), value))
        if self.shm_size is not None:
            inside.append(partial(syscalls.mount, None, "/dev/shm", None, syscalls.MS_REMOUNT | syscalls.MS_NOSUID
                                  | syscalls.MS_NODEV | syscalls.MS_NOEXEC, f"mode=1777,size={self.shm_size}"))
        for path, (flags, data) in self.tmpfs.items():
            inside.append(partial(container_steps.mount_tmpfs, path, flags, data))
        if self.extra_hosts:
            hosts = self.rootfs.dir / "hosts"      # like Docker's containers/ID/hosts, bind-mounted
            hosts.write_text(container_steps.hosts_file(self.rootfs.path, self.hostname, self.extra_hosts))
            before.append(partial(container_steps.take_mount, str(hosts)))
            inside.append(partial(container_steps.attach_mount, str(hosts), "/etc/hosts"))
        # Docker creates a missing working directory (before the root becomes read-only).
        inside.append(partial(os.makedirs, self.working_dir, 0o755, True))
        return before, inside

    def _process_steps(self, user: tuple | None = None) -> list:
        """Setup steps after pivot_root: rlimits, no_new_privs, the user to run as.

        Steps travel to labkit.starter pickled, so each is a module-level function or a
        functools.partial of one - never a lambda or a nested function."""
        steps = []
        if self.oom_score_adj is not None:
            steps.append(partial(syscalls.write_file, "/proc/self/oom_score_adj", str(self.oom_score_adj)))
        if self.umask is not None:
            steps.append(partial(os.umask, self.umask))
        if self.rlimits:
            steps.append(partial(container_steps.set_rlimits, {kind: tuple(v) for kind, v in self.rlimits.items()}))
        if self.no_new_privileges:
            steps.append(partial(syscalls.prctl, syscalls.PR_SET_NO_NEW_PRIVS, 1))
        # Loading a seccomp filter needs CAP_SYS_ADMIN or no_new_privs: like runc, load it while
        # root still has every capability, unless no_new_privs lets us wait until just before exec.
        if self.seccomp is not None and not self.no_new_privileges:
            steps.append(self.seccomp.install)
        steps.append(_caps.drop_step(self.capabilities))   # needs CAP_SETPCAP: before a user switch
        user = user or self.user
        if user:
            uid, gid, *groups = user
            steps.append(partial(container_steps.switch_user, uid, gid, list(groups[0]) if groups else []))
        steps.append(_caps.limit_step(self.capabilities))  # after the switch: it may need SETUID
        if self.seccomp is not None and self.no_new_privileges:
            steps.append(self.seccomp.install)
        return steps

    def _connect_network(self) -> None:
        from . import net
        self._netns = net.attach_container(self.network, self.pid, name=self.name)

    # -- how delete works ------------------------------------------------------------------------------

    def _stop_everything(self) -> None:
        if self._gate is not None:                 # created, never started: it exits without exec
            self._gate.close()
            self._gate = None
        if self.cgroup is not None and (self.process is None or self.process.poll() is None):
            self.cgroup.kill()                     # every process in the container, pid 1 included
        # (once pid 1 has exited the kernel has killed the rest of its pid namespace; delete()
        # below still empties the cgroup of anything else before removing it)
        if self.process is not None:
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream:
                    stream.close()

    def _teardown(self, keep_root: bool = False) -> None:
        errors = []
        if self.tty_master is not None:
            os.close(self.tty_master)
            self.tty_master = None
        if self._netns is not None:
            try:
                self._netns.close()
            except Exception as exc:  # noqa: BLE001 - keep removing the rest
                errors.append(exc)
            self._netns = None
        if self.cgroup is not None:
            try:
                self.cgroup.delete()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            if keep_root:               # deleted: a later delete() skips it
                self.cgroup = None
        if keep_root and self.status != "new":
            self.status = "stopped"
        else:
            if self.status != "new":
                self.rootfs.unmount()
            self.status = "deleted" if self.status != "new" else "new"
        if errors:
            raise errors[0]


def _fork_here(argv: list[str], kinds, steps: list, options: dict):
    """namespaces.spawn from this process, placed in its cgroup as the starter places it (start_stamps)."""
    from . import namespaces

    setup = list(steps)
    start_stamps.arrange_placement(setup, options, {k.name for k in parse_kinds(kinds)}, start_stamps.new_page())
    return namespaces.spawn(argv, kinds, setup=setup, **options)


def run(image: str | _rootfs.Image = "busybox", command: str | Sequence[str] | None = None, *,
        timeout: float | None = 60, **options) -> Result:
    """Create, start, wait for and delete a container; return its exit status and output."""
    with Container(image, command, **options) as box:
        box.start()
        try:
            returncode = box.wait(timeout)
        except Exception:
            box.kill(signal.SIGKILL)
            raise LabkitError(f"{box.command[0]!r} did not finish within {timeout} s; it was killed") \
                from None
        oom = returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) and box.oom_killed()
        if options.get("attach"):
            out = err = ""
        else:
            out, err = box.logs(stderr=False), box.logs(stdout=False)
        return Result(box.command, returncode, out, err, box.pid, oom)
