"""What a client asked for: the body of POST /containers/create, checked once and turned into a spec.

One rule: **every field the engine accepts is applied, and visible in the kernel; every field it does
not apply is refused with a 400 that names it.** The docker CLI sends every field of its config,
mostly as zero values (``"Privileged": false``, ``"PortBindings": {}``); a zero value asks for
nothing. A field set to anything else is either in `APPLIED` - which says where the kernel shows it
(tests/integration/test_engine_fields.py checks each one there) - or refused, with the docker flag
and the reason when `REFUSED` knows them, and as "not applied by labkit's engine" otherwise.
"""
from __future__ import annotations

import re
import resource
import signal
from dataclasses import dataclass, field

from .. import capabilities
from ..errors import InvalidValue

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")       # Docker's rule for container names
ISOLATED_NETWORKS = ("", "default", "none")                  # all mean: a new net ns with only lo

# field -> where it is applied (what a learner, or the field test, reads to see it).
APPLIED = {
    "Config.Hostname": "uts namespace: /proc/sys/kernel/hostname",
    "Config.Domainname": "uts namespace: /proc/sys/kernel/domainname",
    "Config.User": "/proc/PID/status Uid/Gid (names looked up in the image's /etc/passwd, /etc/group)",
    "Config.Tty": "pid 1's stdin/stdout/stderr are a pty (/proc/PID/fd/0 -> /dev/pts/N), its controlling tty",
    "HostConfig.ConsoleSize": "that pty's window size before pid 1 runs (TIOCGWINSZ on it: `stty size` inside)",
    "Config.OpenStdin": "pid 1's stdin is a pipe the engine holds (/proc/PID/fd/0 -> pipe:[...])",
    "Config.AttachStdin": "the attach connection carries the client's input to pid 1's stdin",
    "Config.StdinOnce": "pid 1's stdin is closed when the attached client half-closes",
    "Config.AttachStdout": "which output streams the attach connection carries",
    "Config.AttachStderr": "which output streams the attach connection carries",
    "Config.Env": "/proc/PID/environ",
    "Config.Cmd": "/proc/PID/cmdline",
    "Config.Entrypoint": "/proc/PID/cmdline",
    "Config.Image": "the overlay's lower layers (/proc/PID/mountinfo of /)",
    "Config.WorkingDir": "/proc/PID/cwd (created when missing, as Docker does)",
    "Config.NetworkDisabled": "the container's own net namespace with only lo (/proc/PID/net/dev)",
    "Config.Labels": "the engine's record (docker ps --filter label=...)",
    "Config.StopSignal": "the signal docker stop sends to pid 1",
    "Config.StopTimeout": "seconds docker stop waits before SIGKILL",
    "HostConfig.Memory": "memory.limit_in_bytes (v1) / memory.max (v2)",
    "HostConfig.MemorySwap": "memory.memsw.limit_in_bytes (v1) / memory.swap.max (v2)",
    "HostConfig.CpuShares": "cpu.shares (v1) / cpu.weight (v2)",
    "HostConfig.NanoCpus": "cpu.cfs_quota_us / cpu.cfs_period_us (v1) / cpu.max (v2)",
    "HostConfig.CpuQuota": "cpu.cfs_quota_us (v1) / cpu.max (v2)",
    "HostConfig.CpuPeriod": "cpu.cfs_period_us (v1) / cpu.max (v2): only 100000 (labkit's period)",
    "HostConfig.CpusetCpus": "cpuset.cpus (v1) / cpuset.cpus (v2)",
    "HostConfig.PidsLimit": "pids.max",
    "HostConfig.Ulimits": "/proc/PID/limits (setrlimit before exec)",
    "HostConfig.Init": "pid 1 is tini (/proc/PID/cmdline), else the command itself",
    "HostConfig.CapAdd": "/proc/PID/status CapBnd/CapEff",
    "HostConfig.CapDrop": "/proc/PID/status CapBnd/CapEff",
    "HostConfig.GroupAdd": "/proc/PID/status Groups",
    "HostConfig.SecurityOpt": "no-new-privileges: /proc/PID/status NoNewPrivs",
    "HostConfig.ReadonlyRootfs": "/ mounted ro (/proc/PID/mountinfo)",
    "HostConfig.Tmpfs": "a tmpfs mount at each path (/proc/PID/mountinfo)",
    "HostConfig.ShmSize": "/dev/shm's size= (/proc/PID/mountinfo)",
    "HostConfig.ExtraHosts": "/etc/hosts bind-mounted with the extra lines (/proc/PID/mountinfo)",
    "HostConfig.Sysctls": "/proc/sys/... inside the container's own namespaces",
    "HostConfig.OomScoreAdj": "/proc/PID/oom_score_adj",
    "HostConfig.MaskedPaths": "an empty mount over each path (/proc/PID/mountinfo)",
    "HostConfig.ReadonlyPaths": "a read-only bind mount of each path (/proc/PID/mountinfo)",
    "HostConfig.CgroupnsMode": "private: /proc/PID/ns/cgroup differs from the host's; host: the same",
    "HostConfig.IpcMode": "private/shareable: the container's own ipc namespace (/proc/PID/ns/ipc)",
    "HostConfig.UsernsMode": "host: no user namespace (/proc/PID/ns/user is the host's)",
    "HostConfig.NetworkMode": "none: the container's own net namespace with only lo",
    "HostConfig.AutoRemove": "cgroup, mounts and record removed when the container exits",
    "HostConfig.LogConfig": "json-file: output kept per line; none: not kept (docker logs refuses)",
    "HostConfig.RestartPolicy": "the engine starts the container again when it exits (State.RestartCount)",
    "HostConfig.Runtime": "'labkit' only: labkit.container makes the container",
    "HostConfig.Isolation": "'default' only (Linux has no other)",
    "HostConfig.ContainerIDFile": "written by the docker CLI itself (the engine has nothing to do)",
}

