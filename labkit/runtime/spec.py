"""config.json as the runtime reads it: every field checked, and what labkit cannot apply refused by name.

This is the wider reader behind `labkit-runtime create`: it accepts what containerd writes for a real
`docker run` (mounts of any type, hooks, seccomp, sysctl, device cgroup rules, cgroupsPath), where
labkit.oci's reader (behind `labkit run --bundle`) takes only what a container from scratch needs.
Both walk the document with the same `Reader`, so an unknown or unsupported field is refused the same
way: `UnsupportedField` naming its dotted path, before anything is created.
"""
from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

from ..errors import InvalidValue, NotFound
from ..oci import NAMESPACES, Reader, UnsupportedField, read_config, read_process_identity

HOOK_KINDS = ("prestart", "createRuntime", "poststart", "poststop")   # run by the runtime itself
# Sysctls that belong to a namespace the container has (the kernel refuses the others, and they would
# change the whole host): net.* with a network namespace, IPC ones with an ipc namespace.
NAMESPACED_SYSCTLS = {"net.": "net", "kernel.shm": "ipc", "kernel.msg": "ipc", "kernel.sem": "ipc",
                      "fs.mqueue.": "ipc"}
DEFAULT_CPU_PERIOD = 100_000


# Plain classes, not dataclasses: `create` runs on every `docker run`, and importing dataclasses
# would cost each one 5 ms.
Mount = namedtuple("Mount", "destination type source options")


