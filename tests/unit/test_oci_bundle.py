"""labkit.oci: config.json as `runc spec` writes it is accepted; what labkit can't do is refused by name.

No root needed: parse() only reads a document and checks that root.path is a directory.
"""
from __future__ import annotations

import copy
import json
import resource
import shutil
import subprocess

import pytest

from labkit import oci
from labkit.errors import InvalidValue, LabkitError, NotFound, Unsupported

# What `runc spec` (runc 1.1.5) writes, trimmed of nothing.
RUNC_SPEC = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": True, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                         for k in ("bounding", "effective", "permitted", "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                       {"type": "mount"}],
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/sys"],
    },
}


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "rootfs").mkdir()
    return tmp_path


def parse(bundle, spec):
    return oci.parse(spec, bundle)


def test_runc_spec_default_is_accepted(bundle):
    b = parse(bundle, RUNC_SPEC)
    assert b.args == ["sh"]
    assert b.env["TERM"] == "xterm"
    assert b.cwd == "/"
    assert b.root == (bundle / "rootfs").resolve()
    assert b.readonly is True
    assert b.hostname == "runc"
    assert b.namespaces == ["pid", "net", "ipc", "uts", "mnt"]
    assert b.rlimits == {resource.RLIMIT_NOFILE: (1024, 1024)}
    assert b.no_new_privileges is True
    assert b.masked_paths == ["/proc/acpi", "/proc/kcore", "/sys/firmware"]
    assert b.readonly_paths == ["/proc/bus", "/proc/sys"]
    assert b.memory is None and b.cpu is None and b.pids is None
    assert b.capabilities == ["AUDIT_WRITE", "KILL", "NET_BIND_SERVICE"]   # the bounding set, enforced
    # what labkit accepts but does not enforce is said, not hidden
    joined = " ".join(b.not_enforced)
    assert "process.capabilities" not in joined and "/dev/mqueue" in joined
    # process.terminal is honoured now (a pty relayed to labkit's terminal), so it is no note
    assert b.terminal is True and b.console_size is None and "terminal" not in joined