# field -> (docker flag, why the engine refuses it); fields in neither table are refused too.
REFUSED = {
    "Config.ExposedPorts": ("--expose", "containers have no network beyond loopback"),
    "Config.Healthcheck": ("--health-cmd", "no health checks"),
    "Config.Volumes": ("-v", "no volumes"),
    "Config.MacAddress": ("--mac-address", "containers have no network interface beyond lo"),
    "Config.OnBuild": ("ONBUILD", "no image builds"),
    "Config.Shell": ("SHELL", "no image builds"),
    "Config.ArgsEscaped": ("(Windows only)", "not a Linux feature"),
    "HostConfig.Binds": ("-v", "no bind mounts: the rootfs is the only filesystem"),
    "HostConfig.Mounts": ("--mount", "no mounts: use --tmpfs for a scratch directory"),
    "HostConfig.VolumesFrom": ("--volumes-from", "no volumes"),
    "HostConfig.VolumeDriver": ("--volume-driver", "no volumes"),
    "HostConfig.PortBindings": ("-p", "containers have no network beyond loopback"),
    "HostConfig.PublishAllPorts": ("-P", "containers have no network beyond loopback"),
    "HostConfig.Links": ("--link", "no networks to link"),
    "HostConfig.Dns": ("--dns", "containers have no network beyond loopback"),
    "HostConfig.DnsOptions": ("--dns-option", "containers have no network beyond loopback"),
    "HostConfig.DnsSearch": ("--dns-search", "containers have no network beyond loopback"),
    "HostConfig.Privileged": ("--privileged", "no privileged containers"),
    "HostConfig.Devices": ("--device", "no devices beyond the minimal /dev"),
    "HostConfig.DeviceCgroupRules": ("--device-cgroup-rule", "no device cgroup rules"),
    "HostConfig.DeviceRequests": ("--gpus", "no devices beyond the minimal /dev"),
    "HostConfig.CgroupParent": ("--cgroup-parent", "containers' cgroups live under labkit's own subtree"),
    "HostConfig.Cgroup": ("--cgroup", "containers' cgroups live under labkit's own subtree"),
    "HostConfig.PidMode": ("--pid", "every container has its own pid namespace"),
    "HostConfig.UTSMode": ("--uts", "every container has its own uts namespace"),
    "HostConfig.StorageOpt": ("--storage-opt", "the writable layer is a fixed tmpfs"),
    "HostConfig.OomKillDisable": ("--oom-kill-disable", "the OOM killer stays on"),
    "HostConfig.MemoryReservation": ("--memory-reservation", "no soft memory limits"),
    "HostConfig.MemorySwappiness": ("--memory-swappiness", "no per-container swappiness"),
    "HostConfig.KernelMemory": ("--kernel-memory", "deprecated by the kernel"),
    "HostConfig.KernelMemoryTCP": ("--kernel-memory-tcp", "deprecated by the kernel"),
    "HostConfig.CpusetMems": ("--cpuset-mems", "one memory node here"),
    "HostConfig.CpuRealtimePeriod": ("--cpu-rt-period", "no real-time scheduling"),
    "HostConfig.CpuRealtimeRuntime": ("--cpu-rt-runtime", "no real-time scheduling"),
    "HostConfig.BlkioWeight": ("--blkio-weight", "no block I/O weights"),
    "HostConfig.BlkioWeightDevice": ("--blkio-weight-device", "no block I/O weights"),
    "HostConfig.BlkioDeviceReadBps": ("--device-read-bps", "containers have no block devices"),
    "HostConfig.BlkioDeviceWriteBps": ("--device-write-bps", "containers have no block devices"),
    "HostConfig.BlkioDeviceReadIOps": ("--device-read-iops", "containers have no block devices"),
    "HostConfig.BlkioDeviceWriteIOps": ("--device-write-iops", "containers have no block devices"),
    "HostConfig.CpuCount": ("--cpu-count", "Windows only"),
    "HostConfig.CpuPercent": ("--cpu-percent", "Windows only"),
    "HostConfig.IOMaximumIOps": ("--io-maxiops", "Windows only"),
    "HostConfig.IOMaximumBandwidth": ("--io-maxbandwidth", "Windows only"),
}

