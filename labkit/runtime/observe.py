"""What notebook 41 reads from the machine about a runtime's work: never labkit's bookkeeping, always
/proc, cgroupfs and the system calls strace saw.

    kernel_facts(pid)        the facts that must be equal whichever runtime made the container
    docker_layout(pid)       where Docker keeps a container's bundle, runtime state and containerd -
                             read from the shim that holds its pid 1, not from known paths
    cgroup_of(pid)           the container's cgroup as /proc/PID/cgroup names it
    cgroup_for(path, id, systemd)  what linux.cgroupsPath becomes under either cgroup driver
    syscall_steps(trace)     an `strace -f` log cut down to the container-making calls
    compare_configs(a, b)    two config.json documents, field by field
    check_pid_one(cid, answer)  the exercise's checker: is `answer` the host pid of cid's pid 1?
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .. import capabilities

NAMESPACE_KINDS = ("pid", "mnt", "net", "uts", "ipc", "cgroup")
STEPS = ("clone", "clone3", "unshare", "setns", "mount", "pivot_root", "sethostname", "execve")
_CALL = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s*(\w+)\((.*)$")


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _cgroups(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return {line.split(":")[1]: line.rstrip("\n").split(":", 2)[2] for line in f}


def kernel_facts(pid: int, container_id: str = "") -> dict:
    """Namespaces of its own, cgroup and limits, capabilities, seccomp, parent - read from /proc."""
    status = _status(pid)
    groups = _cgroups(pid)
    memory_path = cgroup_of(pid)
    root = "/sys/fs/cgroup/memory" if "memory" in groups else "/sys/fs/cgroup"
    limit_file = "memory.limit_in_bytes" if "memory" in groups else "memory.max"
    try:
        with open(f"{root}{memory_path}/{limit_file}") as f:
            memory = f.read().strip()
    except OSError:
        memory = "?"
    parent = int(status["PPid"])
    with open(f"/proc/{parent}/comm") as f:
        parent_comm = f.read().strip()
    return {
        "own namespaces": ", ".join(k for k in NAMESPACE_KINDS
                                    if os.stat(f"/proc/{pid}/ns/{k}").st_ino != os.stat(f"/proc/self/ns/{k}").st_ino),
        "pid inside": status["NSpid"].split()[-1],
        "parent": parent_comm,
        "cgroup": memory_path.replace(container_id, "<id>") if container_id else memory_path,
        "memory limit": memory,
        "capabilities kept": len(capabilities.of_process(pid, "CapBnd")),
        "seccomp mode": status.get("Seccomp", "?"),
        "no_new_privs": status.get("NoNewPrivs", "?"),
        "uid": status["Uid"].split()[0],
    }


def cgroup_of(pid: int) -> str:
    """The process's cgroup: the v2 path, or on a v1 host the memory hierarchy's."""
    groups = _cgroups(pid)
    return groups.get("memory") or groups.get("", "")


def cgroup_for(cgroups_path: str, container_id: str, systemd: bool) -> str:
    """The cgroup a runtime makes for config.json's linux.cgroupsPath: with the cgroupfs driver the
    path itself (/docker/<id>); with the systemd driver (slice:prefix:name) the scope's directory."""
    if not systemd:
        return cgroups_path
    from .systemd import parse_path
    return "/" + parse_path(cgroups_path, container_id).relpath


def docker_layout(pid: int) -> dict:
    """Where Docker's pieces of the container with host pid `pid` are, asked from the kernel.

    pid 1's parent is containerd's shim; the shim runs in the container's bundle (its working
    directory) and was started as `containerd-shim-runc-v2 -namespace NS -id ID -address SOCKET`;
    the bundle's options.json is what containerd told the shim about the runtime: its --root
    directory (plus /NS) and whether it must pass --systemd-cgroup. containerd itself is the process
    listening on SOCKET - dockerd's own containerd or the system's, whichever this Docker uses."""
    shim = int(_status(pid)["PPid"])
    with open(f"/proc/{shim}/cmdline") as f:
        argv = f.read().split("\0")
    namespace, address = argv[argv.index("-namespace") + 1], argv[argv.index("-address") + 1]
    bundle = Path(os.readlink(f"/proc/{shim}/cwd"))
    options_file = bundle / "options.json"
    options = json.loads(options_file.read_text()) if options_file.exists() else {}
    return {"shim": shim, "bundle": bundle, "namespace": namespace, "containerd": listener_of(address),
            "containerd socket": address,
            "runtime root": f"{options.get('root') or '/run/containerd/runc'}/{namespace}",
            "systemd cgroup": bool(options.get("systemd_cgroup"))}


