"""OCI runtime bundles: a directory with config.json and a root filesystem, as `runc spec` writes it.

`labkit run --bundle DIR` reads DIR/config.json and runs it as a labkit Container. What a field means
is defined by the OCI runtime specification (config.md, config-linux.md); labkit supports the part a
container from scratch needs, and refuses the rest by name instead of silently ignoring it:

    honoured      process.args, env, cwd, user.uid/gid/additionalGids/umask, rlimits,
                  noNewPrivileges, oomScoreAdj; process.terminal and consoleSize (a pty of the
                  container's own devpts, relayed to labkit's terminal as runc run does: ptyrelay);
                  root.path, root.readonly; hostname;
                  linux.namespaces (pid, network, ipc, uts, mount, cgroup; no `path`);
                  linux.resources.memory.limit, cpu.quota + cpu.period, pids.limit;
                  linux.maskedPaths, linux.readonlyPaths; the standard mounts /proc, /dev,
                  /dev/pts, /dev/shm, /sys (read-only) - labkit makes these itself
                  process.capabilities.bounding (every other capability is dropped; the
                  effective/permitted lists follow from it for root, as they do in runc)
    accepted, not linux.resources.devices (no device cgroup rules), the /dev/mqueue and
    enforced      /sys/fs/cgroup mounts (not mounted), linux.cgroupsPath (labkit names its
                  own cgroup labkit-NAME), annotations
    refused       everything else (hooks, seccomp, user namespaces and id mappings, sysctl,
                  other mounts, other resources, namespaces joined by path, ...): Unsupported
                  naming the field

A field whose value is empty (null, "", [], {}, false, 0) counts as absent.
"""
from __future__ import annotations

import json
import os
import resource
from types import SimpleNamespace
from pathlib import Path

from . import capabilities as caps
from .errors import InvalidValue, NotFound, Unsupported

NAMESPACES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
              "cgroup": "cgroup"}
# The mounts `runc spec` writes, by destination: the filesystem type labkit expects there, and
# whether labkit provides it (the others are accepted but not mounted).
STANDARD_MOUNTS = {"/proc": ("proc", True), "/dev": ("tmpfs", True), "/dev/pts": ("devpts", True),
                   "/dev/shm": ("tmpfs", True), "/dev/mqueue": ("mqueue", False),
                   "/sys": ("sysfs", True), "/sys/fs/cgroup": ("cgroup", False)}


class UnsupportedField(Unsupported):
    """A config.json field labkit does not implement; `field` is its dotted path."""

    def __init__(self, config: Path, field_path: str, why: str = ""):
        self.field = field_path
        super().__init__(f"{config}: {field_path} is not supported by labkit"
                         + (f" ({why})" if why else "")
                         + "; see `python -m pydoc labkit.oci` for what is")


class Bundle(SimpleNamespace):
    """config.json, checked and turned into Container arguments. (A plain class, not a dataclass:
    labkit-runtime reads config.json through this module, and importing dataclasses would cost
    every `docker run` 5 ms.)"""

    def __init__(self, path: Path, args: list[str], env: dict[str, str], cwd: str, root: Path,
                 readonly: bool, hostname: str | None, namespaces: list[str], *,
                 memory: int | None = None, cpu: float | None = None, pids: int | None = None,
                 user: tuple | None = None, rlimits: dict | None = None, no_new_privileges: bool = False,
                 oom_score_adj: int | None = None, umask: int | None = None,
                 masked_paths: list[str] = (), readonly_paths: list[str] = (),
                 capabilities: list[str] | None = None, terminal: bool = False,
                 console_size: tuple[int, int] | None = None, not_enforced: list[str] = ()):
        super().__init__(path=path, args=args, env=env, cwd=cwd, root=root, readonly=readonly,
                         hostname=hostname, namespaces=namespaces, memory=memory, cpu=cpu, pids=pids,
                         user=user, rlimits=rlimits or {}, no_new_privileges=no_new_privileges,
                         oom_score_adj=oom_score_adj, umask=umask, masked_paths=list(masked_paths),
                         readonly_paths=list(readonly_paths),
                         capabilities=capabilities,             # the bounding set; None: Docker's default
                         terminal=terminal, console_size=console_size,   # (rows, columns) or None
                         not_enforced=list(not_enforced))       # accepted fields labkit does not apply

    def container(self, name: str | None = None, attach: bool = True):
        """A labkit Container that runs this bundle (output to our stdio when attach; with
        process.terminal, to its pty instead, whose master the caller relays: labkit.ptyrelay)."""
        # imported here: labkit-runtime reads config.json through this module on every `docker run`
        # and never builds a labkit Container, so its start-up does not pay for container's imports
        from .container import Container
        return Container(None, self.args, name=name, hostname=self.hostname, environment=self.env,
                         working_dir=self.cwd, memory=self.memory, cpu=self.cpu, pids_limit=self.pids,
                         namespaces=self.namespaces, read_only=self.readonly, init=False,
                         rootfs=self.root, user=self.user, rlimits=self.rlimits,
                         no_new_privileges=self.no_new_privileges, attach=attach and not self.terminal,
                         bundle=str(self.path), masked_paths=self.masked_paths,
                         readonly_paths=self.readonly_paths, oom_score_adj=self.oom_score_adj,
                         umask=self.umask, default_env=False, capabilities=self.capabilities,
                         tty=self.terminal)