# Zero values that are not false-y: what the docker CLI sends when the flag was not given.
ZERO = {"HostConfig.MemorySwappiness": (-1,), "HostConfig.ConsoleSize": ([0, 0],)}
TOP_LEVEL = {"HostConfig", "NetworkingConfig"}

ULIMITS = {"core": resource.RLIMIT_CORE, "cpu": resource.RLIMIT_CPU, "data": resource.RLIMIT_DATA,
           "fsize": resource.RLIMIT_FSIZE, "locks": getattr(resource, "RLIMIT_LOCKS", 10),
           "memlock": resource.RLIMIT_MEMLOCK, "msgqueue": resource.RLIMIT_MSGQUEUE,
           "nice": resource.RLIMIT_NICE, "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
           "rss": resource.RLIMIT_RSS, "rtprio": resource.RLIMIT_RTPRIO, "rttime": resource.RLIMIT_RTTIME,
           "sigpending": resource.RLIMIT_SIGPENDING, "stack": resource.RLIMIT_STACK}


@dataclass
class ContainerSpec:
    """A validated create request: what runtime.launch turns into a labkit Container."""

    image: str
    argv: list[str]                       # entrypoint + cmd, resolved against the image
    cmd: list[str] | None = None          # as inspect shows them (Config.Cmd, Config.Entrypoint)
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=list)
    hostname: str = ""
    domainname: str = ""
    working_dir: str = ""
    user: tuple | None = None             # (uid, gid, [supplementary gids]) or None: root
    memory: int | None = None             # bytes
    memory_swap: int | None = None        # bytes of memory + swap; -1: unlimited swap
    cpu: float | None = None              # fraction of one CPU (NanoCpus / 1e9, or quota / period)
    cpu_shares: int | None = None
    cpuset: str | None = None
    pids: int | None = None
    ulimits: dict = field(default_factory=dict)       # RLIMIT_* -> (soft, hard)
    init: bool = False
    cap_add: list = field(default_factory=list)
    cap_drop: list = field(default_factory=list)
    no_new_privileges: bool = False
    read_only: bool = False
    tmpfs: dict = field(default_factory=dict)
    shm_size: int | None = None
    extra_hosts: dict = field(default_factory=dict)   # host -> ip
    sysctls: dict = field(default_factory=dict)
    oom_score_adj: int | None = None
    masked_paths: list = field(default_factory=list)
    readonly_paths: list = field(default_factory=list)
    cgroupns: bool = False
    restart_policy: tuple = ("no", 0)    # (name, MaximumRetryCount)
    tty: bool = False
    console_size: tuple[int, int] | None = None   # (rows, columns) of the pty
    open_stdin: bool = False
    stdin_once: bool = False
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None
    log_driver: str = "json-file"
    network_mode: str = "none"
    auto_remove: bool = False
    labels: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)        # the request's Config, echoed by inspect
    host_config: dict = field(default_factory=dict)


def parse_signal(value: str | None, default: int = signal.SIGKILL) -> int:
    """'SIGTERM', 'TERM', '15' -> 15."""
    if value in (None, ""):
        return default
    text = str(value).upper()
    if text.isdigit() and 0 < int(text) < signal.NSIG:
        return int(text)
    name = text if text.startswith("SIG") else "SIG" + text
    if hasattr(signal.Signals, name):
        return int(signal.Signals[name])
    raise InvalidValue("signal", value, "a signal name like SIGTERM or KILL, or a number from 1 to 64")


