"""`exec`: another process inside a running container - how `docker exec` reaches the kernel.

    labkit-runtime exec --process FILE --detach --pid-file FILE [--console-socket SOCK] ID
    labkit-runtime exec [--tty] [--cwd DIR] [--env K=V] [--user UID[:GID]] ID COMMAND...

labkit.namespaces.spawn joins the container's namespaces (setns, user first, mnt last, then a fork
into its pid namespace), puts the process in the container's cgroup before it runs, and applies the
process object's capabilities, seccomp (the container's profile), user and cwd. With --detach the
joining child exits at once, so the new process - like the container's pid 1 - belongs to the shim.
"""
from __future__ import annotations

import json
import os

from .. import namespaces
from ..errors import Conflict, LabkitError, NotFound
from ..oci import Reader
from . import seccomp, setup, spec as specs, state as states
from .cgroup import RuntimeCgroup
from .create import write_pid_file


def _process(opts, container_spec) -> specs.Process:
    if opts.get("process"):
        with open(opts["process"]) as f:
            return specs.parse_process(json.load(f), Reader(opts["process"]))
    if not opts.get("command"):
        raise LabkitError("exec: give --process FILE or a COMMAND")
    proc = container_spec.process
    uid, _, gid = (opts.get("user") or f"{proc.uid}:{proc.gid}").partition(":")
    env = dict(proc.env)
    env.update(item.split("=", 1) for item in opts.get("env") or [] if "=" in item)
    return specs.Process(args=opts["command"], env=env, cwd=opts.get("cwd") or proc.cwd,
                         terminal=bool(opts.get("tty")), uid=int(uid), gid=int(gid or uid),
                         capabilities=proc.capabilities, no_new_privileges=proc.no_new_privileges,
                         apparmor=proc.apparmor)


def exec_(opts, log) -> int:
    box = states.Container(opts.root, opts.id)
    if not box.exists():
        raise NotFound("container does not exist")
    if box.status() not in ("running", "created"):
        raise Conflict(f"cannot exec in a {box.status()} container")
    container_spec = specs.load(box.data["bundle"], systemd=box.unit is not None)
    proc = _process(opts, container_spec)
    syscall_filter = seccomp.build(container_spec.seccomp) if container_spec.seccomp else None
    steps = []
    console = None
    try:
        if opts.get("console-socket"):
            console = setup.connect_console(opts["console-socket"])
            steps.append(setup.console_step(console, proc.console_size))
        elif proc.terminal and opts.get("process"):
            raise LabkitError("process.terminal is true but no --console-socket was given")
        steps += setup.process_steps(proc, seccomp=syscall_filter)
        child = namespaces.spawn(proc.args, None, join=(box.pid, box.data["namespaces"]),
                                 cgroup=RuntimeCgroup(box.data["cgroup"]), env=proc.env, cwd=proc.cwd,
                                 setup=steps, detach=bool(opts.get("detach")),
                                 pass_fds=[console] if console is not None else [])
    finally:
        if console is not None:
            os.close(console)
    if opts.get("pid-file"):
        write_pid_file(opts["pid-file"], child.pid)
    if opts.get("detach"):
        child.poll()         # collect the joining child, which has already exited
        return 0
    returncode = child.wait()
    return returncode if returncode >= 0 else 128 - returncode