def listener_of(socket_path: str) -> int:
    """The pid of the process that listens on a unix socket (the kernel's socket table, via psutil)."""
    import psutil
    wanted = os.path.realpath(socket_path)
    pids = {c.pid for c in psutil.net_connections("unix")
            if c.pid and c.laddr and not c.raddr and os.path.realpath(c.laddr) == wanted}
    if len(pids) != 1:
        raise LookupError(f"{len(pids)} processes listen on {socket_path}: {sorted(pids)}")
    return pids.pop()


def syscall_steps(trace: str, limit: int = 200) -> list[str]:
    """The lines of an `strace -f -e trace=...` log that make a container, shortened to one screen
    line each; the runtime's own execs of helper programs are kept (they show who runs what)."""
    steps = []
    for line in trace.splitlines():
        match = _CALL.match(line.strip())
        if not match or match.group(2) not in STEPS or "resumed>" in line:
            continue
        pid, call, rest = match.groups()
        if call in ("clone", "clone3") and "CLONE_NEW" not in rest:
            continue                       # a plain fork or thread: not a namespace step
        if call == "mount" and "MS_REMOUNT" in rest and len(steps) > limit:
            continue
        steps.append(f"{pid:>7} {call}({rest[:110]}{'...' if len(rest) > 110 else ''}")
    return steps[:limit]


def step_counts(steps: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(STEPS, 0)
    for step in steps:
        counts[step.split()[1].split("(")[0]] += 1
    counts["clone"] += counts.pop("clone3")
    return counts


def compare_configs(docker: dict, bundle: dict, paths=None) -> list[tuple[str, str, str]]:
    """(field, Docker's value, the bundle's value) for the fields a learner should look at."""
    def get(doc, path):
        value = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, list):
            return f"{len(value)} entries"
        if isinstance(value, dict):
            return "{" + ", ".join(sorted(value)) + "}"
        return "-" if value is None else str(value)
    paths = paths or ["ociVersion", "process.args", "process.user", "process.capabilities.bounding",
                      "process.oomScoreAdj", "root.readonly", "hostname", "mounts", "hooks",
                      "linux.namespaces", "linux.cgroupsPath", "linux.resources", "linux.seccomp",
                      "linux.sysctl", "linux.maskedPaths", "linux.readonlyPaths"]
    return [(p, get(docker, p), get(bundle, p)) for p in paths]


def check_pid_one(container_id: str, answer: str) -> tuple[bool, str]:
    """Correct when `answer` is the host pid of the container's first process, read from the kernel:
    that process is pid 1 in its own pid namespace, and it lives in the container's cgroup."""
    if not answer.strip().isdigit():
        return False, "give a number: a process id as the host sees it"
    pid = int(answer)
    try:
        status, groups = _status(pid), _cgroups(pid)
    except OSError:
        return False, f"there is no process {pid} on this machine"
    in_container = any(container_id in path for path in groups.values())
    if not in_container:
        return False, f"process {pid} is not in the container's cgroup (see /proc/{pid}/cgroup)"
    if status["NSpid"].split()[-1] != "1":
        return False, (f"process {pid} is in the container, but inside it is pid "
                       f"{status['NSpid'].split()[-1]}, not 1 (see NSpid in /proc/{pid}/status)")
    return True, f"yes: /proc/{pid}/status says NSpid {status['NSpid']} - pid 1 inside, {pid} outside"