def check_name(name: str | None) -> str | None:
    """The ?name= of a create request: None (engine picks one) or a name Docker would accept."""
    if name in (None, ""):
        return None
    if not NAME_RE.match(name):
        raise InvalidValue("container name", name, "[a-zA-Z0-9][a-zA-Z0-9_.-]+ (at least 2 characters)")
    return name.lstrip("/")


def _string_list(value, what: str) -> list[str] | None:
    """Cmd / Entrypoint: a list of strings, a single string (shell form), or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return ["/bin/sh", "-c", value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidValue(what, value, "a list of strings, e.g. [\"echo\", \"hello\"]")


def _strings(value, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidValue(what, value, "a list of strings")
    return list(value)


def _int(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValue(what, value, f"an integer >= {minimum}")
    return value


def is_set(name: str, value) -> bool:
    """Does a field carry a real request (not the CLI's zero value: false, "", 0, {}, [], null)?"""
    if value in ZERO.get(name, ()):
        return False
    return bool(value)        # a non-empty object asks for its keys, e.g. ExposedPorts {"80/tcp": {}}


def _deep_set(value) -> bool:
    """Anything but zero values all the way down (newer clients send a zeroed endpoint per network)."""
    if isinstance(value, dict):
        return any(_deep_set(v) for v in value.values())
    if isinstance(value, list):
        return any(_deep_set(v) for v in value)
    return bool(value)


def refuse_unapplied(body: dict, host: dict) -> None:
    """The one rule's second half: a field set but not applied -> 400 naming it."""
    for section, fields in (("HostConfig", host), ("Config", body)):   # -p before --expose
        for key, value in fields.items():
            name = f"{section}.{key}"
            if (section == "Config" and key in TOP_LEVEL) or name in APPLIED or not is_set(name, value):
                continue
            flag, why = REFUSED.get(name, ("", "labkit's engine does not apply it"))
            raise InvalidValue(name, value, f"it unset - labkit's engine does not support "
                                            f"{flag + ': ' if flag else ''}{why}")
    networking = body.get("NetworkingConfig") or {}
    endpoints = networking.get("EndpointsConfig") if isinstance(networking, dict) else networking
    if endpoints and (not isinstance(endpoints, dict) or any(_deep_set(v) for v in endpoints.values())):
        raise InvalidValue("NetworkingConfig.EndpointsConfig", endpoints,
                           "it empty - labkit's engine attaches containers to no network")


def parse_user(text: str, group_add: list[str], image) -> tuple | None:
    """'uid[:gid]' or 'name[:group]' (looked up in the image's files) + --group-add -> ids."""
    if not text and not group_add:
        return None
    passwd = _table(image, "/etc/passwd")
    groups = _table(image, "/etc/group")
    name, _, group = (text or "0").partition(":")
    if name.isdigit():
        uid = int(name)
        gid = next((int(row[3]) for row in passwd if row[2] == name and row[3].isdigit()), uid if not group else 0)
    else:
        row = next((row for row in passwd if row[0] == name), None)
        if row is None:
            raise InvalidValue("Config.User (--user)", text, "a uid, or a user in the image's /etc/passwd "
                               f"({', '.join(r[0] for r in passwd) or 'none'})")
        uid, gid = int(row[2]), int(row[3])
    if group:
        gid = _gid(group, groups, "Config.User (--user)")
    extra = [_gid(g, groups, "HostConfig.GroupAdd (--group-add)") for g in group_add]
    for number in [uid, gid, *extra]:
        if number > 2**32 - 2:
            raise InvalidValue("Config.User (--user)", text, "ids below 4294967295")
    return uid, gid, extra


def _gid(group: str, groups: list, what: str) -> int:
    if group.isdigit():
        return int(group)
    row = next((row for row in groups if row[0] == group), None)
    if row is None:
        raise InvalidValue(what, group, "a gid, or a group in the image's /etc/group "
                                        f"({', '.join(r[0] for r in groups) or 'none'})")
    return int(row[2])


def _table(image, path: str) -> list[list[str]]:
    text = image.read_text(path) if image is not None and hasattr(image, "read_text") else ""
    return [line.split(":") for line in text.splitlines() if line.count(":") >= 2]


def _ulimits(value) -> dict:
    """[{"Name": "nofile", "Soft": 1024, "Hard": 2048}] -> {RLIMIT_NOFILE: (1024, 2048)}.

    The engine cannot raise a hard limit above its own when it lacks CAP_SYS_RESOURCE (as here):
    that is refused now rather than failing when the container starts."""
    what = "HostConfig.Ulimits (--ulimit)"
    if value is None:
        return {}
    if not isinstance(value, list):
        raise InvalidValue(what, value, "a list of {Name, Soft, Hard}")
    privileged = "SYS_RESOURCE" in capabilities.of_process("self")
    limits = {}
    for item in value:
        name = item.get("Name") if isinstance(item, dict) else None
        if name not in ULIMITS:
            raise InvalidValue(what, name, "one of " + ", ".join(ULIMITS))
        soft, hard = item.get("Soft"), item.get("Hard")
        for number in (soft, hard):
            _int(number, f"{what} {name}", minimum=-1)
        soft, hard = (resource.RLIM_INFINITY if n == -1 else n for n in (soft, hard))
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            raise InvalidValue(f"{what} {name}", f"{item['Soft']}:{item['Hard']}", "soft <= hard")
        kind = ULIMITS[name]
        _, own_hard = resource.getrlimit(kind)
        above = own_hard != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > own_hard)
        if above and not privileged:
            raise InvalidValue(f"{what} {name}", item.get("Hard"),
                               f"at most {own_hard}: the engine's own hard limit (raising it needs "
                               "CAP_SYS_RESOURCE, which the engine does not have here)")
        limits[kind] = (soft, hard)
    return limits