def test_resources_become_limits(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["resources"].update({"memory": {"limit": 64 * 2**20},
                                       "cpu": {"quota": 50000, "period": 100000},
                                       "pids": {"limit": 20}})
    b = parse(bundle, spec)
    assert (b.memory, b.cpu, b.pids) == (64 * 2**20, 0.5, 20)


def test_cpu_quota_with_another_period_is_the_same_fraction(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["resources"]["cpu"] = {"quota": 25000, "period": 50000}
    assert parse(bundle, spec).cpu == 0.5


def test_user_and_args(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["process"]["args"] = ["/bin/sh", "-c", "echo hi; hostname"]
    spec["process"]["user"] = {"uid": 1000, "gid": 100, "additionalGids": [5]}
    b = parse(bundle, spec)
    assert b.args == ["/bin/sh", "-c", "echo hi; hostname"]
    assert b.user == (1000, 100, [5])


@pytest.mark.parametrize("path, value, field", [
    (("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ERRNO"}, "linux.seccomp"),
    (("hooks",), {"prestart": [{"path": "/bin/true"}]}, "hooks"),
    (("linux", "uidMappings"), [{"containerID": 0, "hostID": 1000, "size": 1}], "linux.uidMappings"),
    (("linux", "sysctl"), {"net.ipv4.ip_forward": "1"}, "linux.sysctl"),
    (("linux", "resources", "blockIO"), {"weight": 10}, "linux.resources.blockIO"),
    (("linux", "resources", "memory"), {"limit": 2**26, "swap": 2**27}, "linux.resources.memory.swap"),
    (("linux", "resources", "cpu"), {"shares": 512}, "linux.resources.cpu.shares"),
    (("process", "apparmorProfile"), "docker-default", "process.apparmorProfile"),
    (("process", "user"), {"uid": 0, "gid": 0, "username": "root"}, "process.user.username"),
    (("domainname",), "example.org", "domainname"),
])
def test_unsupported_fields_are_refused_by_name(bundle, path, value, field):
    spec = copy.deepcopy(RUNC_SPEC)
    target = spec
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    with pytest.raises(oci.UnsupportedField) as info:
        parse(bundle, spec)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, (Unsupported, LabkitError))


def test_user_namespace_is_refused(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["namespaces"].append({"type": "user"})
    with pytest.raises(Unsupported, match=r"linux\.namespaces\[5\]\.type='user'"):
        parse(bundle, spec)


def test_joining_a_namespace_by_path_is_refused(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["namespaces"][1] = {"type": "network", "path": "/var/run/netns/x"}
    with pytest.raises(Unsupported, match=r"linux\.namespaces\[1\]\.path"):
        parse(bundle, spec)


def test_a_host_bind_mount_is_refused(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": "/srv",
                           "options": ["rbind", "rw"]})
    with pytest.raises(Unsupported, match=r"mounts\[7\] \(bind on /data\)"):
        parse(bundle, spec)


def test_device_rules_other_than_deny_all_are_refused(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["resources"]["devices"].append({"allow": True, "type": "c", "major": 1, "minor": 3,
                                                  "access": "rwm"})
    with pytest.raises(Unsupported, match=r"linux\.resources\.devices\[1\]"):
        parse(bundle, spec)


def test_empty_values_count_as_absent(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["seccomp"] = None
    spec["process"]["apparmorProfile"] = ""
    spec["hooks"] = {}
    assert parse(bundle, spec).args == ["sh"]


@pytest.mark.parametrize("mutate, what", [
    (lambda s: s["process"].__setitem__("args", []), "process.args"),
    (lambda s: s["process"].__setitem__("args", "sh"), "process.args"),
    (lambda s: s["process"].__setitem__("env", ["NOEQUALS"]), "process.env"),
    (lambda s: s["process"].__setitem__("cwd", "relative"), "process.cwd"),
    (lambda s: s.__setitem__("ociVersion", "0.9"), "ociVersion"),
    (lambda s: s["linux"].__setitem__("namespaces", [{"type": "pid"}]), "linux.namespaces"),
    (lambda s: s["linux"]["resources"].__setitem__("cpu", {"quota": 500}), "linux.resources.cpu.quota"),
    (lambda s: s["process"]["rlimits"].append({"type": "NOFILE", "hard": 1, "soft": 1}),
     "process.rlimits[1].type"),
])
def test_bad_values_name_the_field(bundle, mutate, what):
    spec = copy.deepcopy(RUNC_SPEC)
    mutate(spec)
    with pytest.raises(InvalidValue) as info:
        parse(bundle, spec)
    assert what in str(info.value)


def test_hostname_without_uts_namespace_is_refused(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}]
    with pytest.raises(InvalidValue, match="hostname"):
        parse(bundle, spec)


def test_missing_root_directory(tmp_path):
    with pytest.raises(NotFound, match="root.path"):
        oci.parse(RUNC_SPEC, tmp_path)


def test_load_reads_config_json_and_reports_a_missing_one(bundle):
    with pytest.raises(NotFound, match="runc spec"):
        oci.load(bundle)
    (bundle / "config.json").write_text("{not json")
    with pytest.raises(InvalidValue, match="config.json"):
        oci.load(bundle)
    (bundle / "config.json").write_text(json.dumps(RUNC_SPEC))
    assert oci.load(bundle).hostname == "runc"


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_a_fresh_runc_spec_parses(bundle):
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    b = oci.load(bundle)
    assert b.args == ["sh"] and "mnt" in b.namespaces


def test_bundle_becomes_a_container_with_the_same_settings(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["process"]["args"] = ["/bin/sh", "-c", "echo hi; hostname"]
    spec["hostname"] = "from-bundle"
    spec["linux"]["resources"].update({"memory": {"limit": 64 * 2**20}, "pids": {"limit": 20}})
    box = parse(bundle, spec).container(name="oci-unit")
    assert box.command == ["/bin/sh", "-c", "echo hi; hostname"]
    assert box.hostname == "from-bundle"
    assert box.kinds == ("pid", "net", "ipc", "uts", "mnt")
    assert box.limits == {"memory": 64 * 2**20, "pids": 20}
    assert box.read_only and box.rootfs.bind == (bundle / "rootfs").resolve()
    assert box.environment == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "TERM": "xterm"}   # exactly process.env, as runc passes it
    assert box.init is False                      # pid 1 is process.args[0], as with runc
    assert box.status == "new"                    # nothing created yet


def test_console_size_is_read_and_a_bad_one_refused_by_name(bundle):
    spec = copy.deepcopy(RUNC_SPEC)
    spec["process"]["consoleSize"] = {"height": 30, "width": 100}
    assert oci.parse(spec, bundle).console_size == (30, 100)
    for size, field in (({"height": 0, "width": 80}, "process.consoleSize.height"),
                        ({"height": 24, "width": "80"}, "process.consoleSize.width"),
                        ({"height": 24}, "process.consoleSize"),
                        ({"height": 24, "width": 80, "depth": 1}, "process.consoleSize.depth")):
        spec["process"]["consoleSize"] = size
        with pytest.raises(LabkitError) as raised:
            oci.parse(spec, bundle)
        assert field in str(raised.value), (size, str(raised.value))
