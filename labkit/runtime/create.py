"""`create`: the container exists, its process waits just before the user's program - like `runc create`.

    labkit-runtime create --bundle DIR --pid-file FILE [--console-socket SOCK] ID

1. config.json is read and checked (labkit.runtime.spec): anything labkit cannot apply is refused
   here, naming the field, before anything exists.
2. The state directory ROOT/ID with exec.fifo, and the cgroup at linux.cgroupsPath with its limits
   (with --systemd-cgroup: checked now, made by systemd as a scope when pid 1 exists, in step 3).
3. labkit.namespaces.spawn with detach=True: a child unshares the namespaces and forks the
   container's pid 1, which is placed in the cgroup before it runs, and the child exits at once - so
   pid 1 is re-parented to containerd's shim (a subreaper), which will collect its exit status.
4. pid 1 runs the setup steps (labkit.runtime.setup), reports "ready", and blocks opening exec.fifo
   for writing. That open returns only when `start` opens the FIFO for reading.
5. prestart hooks, then the pid file; this process exits, the container stays "created".
"""
from __future__ import annotations

import os
import threading
import time

from .. import namespaces, syscalls
from ..cgroups.limits import parse as parse_limits
from ..errors import Conflict, LabkitError
from . import hooks, seccomp, setup, spec as specs, state as states
from .cgroup import RuntimeCgroup


def create(opts, log) -> int:
    make(opts, log, detach=True)
    # spawn's thread still waits for the exec that `start` will allow; nothing here needs it
    os._exit(0)


def run(opts, log) -> int:
    """`run` = create + start + wait + delete in one process, like `runc run`: this process stays
    the container's parent (no shim needed), and exits with the program's status."""
    from .verbs import delete, release
    box, outcome = make(opts, log, detach=False)
    try:
        release(box)
        outcome["thread"].join()
        if "error" in outcome:
            raise outcome["error"]
        returncode = outcome["process"].wait()
    finally:
        delete(opts, log, force=True)
    return returncode if returncode >= 0 else 128 - returncode


def make(opts, log, detach: bool):
    """The container in the "created" state; (its state directory, the spawn thread's outcome)."""
    box = states.Container(opts.root, opts.id)
    if os.path.exists(box.dir):
        raise Conflict(f"container with id exists: {opts.id}")
    spec = specs.load(opts.bundle or ".", systemd=bool(opts.systemd_cgroup))
    limits = parse_limits(spec.limits)
    syscall_filter = seccomp.build(spec.seccomp) if spec.seccomp else None
    if opts.systemd_cgroup:              # a scope unit that systemd makes (labkit.runtime.systemd)
        from .systemd import parse_path
        group = RuntimeCgroup.of_scope(parse_path(spec.cgroups_path or "", opts.id))
    else:
        group = RuntimeCgroup(spec.cgroups_path or opts.id)
    steps = setup.mount_steps(spec, group.relpath, group.version) + setup.path_steps(spec)

    os.makedirs(opts.root, mode=0o711, exist_ok=True)
    os.mkdir(box.dir, mode=0o711)
    console = fifo = None
    try:
        old = os.umask(0)
        try:
            os.mkfifo(box.fifo, 0o622)
        finally:
            os.umask(old)
        fifo = os.open(box.fifo, os.O_PATH | os.O_CLOEXEC)
        if opts.console_socket:
            console = setup.connect_console(opts.console_socket)
            steps.append(setup.console_step(console, spec.process.console_size))
        elif spec.process.terminal:
            raise LabkitError("process.terminal is true but no --console-socket was given")
        steps += setup.process_steps(spec.process, seccomp=syscall_filter)
        group.create(limits, spec.devices, spec.oom_kill_disable)
        try:
            pid, outcome = start_held(spec, group, steps, fifo, console, detach)
            box.save({"id": opts.id, "pid": pid, "pid_start": states.start_time(pid),
                      "bundle": str(spec.bundle), "rootfs": str(spec.root), "cgroup": group.relpath,
                      "unit": group.unit, "slice": group.slice,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                      + f".{time.time_ns() % 10**9:09d}Z",
                      "annotations": spec.annotations, "hooks": spec.hooks,
                      "namespaces": spec.namespaces})
            for kind in ("prestart", "createRuntime"):
                hooks.run(spec.hooks, kind, box.oci_state())
            if opts.pid_file:
                write_pid_file(opts.pid_file, pid)
        except BaseException:
            group.destroy()
            raise
    except BaseException:
        box.remove()
        raise
    finally:
        for fd in (fifo, console):
            if fd is not None:
                os.close(fd)
    log.write("info", f"created {opts.id}: pid {pid}, cgroup /{group.relpath}"
                      + (f" (systemd scope {group.unit})" if group.unit else ""))
    return box, outcome


def start_held(spec, group, steps, fifo: int, console: int | None, detach: bool = True):
    """spawn the container's pid 1; (its host pid, the spawn thread's outcome) once it waits on exec.fifo.

    spawn itself returns only when the program has exec'd (it reads the child's error pipe until
    exec closes it), so it runs in a thread while this one waits for the "ready" byte - the same
    arrangement as labkit.container.Container.create."""
    ready_r, ready_w = os.pipe()
    outcome: dict = {}

    def note_pid():      # before pivot_root /proc is still the host's, so this is the host pid
        os.write(ready_w, os.readlink("/proc/self").encode() + b"\n")

    def hold():
        os.write(ready_w, b"R")
        os.close(ready_w)
        fd = os.open(f"/proc/self/fd/{fifo}", os.O_WRONLY | os.O_CLOEXEC)   # blocks until `start`
        os.write(fd, b"0")
        os.close(fd)

    def spawn():
        try:
            outcome["process"] = namespaces.spawn(spec.process.args, spec.namespaces, cgroup=group, hostname=spec.hostname,
                             mount_proc=False, env=spec.process.env, cwd=spec.process.cwd,
                             setup=[note_pid, *setup.explained(steps), hold], detach=detach,
                             pass_fds=[fd for fd in (ready_w, fifo, console) if fd is not None])
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    thread = outcome["thread"] = threading.Thread(target=spawn, daemon=True, name="spawn")
    thread.start()
    data = b""
    try:
        while not data.endswith(b"R"):
            if syscalls.readable([ready_r], 0.05):
                chunk = os.read(ready_r, 64)
                if chunk:
                    data += chunk
                    continue
            if not thread.is_alive():
                thread.join()
                raise outcome.get("error") or LabkitError("the container's process exited during setup")
    finally:
        os.close(ready_r)
        os.close(ready_w)
    return int(data.split(b"\n")[0]), outcome


def write_pid_file(path: str, pid: int) -> None:
    """Written whole, then renamed into place: the shim must never read half a number."""
    partial = f"{path}.labkit-tmp"
    with open(partial, "w") as f:
        f.write(str(pid))
    os.replace(partial, path)