def _console_size(value, tty: bool) -> tuple[int, int] | None:   # [rows, columns], sent with -t; [0, 0]: unset
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and 0 < v < 65536 for v in value)
    if value not in (None, [0, 0]) and not (ok and tty):
        raise InvalidValue("HostConfig.ConsoleSize (--console-size)", value, "[rows, columns] (1-65535) with Tty (-t)")
    return (value[0], value[1]) if ok else None


def _security_opt(value) -> bool:
    """SecurityOpt: only no-new-privileges[:true|false] is applied (-> the NoNewPrivs flag)."""
    nnp = False
    for option in _strings(value, "HostConfig.SecurityOpt (--security-opt)"):
        key, _, setting = option.replace("=", ":", 1).partition(":")
        if key == "no-new-privileges" and setting in ("", "true", "false"):
            nnp = setting != "false"
        else:
            raise InvalidValue("HostConfig.SecurityOpt (--security-opt)", option,
                               "no-new-privileges[:true|false] - labkit's engine applies no seccomp, "
                               "AppArmor or SELinux profile")
    return nnp


def _extra_hosts(value) -> dict:
    import ipaddress

    hosts = {}
    for entry in _strings(value, "HostConfig.ExtraHosts (--add-host)"):
        host, _, ip = entry.partition(":")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidValue("HostConfig.ExtraHosts (--add-host)", entry, "host:ip, e.g. db:198.18.0.5") from None
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9.-]*$", host):
            raise InvalidValue("HostConfig.ExtraHosts (--add-host)", entry, "a host name of letters, digits, '.', '-'")
        hosts[host] = ip
    return hosts


RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")


def parse_restart_policy(value) -> tuple[str, int]:
    """{"Name": "on-failure", "MaximumRetryCount": 3} -> ("on-failure", 3)."""
    value = value or {}
    if not isinstance(value, dict):
        raise InvalidValue("HostConfig.RestartPolicy (--restart)", value, '{"Name": ..., "MaximumRetryCount": N}')
    name, retries = value.get("Name") or "", value.get("MaximumRetryCount") or 0
    if name not in RESTART_POLICIES:
        raise InvalidValue("HostConfig.RestartPolicy (--restart)", name,
                           "no, always, unless-stopped or on-failure[:N]")
    _int(retries, "HostConfig.RestartPolicy.MaximumRetryCount")
    if retries and name != "on-failure":
        raise InvalidValue("HostConfig.RestartPolicy.MaximumRetryCount", retries, "0 unless on-failure")
    return name, retries


def restarts_after(policy: tuple[str, int], exit_code: int, restart_count: int) -> bool:
    """Docker's rule: always and unless-stopped restart after any exit (not after a stop), on-failure
    after a non-zero exit while fewer than MaximumRetryCount restarts happened (0: no maximum)."""
    name, retries = policy
    if name == "on-failure":
        return exit_code != 0 and (retries == 0 or restart_count < retries)
    return name in ("always", "unless-stopped")


