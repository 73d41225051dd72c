"""A Container's options checked and turned into what the kernel takes: the environment, the
command's argv, cpu shares as a weight, --memory-swap as swap alone, tmpfs mount flags, sysctls.

Each refuses a bad value naming the option (InvalidValue), before anything is created.
"""
from __future__ import annotations

from collections.abc import Mapping

from . import syscalls
from .errors import InvalidValue

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def environment_variables(environment, hostname: str, defaults: bool = True) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root"} if defaults else {}
    if environment is None:
        return env
    items = environment.items() if isinstance(environment, Mapping) else \
        (str(e).split("=", 1) if "=" in str(e) else (str(e), "") for e in environment)
    for key, value in items:
        if not key or "=" in key or "\0" in key + str(value):
            raise InvalidValue("environment variable", key, "NAME=value with a NAME without '=' or NUL")
        env[key] = str(value)
    return env


def cpu_shares_to_weight(shares: int | None) -> int | None:
    """`docker run --cpu-shares` (v1's cpu.shares, 2..262144, default 1024) as labkit's cpu_weight
    (v2's cpu.weight, default 100); the v1 backend writes it back as shares (1024 <-> 100)."""
    if shares is None:
        return None
    if isinstance(shares, bool) or not isinstance(shares, int) or not 2 <= shares <= 262144:
        raise InvalidValue("cpu_shares", shares, "an integer from 2 to 262144 (1024 is the default weight)")
    from .cgroups.limits import shares_to_weight
    return shares_to_weight(shares)


def swap_limit(memswap_limit, memory):
    """docker's --memory-swap is memory + swap (-1: unlimited swap); labkit's limit is swap alone."""
    if memswap_limit is None:
        return None
    from .cgroups.limits import parse
    if memswap_limit in (-1, "-1", "max"):
        return "max"
    if memory is None:
        raise InvalidValue("memswap_limit", memswap_limit, "a memory limit too (it is memory + swap)")
    total = parse({"memory": memswap_limit}).memory
    mem = parse({"memory": memory}).memory
    if total < mem:
        raise InvalidValue("memswap_limit", memswap_limit, f"at least the memory limit ({mem} bytes): "
                                                            "it counts memory + swap")
    return total - mem


TMPFS_FLAGS = {"ro": syscalls.MS_RDONLY, "nosuid": syscalls.MS_NOSUID, "nodev": syscalls.MS_NODEV,
                "noexec": syscalls.MS_NOEXEC, "sync": 16, "noatime": 1024}   # MS_SYNCHRONOUS, MS_NOATIME
TMPFS_CLEARS = {"rw": "ro", "suid": "nosuid", "dev": "nodev", "exec": "noexec"}
TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks")


def tmpfs_mounts(tmpfs: Mapping[str, str]) -> dict[str, tuple[int, str]]:
    """{"/run": "size=64k,noexec"} -> {"/run": (mount flags, "size=64k")}; Docker's defaults
    (nosuid, nodev, noexec) unless the options say otherwise."""
    mounts = {}
    for path, options in tmpfs.items():
        if not isinstance(path, str) or not path.startswith("/") or path == "/" or ".." in path.split("/"):
            raise InvalidValue("tmpfs path", path, "an absolute path inside the container other than /")
        wanted = {"nosuid", "nodev", "noexec"}
        data = []
        for option in filter(None, (options or "").split(",")):
            key = option.split("=", 1)[0]
            if option in TMPFS_FLAGS:
                wanted.add(option)
            elif option in TMPFS_CLEARS:
                wanted.discard(TMPFS_CLEARS[option])
            elif key in TMPFS_DATA and "=" in option:
                data.append(option)
            else:
                raise InvalidValue(f"tmpfs option for {path}", option,
                                   "rw, ro, [no]suid, [no]dev, [no]exec, sync, noatime, "
                                   + ", ".join(f"{k}=..." for k in TMPFS_DATA))
        flags = 0
        for name in wanted:
            flags |= TMPFS_FLAGS[name]
        mounts[path.rstrip("/")] = (flags, ",".join(data))
    return mounts


# Sysctls that belong to a namespace the container has of its own (as Docker accepts them).
NAMESPACED_SYSCTLS = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")


def namespaced_sysctls(sysctls: Mapping[str, str]) -> dict[str, str]:
    for key, value in sysctls.items():
        if not isinstance(key, str) or not key.startswith(NAMESPACED_SYSCTLS) or "/" in key or ".." in key:
            raise InvalidValue("sysctl", key, "a namespaced sysctl (" + ", ".join(
                p + "*" for p in NAMESPACED_SYSCTLS) + "): the others would change the host")
        if not isinstance(value, str) or "\n" in value:
            raise InvalidValue(f"sysctl {key}", value, "a string value without newlines")
    return dict(sysctls)


def command_argv(command) -> list[str]:
    if command is None:
        return ["/bin/sh"]
    if isinstance(command, str):
        import shlex
        argv = shlex.split(command)
    else:
        argv = [str(a) for a in command]
    if not argv:
        raise InvalidValue("command", command, "a non-empty command, e.g. ['sh', '-c', 'echo hi']")
    return argv