class Process(SimpleNamespace):
    """config.json's process object (or `exec --process FILE`)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str, *, terminal: bool = False,
                 console_size: tuple[int, int] | None = None, uid: int = 0, gid: int = 0,
                 groups: list[int] = (), umask: int | None = None, capabilities: list[str] | None = None,
                 inheritable: list[str] = (), ambient: list[str] = (), rlimits: dict | None = None,
                 no_new_privileges: bool = False, oom_score_adj: int | None = None,
                 apparmor: str | None = None):
        super().__init__(args=args, env=env, cwd=cwd, terminal=terminal,
                         console_size=console_size,         # (rows, columns)
                         uid=uid, gid=gid, groups=list(groups), umask=umask,
                         capabilities=capabilities,         # the bounding set; None: keep Docker's default
                         inheritable=list(inheritable), ambient=list(ambient), rlimits=rlimits or {},
                         no_new_privileges=no_new_privileges, oom_score_adj=oom_score_adj,
                         apparmor=apparmor)


class Spec(SimpleNamespace):
    """config.json, checked: everything `create` applies."""

    def __init__(self, bundle: Path, process: Process, root: Path, readonly: bool, hostname: str | None,
                 namespaces: list[str], *, cgroups_path: str | None = None, masked_paths: list[str] = (),
                 readonly_paths: list[str] = (), seccomp: dict | None = None, annotations: dict | None = None):
        super().__init__(bundle=bundle, process=process, root=root, readonly=readonly, hostname=hostname,
                         namespaces=namespaces,             # labkit's names: pid, net, mnt ...
                         cgroups_path=cgroups_path, masked_paths=list(masked_paths),
                         readonly_paths=list(readonly_paths), seccomp=seccomp,
                         annotations=annotations or {},
                         # filled in from linux.resources, mounts, hooks and linux.sysctl:
                         mounts=[],                         # Mount
                         hooks={},                          # kind -> [{"path", "args", "env", "timeout"}]
                         limits={},                         # labkit.cgroups.limits names: memory, swap, cpu ...
                         devices=[],                        # v1 device cgroup rules: "allow c 1:3 rwm"
                         oom_kill_disable=False, sysctl={})


def load(bundle: str | os.PathLike, systemd: bool = False) -> Spec:
    """systemd: the runtime was called with --systemd-cgroup (cgroupsPath names a scope unit)."""
    return parse(*read_config(bundle), systemd=systemd)


def parse_process(proc, r: Reader, where: str = "process") -> Process:
    if not proc:
        r.bad(where, proc, "an object with args")
    r.only(proc, where, {"terminal", "consoleSize", "user", "args", "env", "cwd", "capabilities",
                         "rlimits", "noNewPrivileges", "oomScoreAdj", "apparmorProfile"})
    args = proc.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        r.bad(f"{where}.args", args, "a non-empty list of strings")
    env = {}
    for item in proc.get("env") or []:
        if not isinstance(item, str) or "=" not in item:
            r.bad(f"{where}.env", item, "strings of the form NAME=value")
        key, value = item.split("=", 1)
        env[key] = value
    cwd = proc.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        r.bad(f"{where}.cwd", cwd, "an absolute path")
    size = r.only(proc.get("consoleSize"), f"{where}.consoleSize", {"height", "width"})
    user, uid, gid, rlimits, oom = read_process_identity(r, proc, where)
    capabilities, inheritable, ambient = None, [], []
    if proc.get("capabilities"):
        capabilities, inheritable, ambient = _capabilities(proc["capabilities"], r, f"{where}.capabilities")
        if ambient and uid != 0:
            r.refuse(f"{where}.capabilities.ambient", "labkit raises ambient capabilities for root only")
    return Process(args=args, env=env, cwd=cwd, terminal=bool(proc.get("terminal")),
                   console_size=(size["height"], size["width"]) if size else None, uid=uid, gid=gid,
                   groups=[g for g in user.get("additionalGids") or [] if g != gid],
                   umask=user.get("umask"), capabilities=capabilities, inheritable=inheritable,
                   ambient=ambient, rlimits=rlimits,
                   no_new_privileges=bool(proc.get("noNewPrivileges")), oom_score_adj=oom,
                   apparmor=proc.get("apparmorProfile") or None)


def _capabilities(caps: dict, r: Reader, where: str) -> tuple[list[str], list[str], list[str]]:
    """(bounding, inheritable, ambient). The bounding set is what labkit.capabilities applies; for
    root the effective and permitted sets then follow from it at exec, as runc sets them, so those
    may only repeat it. Inheritable and ambient are set as given (labkit.runtime.setup)."""
    from .. import capabilities

    r.only(caps, where, {"bounding", "effective", "permitted", "inheritable", "ambient"})
    try:
        sets = {k: {capabilities.canonical(c) for c in caps.get(k) or []} for k in caps}
    except InvalidValue as exc:
        r.bad(where, exc.value, exc.accepted)
    bounding = sets.get("bounding", set())
    for kind in ("effective", "permitted", "inheritable", "ambient"):
        if kind in ("effective", "permitted") and sets.get(kind) and sets[kind] != bounding:
            r.refuse(f"{where}.{kind}", "labkit applies the bounding set; effective and permitted "
                                        "follow from it, so they must list the same capabilities")
        if not sets.get(kind, set()) <= bounding:
            r.bad(f"{where}.{kind}", sorted(sets[kind] - bounding), "capabilities of the bounding set")
    if not sets.get("ambient", set()) <= sets.get("inheritable", set()):
        r.refuse(f"{where}.ambient", "the kernel raises an ambient capability only if it is also "
                                     "inheritable (runc drops such ones silently; labkit says so)")
    return sorted(bounding), sorted(sets.get("inheritable", ())), sorted(sets.get("ambient", ()))


def parse(document: dict, path: Path, config: Path | None = None, systemd: bool = False) -> Spec:
    config = config or path / "config.json"
    r = Reader(config)
    top = r.only(document, "", {"ociVersion", "process", "root", "hostname", "mounts", "hooks",
                                "linux", "annotations"})
    version = str(top.get("ociVersion", ""))
    if not version.startswith("1."):
        r.bad("ociVersion", version, "a 1.x version of the runtime spec")
    process = parse_process(top.get("process"), r)

    root_obj = r.only(top.get("root"), "root", {"path", "readonly"})
    if not root_obj.get("path"):
        r.bad("root.path", root_obj.get("path"), "the root filesystem directory")
    root = (path / root_obj["path"]).resolve()
    if not root.is_dir():
        raise NotFound(f"{config}: root.path {str(root)!r} is not a directory")

    linux = r.only(top.get("linux"), "linux", {"namespaces", "resources", "cgroupsPath", "sysctl",
                                              "seccomp", "maskedPaths", "readonlyPaths"})
    kinds = []
    for i, ns in enumerate(linux.get("namespaces") or []):
        r.only(ns, f"linux.namespaces[{i}]", {"type"})
        if ns.get("type") not in NAMESPACES:
            r.refuse(f"linux.namespaces[{i}].type={ns.get('type')!r}",
                     "labkit creates " + ", ".join(NAMESPACES) + " namespaces")
        kinds.append(NAMESPACES[ns["type"]])
    if "mnt" not in kinds:
        r.bad("linux.namespaces", kinds, "a list that includes {'type': 'mount'}")
    if ":" in str(linux.get("cgroupsPath") or "") and not systemd:
        r.refuse("linux.cgroupsPath", f"{linux['cgroupsPath']!r} names a systemd unit (slice:prefix:name, "
                                      "Docker's systemd cgroup driver) but the runtime was called without "
                                      "--systemd-cgroup")
    if systemd and "/" in str(linux.get("cgroupsPath") or ""):
        r.bad("linux.cgroupsPath", linux["cgroupsPath"], "slice:prefix:name with --systemd-cgroup, not a "
                                                          "cgroupfs path")
    hostname = top.get("hostname") or None
    if hostname and "uts" not in kinds:
        r.bad("hostname", hostname, "a uts namespace in linux.namespaces too")

    spec = Spec(bundle=path, process=process, root=root, readonly=bool(root_obj.get("readonly")),
                hostname=hostname, namespaces=kinds, cgroups_path=linux.get("cgroupsPath") or None,
                masked_paths=list(linux.get("maskedPaths") or []),
                readonly_paths=list(linux.get("readonlyPaths") or []),
                seccomp=linux.get("seccomp") or None, annotations=dict(top.get("annotations") or {}))
    parse_resources(linux.get("resources"), r, spec)
    for key, value in (linux.get("sysctl") or {}).items():
        owner = next((ns for prefix, ns in NAMESPACED_SYSCTLS.items() if key.startswith(prefix)), None)
        if owner is None or owner not in kinds:
            r.refuse(f"linux.sysctl[{key!r}]", "only sysctls of a namespace the container has "
                                               "(net.* with a network namespace, kernel.shm*/msg*/sem "
                                               "and fs.mqueue.* with an ipc namespace)")
        spec.sysctl[key] = str(value)
    if spec.seccomp:
        r.only(spec.seccomp, "linux.seccomp", {"defaultAction", "defaultErrnoRet", "architectures",
                                               "syscalls"})
    for i, m in enumerate(top.get("mounts") or []):
        r.only(m, f"mounts[{i}]", {"destination", "type", "source", "options"})
        dest = m.get("destination")
        if not isinstance(dest, str) or not dest.startswith("/") or ".." in dest.split("/"):
            r.bad(f"mounts[{i}].destination", dest, "an absolute path inside the container without '..'")
        options = list(m.get("options") or [])
        kind = m.get("type") or ("bind" if {"bind", "rbind"} & set(options) else "")
        if not kind:
            r.bad(f"mounts[{i}].type", kind, "a filesystem type (or 'bind')")
        spec.mounts.append(Mount(dest, kind, m.get("source") or kind, options))
    hooks = r.only(top.get("hooks"), "hooks", set(HOOK_KINDS))
    for kind in HOOK_KINDS:
        for i, hook in enumerate(hooks.get(kind) or []):
            r.only(hook, f"hooks.{kind}[{i}]", {"path", "args", "env", "timeout"})
            if not str(hook.get("path", "")).startswith("/"):
                r.bad(f"hooks.{kind}[{i}].path", hook.get("path"), "an absolute path")
            spec.hooks.setdefault(kind, []).append(hook)
    return spec


def parse_resources(res, r: Reader, spec: Spec) -> None:
    """linux.resources -> labkit's limits (cgroups.limits names) and v1 device rules."""
    res = r.only(res, "linux.resources", {"devices", "memory", "cpu", "pids", "blockIO"})
    mem = r.only(res.get("memory"), "linux.resources.memory", {"limit", "swap", "disableOOMKiller"})
    limit, swap = mem.get("limit"), mem.get("swap")
    if limit not in (None, -1, 0):
        spec.limits["memory"] = limit
        if swap not in (None, 0):        # OCI's swap is memory + swap; labkit's is the swap alone
            spec.limits["swap"] = "max" if swap == -1 else swap - limit
    elif swap not in (None, 0, -1):
        r.bad("linux.resources.memory.swap", swap, "a swap limit only together with memory.limit")
    spec.oom_kill_disable = bool(mem.get("disableOOMKiller"))
    cpu = r.only(res.get("cpu"), "linux.resources.cpu", {"quota", "period", "cpus"})
    quota, period = cpu.get("quota"), cpu.get("period")
    if quota not in (None, -1, 0):
        if period not in (None, 0, DEFAULT_CPU_PERIOD):
            r.refuse("linux.resources.cpu.period", f"labkit writes quotas against a {DEFAULT_CPU_PERIOD} "
                                                  "us period (what `docker run --cpus` uses)")
        spec.limits["cpu"] = quota / DEFAULT_CPU_PERIOD
    elif period not in (None, 0, DEFAULT_CPU_PERIOD):
        r.refuse("linux.resources.cpu.period", "a period only together with a quota")
    if cpu.get("cpus"):
        spec.limits["cpuset"] = cpu["cpus"]
    pids = r.only(res.get("pids"), "linux.resources.pids", {"limit"})
    if pids.get("limit") not in (None, -1, 0):
        spec.limits["pids"] = pids["limit"]
    r.only(res.get("blockIO"), "linux.resources.blockIO", set())
    for i, rule in enumerate(res.get("devices") or []):
        r.only(rule, f"linux.resources.devices[{i}]", {"allow", "type", "major", "minor", "access"})
        kind = rule.get("type") or "a"
        if kind not in ("a", "b", "c"):
            r.bad(f"linux.resources.devices[{i}].type", kind, "a, b or c")
        major = "*" if rule.get("major") in (None, -1) else rule["major"]
        minor = "*" if rule.get("minor") in (None, -1) else rule["minor"]
        spec.devices.append(f"{'allow' if rule.get('allow') else 'deny'} {kind} {major}:{minor} "
                            f"{rule.get('access') or 'rwm'}")


__all__ = ["Spec", "Process", "Mount", "load", "parse", "parse_process", "UnsupportedField"]