# docker update: field -> (labkit cgroup limit, spec attribute)
UPDATABLE = {"Memory": ("memory", "memory"), "MemorySwap": ("swap", "memory_swap"),
             "NanoCpus": ("cpu", "cpu"), "CpuQuota": ("cpu", "cpu"), "CpuShares": ("cpu_weight", "cpu_shares"),
             "PidsLimit": ("pids", "pids"), "CpusetCpus": ("cpuset", "cpuset"),
             "RestartPolicy": (None, "restart_policy")}


def parse_update(body, current: "ContainerSpec") -> tuple[dict, dict]:
    """A POST /containers/ID/update body -> (cgroup limits to set now, spec attributes to keep).
    Fields it does not apply are refused, naming them (the docker CLI sends zero values for the
    flags not given, which ask for nothing)."""
    if not isinstance(body, dict):
        raise InvalidValue("update body", body, "a JSON object")
    for key, value in body.items():
        if key not in UPDATABLE and is_set(f"HostConfig.{key}", value):
            raise InvalidValue(f"HostConfig.{key}", value, "it unset - docker update in labkit's engine "
                               "changes " + ", ".join(UPDATABLE))
    limits, attributes = {}, {}
    if body.get("Memory"):
        memory = _int(body["Memory"], "HostConfig.Memory (--memory)")
        if memory < 6 * 1024 * 1024:
            raise InvalidValue("HostConfig.Memory (--memory)", memory, "at least 6 MiB")
        limits["memory"], attributes["memory"] = memory, memory
    if body.get("MemorySwap"):
        total = _int(body["MemorySwap"], "HostConfig.MemorySwap (--memory-swap)", minimum=-1)
        memory = limits.get("memory") or current.memory
        if total != -1 and (memory is None or total < memory):
            raise InvalidValue("HostConfig.MemorySwap (--memory-swap)", total, "at least the memory limit")
        limits["swap"] = "max" if total == -1 else total - memory
        attributes["memory_swap"] = total
    if body.get("NanoCpus") or body.get("CpuQuota"):
        cpu = body["NanoCpus"] / 1e9 if body.get("NanoCpus") else body["CpuQuota"] / 100_000
        limits["cpu"], attributes["cpu"] = cpu, cpu
    if body.get("CpuShares"):
        from ..cgroups.limits import shares_to_weight
        shares = _int(body["CpuShares"], "HostConfig.CpuShares (--cpu-shares)", minimum=2)
        limits["cpu_weight"], attributes["cpu_shares"] = shares_to_weight(shares), shares
    if body.get("PidsLimit") not in (None, 0):
        pids = body["PidsLimit"]
        limits["pids"] = "max" if pids == -1 else _int(pids, "HostConfig.PidsLimit (--pids-limit)", minimum=1)
        attributes["pids"] = None if pids == -1 else pids
    if body.get("CpusetCpus"):
        limits["cpuset"] = attributes["cpuset"] = body["CpusetCpus"]
    if is_set("", body.get("RestartPolicy")):
        attributes["restart_policy"] = parse_restart_policy(body["RestartPolicy"])
    return limits, attributes


def _choice(host: dict, key: str, allowed: tuple, flag: str, why: str) -> str:
    value = host.get(key) or ""
    if value not in allowed:
        raise InvalidValue(f"HostConfig.{key} ({flag})", value,
                           " or ".join(repr(a) for a in allowed if a) + f": {why}")
    return value


