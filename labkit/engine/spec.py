"""What a client asked for: the body of POST /containers/create, checked once and turned into a spec.

The docker CLI sends every field of its config, mostly zero values (``"Privileged": false``,
``"PortBindings": {}``). labkit's engine honours the fields that map onto chapters 1-4 - command,
environment, hostname, working directory, memory / CPU / pids limits, an isolated network
namespace - and refuses, with a 400 and a message naming the field, anything it would otherwise
silently ignore (a terminal, stdin, volumes, published ports, another network mode).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import InvalidValue

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")       # Docker's rule for container names
ISOLATED_NETWORKS = ("", "default", "none")                  # all mean: a new net ns with only lo

# Fields the engine cannot honour: (section, field, what the docker CLI flag is, why not).
UNSUPPORTED = [
    ("Config", "Tty", "-t", "no terminals: output is always the multiplexed stdout/stderr stream"),
    ("Config", "OpenStdin", "-i", "no stdin: containers read nothing"),
    ("Config", "AttachStdin", "-i", "no stdin: containers read nothing"),
    ("Config", "User", "--user", "containers run as root inside their namespaces"),
    ("Config", "ExposedPorts", "--expose", "containers have no network beyond loopback"),
    ("Config", "Healthcheck", "--health-cmd", "no health checks"),
    ("Config", "Volumes", "-v", "no volumes"),
    ("HostConfig", "Binds", "-v", "no bind mounts: the rootfs is the only filesystem"),
    ("HostConfig", "Mounts", "--mount", "no mounts: the rootfs is the only filesystem"),
    ("HostConfig", "PortBindings", "-p", "containers have no network beyond loopback"),
    ("HostConfig", "PublishAllPorts", "-P", "containers have no network beyond loopback"),
    ("HostConfig", "Privileged", "--privileged", "no privileged containers"),
    ("HostConfig", "VolumesFrom", "--volumes-from", "no volumes"),
    ("HostConfig", "Links", "--link", "no networks to link"),
    ("HostConfig", "Devices", "--device", "no devices beyond the minimal /dev"),
    ("HostConfig", "CpusetCpus", "--cpuset-cpus", "use --cpus instead"),
]
RESTART_OK = ("", "no")


@dataclass
class ContainerSpec:
    """A validated create request."""

    image: str
    argv: list[str]                       # entrypoint + cmd, resolved against the image
    cmd: list[str] | None = None          # as inspect shows them (Config.Cmd, Config.Entrypoint)
    entrypoint: list[str] | None = None
    env: list[str] = field(default_factory=list)
    hostname: str = ""
    working_dir: str = ""
    memory: int | None = None             # bytes
    cpu: float | None = None              # fraction of one CPU (NanoCpus / 1e9, or quota / period)
    pids: int | None = None
    network_mode: str = "none"
    auto_remove: bool = False
    labels: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)        # the request's Config, echoed by inspect
    host_config: dict = field(default_factory=dict)


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


def _int(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValue(what, value, f"an integer >= {minimum}")
    return value


def _is_set(value) -> bool:
    """Does a field carry a real request (not the CLI's zero value: false, "", {}, [], null)?"""
    if isinstance(value, dict):
        return any(_is_set(v) for v in value.values()) if value else False
    return bool(value)


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
    sections = {"Config": body, "HostConfig": host}
    for section, key, flag, why in UNSUPPORTED:
        if _is_set(sections[section].get(key)):
            raise InvalidValue(f"{section}.{key}", sections[section][key],
                               f"it unset - labkit's engine does not support {flag}: {why}")
    restart = (host.get("RestartPolicy") or {}).get("Name", "")
    if restart not in RESTART_OK:
        raise InvalidValue("HostConfig.RestartPolicy (--restart)", restart, "'no': labkit's engine never restarts")

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
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise InvalidValue("Env", env, "a list of NAME=value strings")
    names = {e.split("=", 1)[0] for e in env}
    env = [e for e in image.env if e.split("=", 1)[0] not in names] + env

    hostname = body.get("Hostname") or ""
    if not isinstance(hostname, str) or len(hostname) > 64 or not re.match(r"^[A-Za-z0-9.-]*$", hostname):
        raise InvalidValue("Hostname", hostname, "at most 64 letters, digits, '.' or '-'")
    working_dir = body.get("WorkingDir") or image.working_dir or ""
    if not isinstance(working_dir, str) or (working_dir and not working_dir.startswith("/")):
        raise InvalidValue("WorkingDir", working_dir, "an absolute path inside the container")

    memory = _int(host.get("Memory") or 0, "HostConfig.Memory (--memory)") or None
    if memory is not None and memory < 6 * 1024 * 1024:
        raise InvalidValue("HostConfig.Memory (--memory)", memory, "at least 6 MiB (6291456 bytes), as Docker")
    nano = _int(host.get("NanoCpus") or 0, "HostConfig.NanoCpus (--cpus)")
    quota = _int(host.get("CpuQuota") or 0, "HostConfig.CpuQuota (--cpu-quota)")
    period = _int(host.get("CpuPeriod") or 0, "HostConfig.CpuPeriod (--cpu-period)")
    if nano and quota:
        raise InvalidValue("HostConfig.NanoCpus and CpuQuota", (nano, quota), "one of --cpus or --cpu-quota, not both")
    if quota and not 1000 <= quota:
        raise InvalidValue("HostConfig.CpuQuota (--cpu-quota)", quota, "at least 1000 microseconds")
    if period and not 1000 <= period <= 1_000_000:
        raise InvalidValue("HostConfig.CpuPeriod (--cpu-period)", period, "1000 to 1000000 microseconds")
    cpu = nano / 1e9 if nano else (quota / (period or 100_000) if quota else None)
    pids_limit = host.get("PidsLimit")
    pids = None
    if pids_limit not in (None, 0, -1):
        pids = _int(pids_limit, "HostConfig.PidsLimit (--pids-limit)", minimum=1)

    network = host.get("NetworkMode") or ""
    if network not in ISOLATED_NETWORKS:
        raise InvalidValue("HostConfig.NetworkMode (--network)", network,
                           "'none': labkit's engine gives every container its own network namespace "
                           "with only loopback")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict):
        raise InvalidValue("Labels", labels, "a JSON object of strings")

    return ContainerSpec(
        image=image_name, argv=argv, cmd=cmd, entrypoint=entrypoint or None, env=env, hostname=hostname, working_dir=working_dir,
        memory=memory, cpu=cpu, pids=pids, network_mode=network or "none",
        auto_remove=bool(host.get("AutoRemove")), labels=labels,
        config=body, host_config=host)
