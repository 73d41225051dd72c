"""The workbook's exercise checkers, one per notebook, each asking the kernel - never a stored answer.

A notebook's exercise cell names its checker, e.g. ``checkers.own_hostname`` for 03-uts, and hands it
to ``exercise.SelfCheck``. They live here, not in the notebooks, so that
tests/integration/test_checkers.py can run every one of them against the instructor's solution and
against wrong answers on the real kernel. Each returns ``(correct, explanation)``; an answer that
cannot even be looked up (no such process, nothing there yet) raises ``NotYet``. Anything else a
checker raises is a bug in the checker, and SelfCheck shows it as one.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from . import host, nsview, timens
from .exercise import NotYet
from .namespaces import enter, identity
from .propagation import is_mounted

MiB = 2**20


def _live(pid: int) -> int:
    if pid <= 0 or not os.path.exists(f"/proc/{pid}/ns"):
        raise NotYet(f"there is no process {pid} (has it exited already?)")
    return pid


def _own(pid: int, kind: str, what: str) -> None:
    """NotYet unless `pid` has a `kind` namespace of its own (not this notebook's)."""
    if identity(_live(pid))[kind] == identity()[kind]:
        raise NotYet(f"process {pid} shares this notebook's {kind} namespace: {what}")


# --- 00 welcome ------------------------------------------------------------------------------------

def cgroup_mode(answer: str) -> tuple[bool, str]:
    actual = host.cgroup_mode()
    return answer.lower() == actual, f"statfs(/sys/fs/cgroup) says this machine runs cgroup {actual}."


# --- chapter 1: namespaces -------------------------------------------------------------------------

def new_namespaces(pid: int, kinds: str) -> tuple[bool, str]:
    """01: a process with new namespaces of exactly `kinds`, sharing the rest with this notebook."""
    _live(pid)
    return nsview.check_namespaces(pid, kinds)


def pid_two(pid: int, box_pid: int) -> tuple[bool, str]:
    """02: `pid` is pid 2 inside the pid namespace whose pid 1 is `box_pid`."""
    _live(pid)
    if os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat(f"/proc/{box_pid}/ns/pid").st_ino:
        return False, f"process {pid} is not in the box's pid namespace"
    inside = nsview.nspid(pid)[-1]
    return inside == 2, f"/proc/{pid}/status says NSpid ... {inside}: it is pid {inside} inside the box"


def own_hostname(pid: int, name: str, host_name: str) -> tuple[bool, str]:
    """03: `pid` has its own uts namespace whose hostname is `name`; this machine's is still `host_name`."""
    _own(pid, "uts", "a hostname set there would be this machine's")
    inside = enter(pid, "uts", ["hostname"]).stdout.strip()
    unchanged = os.uname().nodename == host_name
    return inside == name and unchanged, f"inside, the kernel says hostname={inside!r}; " \
        f"this machine's hostname unchanged: {unchanged}"


def private_mount(pid: int, directory: str) -> tuple[bool, str]:
    """04: something is mounted on `directory` in pid's mount namespace, and not in this notebook's."""
    _own(pid, "mnt", "a mount there would be everyone's")
    inside, outside = is_mounted(directory, pid), is_mounted(directory, "self")
    return inside and not outside, f"mounted in its mountinfo: {inside}; in this notebook's: {outside}"


def loopback_up(pid: int) -> tuple[bool, str]:
    """05: pid has its own network namespace, and lo is up in it."""
    _own(pid, "net", "that is the host's network")
    state = {}
    for line in enter(pid, "net", ["ip", "-o", "link"]).stdout.splitlines():
        name, flags = line.split(": ")[1].split("@")[0], line.split("<")[1].split(">")[0].split(",")
        state[name] = "UP" in flags
    return state.get("lo") is True, f"interfaces in its namespace, up or not: {state}"


def _msg_keys(text: str) -> list[int]:
    return [int(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def private_message_queue(pid: int) -> tuple[bool, str]:
    """06: pid's own ipc namespace holds a System V message queue the host cannot see."""
    _own(pid, "ipc", "a queue there would be the host's")
    inside = _msg_keys(enter(pid, "ipc", ["cat", "/proc/sysvipc/msg"]).stdout)
    outside = _msg_keys(Path("/proc/sysvipc/msg").read_text())
    mine = [k for k in inside if k not in outside]
    return bool(mine), f"message queues in its ipc namespace: {len(inside)}; not visible on the host: {len(mine)}"


def remapped_root(pid: int, outside_uid: int) -> tuple[bool, str]:
    """07: pid is uid 0 inside its user namespace, and `outside_uid` as the host sees it."""
    _own(pid, "user", "its uid is the host's uid")
    first = Path(f"/proc/{pid}/uid_map").read_text().split("\n")[0].split()
    with open(f"/proc/{pid}/status") as f:
        uid = int(next(line for line in f if line.startswith("Uid:")).split()[2])     # effective
    ok = first[:2] == ["0", str(outside_uid)] and uid == outside_uid
    return ok, f"uid_map starts with {' '.join(first)}; the host sees its effective uid as {uid}"


def boottime_ahead(pid: int, seconds: float) -> tuple[bool, str]:
    """08: pid's time namespace moves CLOCK_BOOTTIME ahead by at least `seconds`."""
    _own(pid, "time", "its clocks are the host's")
    boottime = timens.offsets(pid)["boottime"]
    return boottime >= seconds, f"its time namespace's boottime offset is {boottime / timens.DAY:.1f} days"


# --- chapter 2: cgroups ----------------------------------------------------------------------------

def cgroup_of(pid: int | str, controller: str) -> str:
    """The path of pid's group for `controller` in /proc/PID/cgroup (v2: the one unified line)."""
    lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    for _, names, path in lines:
        if controller in names.split(","):
            return path
    return next(path for hierarchy, names, path in lines if hierarchy == "0" and names == "")


def memory_cgroup(path: str, pid: int) -> tuple[bool, str]:
    """10: `path` is the memory cgroup of process `pid` (the notebook's kernel)."""
    real = cgroup_of(pid, "memory")
    if path == real:
        return True, f"the kernel says process {pid} is in memory cgroup {real!r}"
    return False, f"that is not the memory line of /proc/{pid}/cgroup"


def _read(cg, controller: str, v2_name: str, v1_name: str) -> tuple[str, str]:
    name = v2_name if cg.version == "v2" else v1_name
    return name, Path(cg.path(controller), name).read_text().strip()


def memory_limit(answer: str, cg, limit: int) -> tuple[bool, str]:
    """11: cg's memory limit file holds `limit` bytes, and the answer is exactly what it holds."""
    name, real = _read(cg, "memory", "memory.max", "memory.limit_in_bytes")
    if real != str(limit):
        return False, f"{name} holds {real}, which is not {limit // MiB} MiB"
    if answer != real:
        return False, f"the limit is right; now type exactly what {name} holds"
    return True, f"{name} = {real} bytes = {limit // MiB} x 1024 x 1024"


def cpu_quota(answer: str, cg, cpus: float) -> tuple[bool, str]:
    """12: cg is capped at `cpus` CPU, and the answer is what its quota file holds."""
    name, real = _read(cg, "cpu", "cpu.max", "cpu.cfs_quota_us")
    cap = cg.limits()["cpu"]
    if cap != cpus:
        return False, f"the kernel's {name} says {real!r}: that is a cap of {cap} CPU, not {cpus}"
    if answer.split() != real.split():
        return False, f"the cap is right, but {name} does not read {answer!r}"
    return True, f"{name} = {real!r}: {cap} CPU per period"


def cap_peak(mib: int, cg, limit: int) -> tuple[bool, str]:
    """16: cg's memory cap is `limit` (v2: the throttle memory.high; v1, which has no throttle:
    memory.limit_in_bytes), and `mib` is the group's peak usage in whole MiB (v2 memory.peak,
    v1 memory.max_usage_in_bytes)."""
    name, real = _read(cg, "memory", "memory.high", "memory.limit_in_bytes")
    if real != str(limit):
        return False, f"{name} holds {real}, which is not {limit // MiB} MiB"
    peak = cg.stats()["memory_peak"]
    if peak < limit // 2:
        return False, f"the group's peak is only {peak // MiB} MiB: run the writer inside it first"
    if mib != peak // MiB:
        return False, f"{mib} MiB is not the peak the kernel recorded"
    return True, (f"peak {peak // MiB} MiB under a {limit // MiB} MiB {name}: the writer wrote 48 MiB, "
                  "the kernel reclaimed page cache to hold it near the cap")


def fork_refusals(count: int, cg, pids_max: int) -> tuple[bool, str]:
    """13: cg has pids.max = `pids_max` and the kernel refused `count` forks in it."""
    limit, refused = cg.limits()["pids"], cg.stats()["pids_events_max"]
    if limit != pids_max:
        return False, f"pids.max of the group is {limit}, not {pids_max}"
    if not refused:
        return False, "pids.events counts no refusal yet: run the forker inside the group"
    if count != refused:
        return False, f"{count} is not what pids.events says"
    return True, f"pids.events: max {refused} - the kernel refused {refused} fork(s) at pids.max = {pids_max}"


def io_write_cap(answer: str, cg, rdev: int, bps: int) -> tuple[bool, str]:
    """14: cg's write cap for block device `rdev` is `bps` bytes/s, and the answer is that number."""
    devnum = f"{os.major(rdev)}:{os.minor(rdev)}"
    name, text = _read(cg, "io", "io.max", "blkio.throttle.write_bps_device")
    real = None
    for fields in (line.split() for line in text.splitlines()):
        if fields and fields[0] == devnum:
            # v1: "7:0 2097152"   v2: "7:0 rbps=max wbps=2097152 riops=max wiops=max"
            real = fields[1] if cg.version == "v1" else dict(kv.split("=") for kv in fields[1:])["wbps"]
    if real != str(bps):
        return False, f"{name} says {real} for {devnum}: that is not {bps // MiB} MiB/s"
    if answer != real:
        return False, f"the cap is right; type exactly the number in {name}"
    return True, f"{name}: {devnum} -> {real} bytes/s"


def cpuset_pin(answer: str, cg, pid: int, cpus: str) -> tuple[bool, str]:
    """15: cg's cpuset.cpus is `cpus`, the scheduler agrees for `pid`, and the answer is the file's text."""
    real = Path(cg.path("cpuset"), "cpuset.cpus").read_text().strip()
    allowed = os.sched_getaffinity(_live(pid))
    if real != cpus or allowed != {int(c) for c in cpus.split(",")}:
        return False, f"cpuset.cpus of the group is {real!r}, and the process may run on {sorted(allowed)}"
    if answer != real:
        return False, "the pin is right; type exactly what cpuset.cpus holds"
    return True, f"cpuset.cpus = {real!r}; the scheduler agrees: the process may run on {sorted(allowed)} only"


# --- chapter 3: networking ------------------------------------------------------------------------

def second_port(port: int, lab, web_ip: str) -> tuple[bool, str]:
    """21: `port` of the "host" (a labkit.net.nat.NatLab) is published to a server in the container at
    `web_ip`: a connection from "outside" is answered, and conntrack shows it DNATed to that container."""
    from .net.probes import socket_in

    if port == 8080:
        return False, "8080 is the port section 3 published; publish another one"
    if not 0 < port < 65536:
        raise NotYet(f"{port} is not a TCP port number (1 to 65535)")
    probe = socket_in(lab.outside)
    probe.settimeout(3)
    try:
        probe.bind((str(lab.server), 0))
        probe.connect((str(lab.host_uplink.ip), port))
        probe.sendall(b"labkit-check\n")
    except ConnectionRefusedError:
        return False, f"connecting to {lab.host_uplink.ip}:{port} from outside: refused (a reset: nobody listens there)"
    except OSError as exc:
        return False, f"connecting to {lab.host_uplink.ip}:{port} from outside: {exc.strerror or exc}"
    finally:
        probe.close()
    answered = [f for f in lab.flows() if f.original[2:] == (str(lab.host_uplink.ip), port) and f.destination_nat]
    if not answered:
        return False, f"port {port} answered, but conntrack shows no DNAT for it: the \"host\" itself answered"
    who = answered[0].reply[0]
    return who == web_ip, f"conntrack: {lab.host_uplink.ip}:{port} was answered by {who}:{answered[0].reply[1]} (web is {web_ip})"


# --- chapter 4: from scratch -----------------------------------------------------------------------

def busybox_container(pid: int, hostname: str, memory: int) -> tuple[bool, str]:
    """30: pid runs in its own mnt and uts namespaces, on a busybox root, with `hostname` and `memory`."""
    _own(pid, "mnt", "not a container")
    if not os.path.exists(f"/proc/{pid}/root/bin/busybox"):
        return False, f"process {pid}'s / is not the busybox root"
    name = enter(pid, ["uts"], ["hostname"]).stdout.strip()
    if name != hostname:
        return False, f"its hostname is {name!r}"
    group = cgroup_of(pid, "memory")
    v1 = os.path.isdir("/sys/fs/cgroup/memory" + group)
    limit_file = "/sys/fs/cgroup/memory" + group + "/memory.limit_in_bytes" if v1 \
        else "/sys/fs/cgroup" + group + "/memory.max"
    limit = Path(limit_file).read_text().strip()
    if limit != str(memory):
        return False, f"its memory limit ({limit_file}) is {limit}"
    return True, f"pid {pid}: own mnt and uts namespaces, busybox /, hostname {name}, {limit} bytes in {limit_file}"


def whiteout(answer: str, upper: Path, relpath: str) -> tuple[bool, str]:
    """31: upper/relpath is a whiteout (a 0:0 character device), and the answer is its major:minor."""
    path = Path(upper) / relpath
    if not os.path.lexists(path):
        raise NotYet(f"nothing at {relpath} in the upper directory yet: delete /{relpath} inside the container")
    st = os.lstat(path)
    real = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if not stat.S_ISCHR(st.st_mode):
        return False, f"upper/{relpath} is not a character device - did you write to it instead of deleting?"
    if answer.replace(" ", "") != real:
        return False, f"{answer} is not what lstat says"
    return True, f"upper/{relpath} is a character device {real}: overlayfs's whiteout, hiding the base layer's file"


def least_privilege(pid: int) -> tuple[bool, str]:
    """32: a container whose root holds NET_ADMIN but not SYS_ADMIN, has lo up in its own network
    namespace, and runs under a seccomp filter - from CapEff, `ip link` inside it, and Seccomp:."""
    from . import capabilities, seccomp

    _own(pid, "net", "not a container's network namespace")
    held = capabilities.of_process(pid, "CapEff")
    link = enter(pid, "net", ["ip", "-o", "link", "show", "lo"]).stdout
    flags = link.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in link else []
    mode = seccomp.status(pid)["Seccomp"]
    facts = (f"NET_ADMIN held: {'NET_ADMIN' in held}; SYS_ADMIN held: {'SYS_ADMIN' in held}; "
             f"lo flags: {','.join(flags) or '?'}; Seccomp: {mode}")
    return ("NET_ADMIN" in held and "SYS_ADMIN" not in held and "UP" in flags and mode == 2), facts


def own_layer(answer: str, directory: Path) -> tuple[bool, str]:
    """33: `answer` is the digest of the top layer of the OCI layout in `directory`; a container run from
    that image by labkit has no /etc/hostname and has /etc/greeting."""
    from . import ociimage
    from .container import Container

    digest = answer.strip()
    blob = Path(directory) / "blobs/sha256" / digest.removeprefix("sha256:")
    if not digest.startswith("sha256:") or not blob.is_file():
        raise NotYet(f"no blob {digest[:19]}... in {directory}/blobs/sha256")
    try:
        image = ociimage.load(directory)
    except (ociimage.DigestMismatch, ValueError, KeyError, LookupError) as exc:
        return False, f"labkit could not load the layout: {exc}"
    if digest not in image.diff_ids:
        return False, f"{digest[:19]}... is a blob of the layout, but not one of its layers"
    if digest != image.diff_ids[-1]:
        return False, f"{digest[:19]}... is a layer below the top one: yours goes on top of the base"
    probe = Container(image.image, ["sh", "-c", "for f in /etc/hostname /etc/greeting; do "
                                                "test -e $f && echo $f: present || echo $f: gone; done"])
    try:
        probe.start().wait(30)
        seen = probe.logs().splitlines()
    finally:
        probe.delete(force=True)
    return seen == ["/etc/hostname: gone", "/etc/greeting: present"], "the container sees " + "; ".join(seen)


# --- chapter 6: VMs --------------------------------------------------------------------------------

def meminfo_total_kb() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1])


def parse_kb(answer: str) -> int:
    return int(answer.lower().removesuffix("kb").strip().replace(",", "").replace("_", ""))


def container_memtotal(given_kb: int, limit: int) -> tuple[bool, str]:
    """50: the MemTotal a process in a container with a `limit`-byte memory cgroup sees: the host's."""
    real = meminfo_total_kb()
    if given_kb == real:
        return True, (f"the kernel reports MemTotal {real} kB to every process on it, container or not; "
                      "the limit lives in the cgroup (memory.max / memory.limit_in_bytes) instead")
    if given_kb == limit // 1024:
        return False, "that is the cgroup's limit - but /proc/meminfo is not namespaced"
    return False, f"{given_kb} kB is not what the container's kernel reports"