def parse_create(body, image_config) -> ContainerSpec:
    """Check a create body and resolve it against the image (`image_config(name)` -> Image).

    Raises InvalidValue (-> 400) for malformed or unsupported requests, NotFound (-> 404) for an
    unknown image. Nothing is created before this returns.
    """
    if not isinstance(body, dict):
        raise InvalidValue("request body", type(body).__name__, "a JSON object (the container config)")
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise InvalidValue("HostConfig", host, "a JSON object")
    refuse_unapplied(body, host)

    image_name = body.get("Image")
    if not isinstance(image_name, str) or not image_name:
        raise InvalidValue("Image", image_name, "an image name, e.g. labkit-busybox")
    image = image_config(image_name)                       # NotFound -> 404 "No such image"

    entrypoint = _string_list(body.get("Entrypoint"), "Entrypoint")
    cmd = _string_list(body.get("Cmd"), "Cmd")
    if entrypoint is None:
        entrypoint = image.entrypoint or []
        cmd = cmd if cmd is not None else image.cmd
    argv = entrypoint + (cmd or [])
    if not argv:
        raise InvalidValue("Cmd", body.get("Cmd"), "a command: the image has no default one")

    env = body.get("Env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) and e and e[0] != "=" for e in env):
        raise InvalidValue("Env", env, "a list of NAME=value strings, or NAME alone to remove the image's NAME")
    merged = {e.split("=", 1)[0]: e for e in [*image.env, *env]}   # as dockerd: NAME=value replaces or adds;
    env = [e for e in merged.values() if "=" in e]                  # a bare NAME (-e NAME) removes the image's

    hostname = body.get("Hostname") or ""
    if not isinstance(hostname, str) or len(hostname) > 64 or not re.match(r"^[A-Za-z0-9.-]*$", hostname):
        raise InvalidValue("Hostname", hostname, "at most 64 letters, digits, '.' or '-'")
    domainname = body.get("Domainname") or ""
    if not isinstance(domainname, str) or len(domainname) > 64 or not re.match(r"^[A-Za-z0-9.-]*$", domainname):
        raise InvalidValue("Domainname", domainname, "at most 64 letters, digits, '.' or '-'")
    working_dir = body.get("WorkingDir") or image.working_dir or ""
    if not isinstance(working_dir, str) or (working_dir and not working_dir.startswith("/")):
        raise InvalidValue("WorkingDir", working_dir, "an absolute path inside the container")
    user = parse_user(body.get("User") or "", _strings(host.get("GroupAdd"), "HostConfig.GroupAdd"), image)

    memory = _int(host.get("Memory") or 0, "HostConfig.Memory (--memory)") or None
    if memory is not None and memory < 6 * 1024 * 1024:
        raise InvalidValue("HostConfig.Memory (--memory)", memory, "at least 6 MiB (6291456 bytes), as Docker")
    memory_swap = _int(host.get("MemorySwap") or 0, "HostConfig.MemorySwap (--memory-swap)", minimum=-1) or None
    if memory_swap is not None and memory is None:
        raise InvalidValue("HostConfig.MemorySwap (--memory-swap)", memory_swap,
                           "a memory limit too (--memory): it is memory + swap")
    if memory_swap not in (None, -1) and memory_swap < memory:
        raise InvalidValue("HostConfig.MemorySwap (--memory-swap)", memory_swap,
                           f"at least --memory ({memory}): it is memory + swap")
    nano = _int(host.get("NanoCpus") or 0, "HostConfig.NanoCpus (--cpus)")
    quota = _int(host.get("CpuQuota") or 0, "HostConfig.CpuQuota (--cpu-quota)")
    period = _int(host.get("CpuPeriod") or 0, "HostConfig.CpuPeriod (--cpu-period)")
    if nano and quota:
        raise InvalidValue("HostConfig.NanoCpus and CpuQuota", (nano, quota), "one of --cpus or --cpu-quota, not both")
    if quota and not 1000 <= quota:
        raise InvalidValue("HostConfig.CpuQuota (--cpu-quota)", quota, "at least 1000 microseconds")
    if period and period != 100_000:
        raise InvalidValue("HostConfig.CpuPeriod (--cpu-period)", period,
                           "100000 (labkit writes every CPU limit with a 100 ms period; use --cpus)")
    cpu = nano / 1e9 if nano else (quota / 100_000 if quota else None)
    shares = host.get("CpuShares") or None
    if shares is not None:
        _int(shares, "HostConfig.CpuShares (--cpu-shares)", minimum=2)
    cpuset = host.get("CpusetCpus") or None
    if cpuset is not None and (not isinstance(cpuset, str) or not re.match(r"^[0-9,-]+$", cpuset)):
        raise InvalidValue("HostConfig.CpusetCpus (--cpuset-cpus)", cpuset, "CPUs like 0, 0-1 or 0,1")
    pids_limit = host.get("PidsLimit")
    pids = None
    if pids_limit not in (None, 0, -1):
        pids = _int(pids_limit, "HostConfig.PidsLimit (--pids-limit)", minimum=1)

    network = host.get("NetworkMode") or ""
    if network not in ISOLATED_NETWORKS:
        raise InvalidValue("HostConfig.NetworkMode (--network)", network,
                           "'none': labkit's engine gives every container its own network namespace "
                           "with only loopback")
    restart_policy = parse_restart_policy(host.get("RestartPolicy"))
    if restart_policy[0] not in ("", "no") and host.get("AutoRemove"):
        raise InvalidValue("HostConfig.RestartPolicy (--restart)", restart_policy[0],
                           "'no' with --rm (AutoRemove): a removed container cannot be restarted")
    log_config = host.get("LogConfig") or {}
    log_driver = log_config.get("Type") or "json-file"
    if log_driver not in ("json-file", "none") or is_set("", log_config.get("Config") or {}):
        raise InvalidValue("HostConfig.LogConfig (--log-driver, --log-opt)", log_config,
                           "json-file or none, without options")
    _choice(host, "Runtime", ("", "labkit"), "--runtime", "labkit.container makes every container")
    _choice(host, "Isolation", ("", "default"), "--isolation", "Linux has only the default")
    _choice(host, "UsernsMode", ("", "host"), "--userns", "containers have no user namespace")
    _choice(host, "IpcMode", ("", "private", "shareable"), "--ipc", "every container has its own ipc namespace")
    cgroupns = _choice(host, "CgroupnsMode", ("", "private", "host"), "--cgroupns", "") == "private"

    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidValue("Labels", labels, "a JSON object of strings")
    stop_signal = body.get("StopSignal") or "SIGTERM"
    parse_signal(stop_signal)                               # refuse a bad name now, not at stop
    stop_timeout = body.get("StopTimeout")
    if stop_timeout is not None:
        _int(stop_timeout, "StopTimeout (--stop-timeout)", minimum=-1)
    tmpfs = host.get("Tmpfs") or {}
    if not isinstance(tmpfs, dict) or not all(isinstance(v, str) for v in tmpfs.values()):
        raise InvalidValue("HostConfig.Tmpfs (--tmpfs)", tmpfs, "an object {path: options}")
    sysctls = host.get("Sysctls") or {}
    if not isinstance(sysctls, dict):
        raise InvalidValue("HostConfig.Sysctls (--sysctl)", sysctls, "an object {name: value}")
    shm_size = _int(host.get("ShmSize") or 0, "HostConfig.ShmSize (--shm-size)") or None
    oom = host.get("OomScoreAdj") or None
    if oom is not None:
        if isinstance(oom, bool) or not isinstance(oom, int) or not -1000 <= oom <= 1000:
            raise InvalidValue("HostConfig.OomScoreAdj (--oom-score-adj)", oom, "-1000 to 1000")
        if oom < 0 and "SYS_RESOURCE" not in capabilities.of_process("self"):
            raise InvalidValue("HostConfig.OomScoreAdj (--oom-score-adj)", oom,
                               "0 to 1000: lowering it needs CAP_SYS_RESOURCE, which the engine lacks here")
    init = host.get("Init")
    if init is not None and not isinstance(init, bool):
        raise InvalidValue("HostConfig.Init (--init)", init, "true or false")
    cap_add = _strings(host.get("CapAdd"), "HostConfig.CapAdd (--cap-add)")
    cap_drop = _strings(host.get("CapDrop"), "HostConfig.CapDrop (--cap-drop)")
    for name in cap_add + cap_drop:
        capabilities.canonical(name)

    return ContainerSpec(
        image=image_name, argv=argv, cmd=cmd, entrypoint=entrypoint or None, env=env, hostname=hostname,
        domainname=domainname, working_dir=working_dir, user=user,
        memory=memory, memory_swap=memory_swap, cpu=cpu, cpu_shares=shares, cpuset=cpuset, pids=pids,
        ulimits=_ulimits(host.get("Ulimits")), init=bool(init), cap_add=cap_add, cap_drop=cap_drop,
        no_new_privileges=_security_opt(host.get("SecurityOpt")),
        read_only=bool(host.get("ReadonlyRootfs")), tmpfs=dict(tmpfs), shm_size=shm_size,
        extra_hosts=_extra_hosts(host.get("ExtraHosts")), sysctls=dict(sysctls), oom_score_adj=oom,
        masked_paths=_strings(host.get("MaskedPaths"), "HostConfig.MaskedPaths"),
        readonly_paths=_strings(host.get("ReadonlyPaths"), "HostConfig.ReadonlyPaths"),
        cgroupns=cgroupns, restart_policy=restart_policy, tty=bool(body.get("Tty")),
        console_size=_console_size(host.get("ConsoleSize"), bool(body.get("Tty"))), open_stdin=bool(body.get("OpenStdin")),
        stdin_once=bool(body.get("StdinOnce")), stop_signal=stop_signal, stop_timeout=stop_timeout, log_driver=log_driver,
        network_mode=network or "none", auto_remove=bool(host.get("AutoRemove")), labels=labels,
        config=body, host_config=host)