def _empty(value) -> bool:
    return value is None or value == "" or value == [] or value == {} or value is False or value == 0


def read_process_identity(r: "Reader", proc: dict, where: str = "process"):
    """The process's user (uid, gid), rlimits and oomScoreAdj, checked: what both labkit's bundle
    reader and labkit-runtime hand the kernel for a container's process.
    Returns (user object, uid, gid, {RLIMIT_*: (soft, hard)}, oomScoreAdj or None)."""
    user = r.only(proc.get("user"), f"{where}.user", {"uid", "gid", "additionalGids", "umask"})
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    for key, value in (("uid", uid), ("gid", gid)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            r.bad(f"{where}.user.{key}", value, "a non-negative integer")
    rlimits = {}
    for i, item in enumerate(proc.get("rlimits") or []):
        r.only(item, f"{where}.rlimits[{i}]", {"type", "hard", "soft"})
        kind = getattr(resource, str(item.get("type")), None)
        if not str(item.get("type")).startswith("RLIMIT_") or kind is None:
            r.bad(f"{where}.rlimits[{i}].type", item.get("type"), "an RLIMIT_* name, e.g. RLIMIT_NOFILE")
        rlimits[kind] = (int(item.get("soft", 0)), int(item.get("hard", 0)))
    oom = proc.get("oomScoreAdj")
    if oom is not None and not (isinstance(oom, int) and -1000 <= oom <= 1000):
        r.bad(f"{where}.oomScoreAdj", oom, "an integer from -1000 to 1000")
    return user, uid, gid, rlimits, oom


class Reader:
    """Walks config.json; every key read is 'used'; anything left over is refused by name."""

    def __init__(self, config: Path):
        self.config = config

    def only(self, obj, where: str, allowed: set[str]) -> dict:
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise InvalidValue(f"{self.config}: {where}", obj, "a JSON object")
        for key, value in obj.items():
            if key not in allowed and not _empty(value):
                raise UnsupportedField(self.config, f"{where}.{key}" if where else key)
        return obj

    def refuse(self, where: str, why: str = ""):
        raise UnsupportedField(self.config, where, why)

    def bad(self, where: str, value, accepted: str):
        raise InvalidValue(f"{self.config}: {where}", value, accepted)


def read_config(bundle: str | os.PathLike) -> tuple[dict, Path, Path]:
    """(BUNDLE/config.json decoded, the bundle's absolute path, the config file's path)."""
    path = Path(bundle).resolve()
    config = path / "config.json"
    try:
        return json.loads(config.read_text()), path, config
    except FileNotFoundError:
        raise NotFound(f"{config}: no config.json in the bundle (create one with `runc spec`)") from None
    except ValueError as exc:
        raise InvalidValue(str(config), "", f"valid JSON ({exc})") from None


def load(bundle: str | os.PathLike) -> Bundle:
    """Read and check BUNDLE/config.json; Unsupported (naming the field) for what labkit can't do."""
    return parse(*read_config(bundle))


def parse(spec: dict, path: Path, config: Path | None = None) -> Bundle:
    """Check a config.json document (already decoded) for a bundle at `path`."""
    config = config or path / "config.json"
    r = Reader(config)
    top = r.only(spec, "", {"ociVersion", "process", "root", "hostname", "mounts", "linux", "annotations"})
    version = str(top.get("ociVersion", ""))
    if not version.startswith("1."):
        r.bad("ociVersion", version, "a 1.x version of the runtime spec")
    notes = []

    # -- process
    proc = top.get("process")
    if not proc:
        r.bad("process", proc, "an object with args (OCI: required to run)")
    r.only(proc, "process", {"terminal", "consoleSize", "user", "args", "env", "cwd", "capabilities",
                             "rlimits", "noNewPrivileges", "oomScoreAdj"})
    args = proc.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        r.bad("process.args", args, "a non-empty list of strings")
    env = {}
    for item in proc.get("env") or []:
        if not isinstance(item, str) or "=" not in item:
            r.bad("process.env", item, "strings of the form NAME=value")
        key, value = item.split("=", 1)
        env[key] = value
    cwd = proc.get("cwd") or "/"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        r.bad("process.cwd", cwd, "an absolute path")
    size = r.only(proc.get("consoleSize"), "process.consoleSize", {"height", "width"})
    for key in size:
        if not isinstance(size[key], int) or isinstance(size[key], bool) or not 0 < size[key] < 65536:
            r.bad(f"process.consoleSize.{key}", size[key], "a whole number of rows or columns, 1 to 65535")
    if size and set(size) != {"height", "width"}:
        r.bad("process.consoleSize", size, "both height and width")
    capabilities = None   # none given: Docker's default list, as for any labkit container
    if proc.get("capabilities"):
        r.only(proc["capabilities"], "process.capabilities",
               {"bounding", "effective", "permitted", "inheritable", "ambient"})
        try:
            capabilities = sorted(caps.canonical(c) for c in proc["capabilities"].get("bounding") or [])
        except InvalidValue as exc:
            r.bad("process.capabilities.bounding", exc.value, exc.accepted)
    user, uid, gid, rlimits, oom = read_process_identity(r, proc)
    groups = list(user.get("additionalGids") or [])
    umask = user.get("umask")

    # -- root, hostname
    root_obj = r.only(top.get("root"), "root", {"path", "readonly"})
    if not root_obj.get("path"):
        r.bad("root.path", root_obj.get("path"), "the root filesystem directory (OCI: required)")
    root = (path / root_obj["path"]).resolve()
    if not root.is_dir():
        raise NotFound(f"{config}: root.path {str(root)!r} is not a directory "
                       "(put a root filesystem there, e.g. labkit.rootfs.export(DIR))")
    hostname = top.get("hostname") or None

    # -- linux
    linux = r.only(top.get("linux"), "linux", {"namespaces", "resources", "maskedPaths",
                                              "readonlyPaths", "cgroupsPath"})
    if linux.get("cgroupsPath"):
        notes.append("linux.cgroupsPath: labkit always uses its own cgroup, labkit-NAME")
    kinds = []
    for i, ns in enumerate(linux.get("namespaces") or []):
        r.only(ns, f"linux.namespaces[{i}]", {"type"})
        kind = ns.get("type")
        if kind not in NAMESPACES:
            r.refuse(f"linux.namespaces[{i}].type={kind!r}",
                     "labkit creates " + ", ".join(NAMESPACES) + " namespaces")
        kinds.append(NAMESPACES[kind])
    if "mnt" not in kinds:
        r.bad("linux.namespaces", [n.get("type") for n in linux.get("namespaces") or []],
              "a list that includes {'type': 'mount'} (labkit always gives a container its own /)")
    if hostname and "uts" not in kinds:
        r.bad("hostname", hostname, "a uts namespace in linux.namespaces too")
    res = r.only(linux.get("resources"), "linux.resources", {"memory", "cpu", "pids", "devices"})
    memory = cpu = pids = None
    mem = r.only(res.get("memory"), "linux.resources.memory", {"limit"})
    if mem.get("limit") not in (None, -1):
        memory = mem["limit"]
    cpu_obj = r.only(res.get("cpu"), "linux.resources.cpu", {"quota", "period"})
    quota, period = cpu_obj.get("quota"), cpu_obj.get("period")
    if quota not in (None, -1, 0):
        if not isinstance(quota, int) or quota < 1000:
            r.bad("linux.resources.cpu.quota", quota, "microseconds per period, at least 1000")
        period = period or 100_000
        if not isinstance(period, int) or not 1000 <= period <= 1_000_000:
            r.bad("linux.resources.cpu.period", period, "1000 to 1000000 microseconds")
        cpu = quota / period      # labkit's cgroups take the same ratio as a fraction of a CPU
    pids_obj = r.only(res.get("pids"), "linux.resources.pids", {"limit"})
    if pids_obj.get("limit") not in (None, -1, 0):
        pids = pids_obj["limit"]
    for i, rule in enumerate(res.get("devices") or []):
        if rule.get("allow") or rule.get("type") or rule.get("major") or rule.get("minor"):
            r.refuse(f"linux.resources.devices[{i}]", "only the default deny-all rule is accepted")
    if res.get("devices"):
        notes.append("linux.resources.devices: no device cgroup rules (the minimal /dev is the limit)")
    for i, m in enumerate(top.get("mounts") or []):
        r.only(m, f"mounts[{i}]", {"destination", "type", "source", "options"})
        expected = STANDARD_MOUNTS.get(m.get("destination"))
        if expected is None or m.get("type") != expected[0]:
            r.refuse(f"mounts[{i}] ({m.get('type')} on {m.get('destination')})",
                     "labkit provides only the standard mounts: " + ", ".join(STANDARD_MOUNTS))
        if not expected[1]:
            notes.append(f"mounts[{i}]: {m['destination']} is not mounted")
    if top.get("annotations"):
        notes.append("annotations: kept in config.json only")

    return Bundle(path=path, args=args, env=env, cwd=cwd, root=root,
                  readonly=bool(root_obj.get("readonly")), hostname=hostname, namespaces=kinds,
                  memory=memory, cpu=cpu, pids=pids,
                  user=(uid, gid, groups) if (uid or gid or groups) else None, rlimits=rlimits,
                  no_new_privileges=bool(proc.get("noNewPrivileges")), oom_score_adj=oom,
                  umask=umask, masked_paths=list(linux.get("maskedPaths") or []),
                  readonly_paths=list(linux.get("readonlyPaths") or []), capabilities=capabilities,
                  terminal=bool(proc.get("terminal")),
                  console_size=(size["height"], size["width"]) if size else None, not_enforced=notes)


__all__ = ["Bundle", "UnsupportedField", "load", "parse"]
