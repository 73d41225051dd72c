"""The small verbs: start, state, kill, delete, list, ps, pause, resume, features.

Each reads the container's state directory (labkit.runtime.state) and asks the kernel the rest (is
the pid alive, does exec.fifo exist, is the freezer frozen), so none of them imports the code that
builds containers. `start` and `delete` run in every `docker run`: they import nothing beyond os
unless a hook or a cgroup still in use asks for more (json, select, signal are imported where used).
"""
from __future__ import annotations

import os
import sys

from ..errors import Conflict, LabkitError, NotFound
from . import state as states


def _existing(opts) -> states.Container:
    box = states.Container(opts.root, opts.id)
    if not box.exists():
        raise NotFound("container does not exist")
    return box


def start(opts, log) -> int:
    """Open exec.fifo for reading: the process blocked opening it for writing goes on and execs.

    That open is the release, so it is the last thing done: containerd's shim starts watching the
    cgroup for OOM kills only when `start` has returned, and a program that hits its memory limit
    within milliseconds must not be faster than that (runc's start is a few ms too)."""
    box = _existing(opts)
    status = box.status()
    if status != "created":
        raise Conflict("cannot start a container that has stopped" if status == "stopped" else
                       f"cannot start an already {status} container")
    release(box)
    sys.stdout.flush()
    os._exit(0)                          # no interpreter teardown: the shim is waiting


def release(box: states.Container) -> None:
    import select
    import time

    fd = os.open(box.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.unlink(box.fifo)              # the container is "running" from here on
        waiting = select.poll()
        waiting.register(fd, select.POLLIN)
        deadline = time.monotonic() + 10
        while not waiting.poll(50) or not os.read(fd, 1):
            if not box.alive():
                raise LabkitError("cannot start a container that has stopped")
            if time.monotonic() > deadline:
                raise LabkitError("the container's process did not take the start signal within 10 s")
    finally:
        os.close(fd)
    if box.has_hooks("poststart"):
        from . import hooks
        hooks.run(box.data["hooks"], "poststart", box.oci_state())


def state(opts, log) -> int:
    from .plainjson import dumps
    print(dumps(_existing(opts).oci_state(), indent=2))
    return 0


def _signal_number(name: str | None) -> int:
    import signal
    if not name:
        return signal.SIGTERM
    if name.isdigit():
        return int(name)
    upper = name.upper()
    try:
        return int(getattr(signal, upper if upper.startswith("SIG") else "SIG" + upper))
    except AttributeError:
        raise LabkitError(f"unknown signal {name!r}") from None


def kill(opts, log) -> int:
    import signal
    box = _existing(opts)
    sig = _signal_number(opts.get("signal"))
    if opts.get("all"):
        box.cgroup().signal_all(sig)
        return 0
    if box.status() == "stopped":
        raise LabkitError("container not running")
    try:
        fd = os.pidfd_open(box.pid)
    except ProcessLookupError:
        raise LabkitError("container not running") from None
    try:
        if not box.alive():
            raise LabkitError("container not running")
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        raise LabkitError("container not running") from None
    finally:
        os.close(fd)
    return 0


def delete(opts, log, force: bool = False) -> int:
    """Remove a stopped container (--force: any), as `runc delete`: with --force a container that
    does not exist (the shim's second delete, after the first one) is not an error."""
    force = force or bool(opts.get("force"))
    box = states.Container(opts.root, opts.id)
    if not box.exists():
        if os.path.isdir(box.dir) or force:      # a create that died half-way, or nothing to do
            box.remove()
            return 0
        raise NotFound("container does not exist")
    status = box.status()
    if status in ("running", "paused") and not force:
        raise Conflict(f"cannot delete container {opts.id} that is not stopped: {status}")
    if box.unit or not _remove_empty_cgroup(box.cgroup_path):
        box.runtime_cgroup().destroy()   # kills what is left (a created container's pid 1 too); stops a unit
    try:
        if box.has_hooks("poststop"):
            from . import hooks
            hooks.run(box.data["hooks"], "poststop", box.oci_state())
    finally:
        box.remove()
    log.write("info", f"deleted {opts.id}")
    return 0


def _remove_empty_cgroup(relpath: str) -> bool:
    """The usual case of `delete`, after the program exited: rmdir the cgroup's directories, found in
    /sys/fs/cgroup, when no process is left in any of them. False (nothing removed) when one is
    still in use: then labkit.cgroups kills and removes (an import `delete` need not pay otherwise)."""
    dirs = [d for d in (f"/sys/fs/cgroup/{relpath}", *(f"/sys/fs/cgroup/{h}/{relpath}"
                                                        for h in os.listdir("/sys/fs/cgroup")))
            if os.path.isfile(f"{d}/cgroup.procs")]
    for d in dirs:
        with open(f"{d}/cgroup.procs") as f:
            if f.read().strip() or any(os.path.isdir(f"{d}/{e}") for e in os.listdir(d)):
                return False
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return False
    return True


def list_(opts, log) -> int:
    import json
    boxes = states.all_containers(opts.root)
    if opts.get("quiet"):
        print("\n".join(b.id for b in boxes))
    elif opts.get("format") == "json":
        print(json.dumps([b.oci_state() for b in boxes]))
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        for b in boxes:
            s = b.oci_state()
            rows.append((b.id, str(s["pid"]), s["status"], s["bundle"], s["created"], "root"))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return 0


def ps(opts, log) -> int:
    """The host pids of the container's processes (json), or `ps` output filtered to them."""
    import json
    pids = _existing(opts).cgroup().procs()
    if opts.get("format") == "json":
        print(json.dumps(pids))
        return 0
    import subprocess
    out = subprocess.run(["ps", *(opts.get("ps-args") or ["-ef"])], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    column = out[0].split().index("PID")
    print(out[0])
    for line in out[1:]:
        if int(line.split()[column]) in pids:
            print(line)
    return 0


def _freeze(box: states.Container, frozen: bool) -> None:
    import time
    group = box.cgroup()
    if group.version == "v1":
        path, value = os.path.join(group.path("freezer"), "freezer.state"), "FROZEN" if frozen else "THAWED"
    else:
        path, value = os.path.join(group.dirs()[0], "cgroup.freeze"), "1" if frozen else "0"
    with open(path, "w") as f:
        f.write(value)
    deadline = time.monotonic() + 5
    while box.frozen() != frozen:        # v1 passes through FREEZING; v2 reports in cgroup.events
        if time.monotonic() > deadline:
            raise LabkitError(f"the cgroup did not become {value} within 5 s")
        time.sleep(0.005)


def pause(opts, log) -> int:
    box = _existing(opts)
    if box.status() != "running":
        raise Conflict(f"container not running: {box.status()}")
    _freeze(box, True)
    return 0


def resume(opts, log) -> int:
    box = _existing(opts)
    if box.status() != "paused":
        raise Conflict(f"container not paused: {box.status()}")
    _freeze(box, False)
    return 0


def features(opts, log) -> int:
    """What this runtime implements, in runc's `features` format."""
    from .setup import FLAGS, PROPAGATION
    from ..capabilities import NAMES
    from ..oci import NAMESPACES
    import json
    print(json.dumps({
        "ociVersionMin": "1.0.0", "ociVersionMax": states.OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": sorted([*FLAGS, *PROPAGATION]),
        "linux": {"namespaces": sorted(NAMESPACES), "capabilities": ["CAP_" + n for n in NAMES],
                  "cgroup": {"v1": True, "v2": True, "systemd": True, "systemdUser": False},
                  "seccomp": {"enabled": True}, "apparmor": {"enabled": True},
                  "selinux": {"enabled": False}},
        "annotations": {"org.labkit.runtime": "labkit-runtime (the Docker Deep Dive Lab's OCI runtime)"},
    }, indent=2))
    return 0

