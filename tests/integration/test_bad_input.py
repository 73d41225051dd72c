"""Bad input, table-driven: every row must be refused with a clear error that NAMES the bad value,
and nothing may appear on the host - checked from the kernel's side (kernel_state.snapshot()) before
and after each row, and, for the engine, from its container list.

A row is (id, what is wrong, the call, what must come back, the text the message must contain).
Python API rows expect a LabkitError subclass; engine rows go over HTTP on the engine's unix socket
and expect a 4xx with Docker's error shape {"message": ...}. tests/reliability_report.py prints this
table into docs/reliability.md, with the message each row really got (recorded in the JUnit XML).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import kernel_state as ks
from labkit import container, namespaces, net, oci, vm
from labkit.cgroups import Cgroup, parse_limits
from labkit.container import Container
from labkit.errors import InvalidValue, LabkitError, NotFound, Unsupported

pytestmark = pytest.mark.root

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
ONLINE = Path("/sys/devices/system/cpu/online").read_text().strip()
TOO_MANY_CPUS = int(ONLINE.replace(",", "-").split("-")[-1]) + 5     # a CPU this host does not have


@dataclass
class Case:
    id: str
    group: str
    bad: str                      # what is wrong, for the report
    call: Callable                # raises, or returns (status, body) for engine rows
    expect: type | int            # an exception class, or an HTTP status
    names: str                    # the message must contain this (the bad value)


def cg(**kw):
    return lambda: Cgroup.create(**kw)


def box(*args, **kw):
    return lambda: Container(*args, **kw).start()


# --- bundles: a minimal valid config.json, then one thing broken per row ------------------------------

GOOD_CONFIG = {"ociVersion": "1.0.2", "process": {"args": ["sh", "-c", "true"], "cwd": "/"},
               "root": {"path": "rootfs"},
               "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]}}


def bundle(tmp: Path, config) -> Path:
    (tmp / "rootfs").mkdir(exist_ok=True)
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (tmp / "config.json").write_text(text)
    return tmp


def mutated(**changes):
    spec = json.loads(json.dumps(GOOD_CONFIG))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


def empty_root():
    """A root filesystem that is an empty directory: no /proc to mount, no shell to run."""
    def call(tmp):
        (tmp / "empty-root").mkdir()
        return Container(rootfs=tmp / "empty-root", command=["/bin/sh", "-c", "true"]).start()
    call.needs_tmp = True
    return call


def run_bundle(config):
    def call(tmp):
        return oci.load(bundle(tmp, config)).container(attach=False).start()
    call.needs_tmp = True
    return call


# --- the engine: raw HTTP on its unix socket --------------------------------------------------------

CREATE = "/v1.41/containers/create"
OK_BODY = {"Image": "labkit-busybox", "Cmd": ["true"]}


def http(method: str, path: str, body=None, raw: bytes | None = None):
    def call(engine):
        from labkit.engine.wire import UnixHTTPConnection

        if raw is not None:
            return _send_raw(engine.socket_path, method, path, raw)
        conn = UnixHTTPConnection(engine.socket_path, timeout=60)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
    call.needs_engine = True
    return call


def _send_raw(socket_path: str, method: str, path: str, raw: bytes):
    """A request whose body the server may refuse before it has read it all (413 and close, as
    dockerd does): the answer is read even when sending the rest failed."""
    import http.client
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(60)
    try:
        sock.connect(socket_path)
        head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n").encode()
        try:
            sock.sendall(head + raw)
        except (BrokenPipeError, ConnectionResetError):
            pass                               # it answered (and closed) before reading everything
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()
    finally:
        sock.close()


HUGE = b'{"Image": "labkit-busybox", "Cmd": ["true"], "Labels": {"x": "' + b"a" * (64 << 20) + b'"}}'


def create_with(**host_config):
    return http("POST", CREATE, {**OK_BODY, "HostConfig": host_config})


CASES = [
    # limits
    Case("memory-negative", "limits", "memory=-1", cg(memory=-1), InvalidValue, "-1"),
    Case("memory-zero", "limits", "memory=0", cg(memory=0), InvalidValue, "memory limit 0"),
    Case("memory-absurd", "limits", "memory='1000T'", cg(memory="1000T"), InvalidValue, "1000T"),
    Case("memory-wrong-unit", "limits", "memory='64Q'", cg(memory="64Q"), InvalidValue, "64Q"),
    Case("memory-words", "limits", "memory='64 parsecs'", cg(memory="64 parsecs"), InvalidValue, "64 parsecs"),
    Case("memory-float", "limits", "memory=1.5 (float bytes)", cg(memory=1.5), InvalidValue, "1.5"),
    Case("memory-bool", "limits", "memory=True", cg(memory=True), InvalidValue, "True"),
    Case("cpu-negative", "limits", "cpu=-0.5", cg(cpu=-0.5), InvalidValue, "-0.5"),
    Case("cpu-zero", "limits", "cpu=0", cg(cpu=0), InvalidValue, "cpu limit 0"),
    Case("cpu-above-cpus", "limits", f"cpu={CPUS + 1} (> {CPUS} CPUs)", cg(cpu=CPUS + 1), InvalidValue, str(CPUS + 1)),
    Case("cpu-nan", "limits", "cpu=nan", cg(cpu=float("nan")), InvalidValue, "nan"),
    Case("cpu-words", "limits", "cpu='half'", cg(cpu="half"), InvalidValue, "half"),
    Case("pids-zero", "limits", "pids=0", cg(pids=0), InvalidValue, "pids limit 0"),
    Case("pids-negative", "limits", "pids=-5", cg(pids=-5), InvalidValue, "-5"),
    Case("pids-float", "limits", "pids=2.5 (float where an integer belongs)", cg(pids=2.5), InvalidValue, "2.5"),
    Case("pids-absurd", "limits", "pids=10**9", cg(pids=10**9), InvalidValue, str(10**9)),
    Case("cpuset-offline", "limits", f"cpuset='{TOO_MANY_CPUS}' (not online)", cg(cpuset=str(TOO_MANY_CPUS)),
         InvalidValue, str(TOO_MANY_CPUS)),
    Case("cpuset-garbage", "limits", "cpuset='0-1-2'", cg(cpuset="0-1-2"), InvalidValue, "0-1-2"),
    Case("cpu-weight-zero", "limits", "cpu_weight=0", cg(cpu_weight=0), InvalidValue, "cpu_weight 0"),
    Case("swap-without-memory", "limits", "swap='64M' without memory", cg(swap="64M"), InvalidValue, "64M"),
    Case("io-missing-device", "limits", "io device /dev/nonexistent",
         cg(io={"device": "/dev/nonexistent", "write_bps": "1M"}), InvalidValue, "/dev/nonexistent"),
    Case("limit-misspelt", "limits", "limit name 'memroy'", lambda: parse_limits({"memroy": "64M"}),
         InvalidValue, "memroy"),
    Case("container-nano-cpus", "limits", "Container(nano_cpus=-5)", box("busybox", ["true"], nano_cpus=-5),
         InvalidValue, "-5"),
    Case("container-mem-limit", "limits", "Container(mem_limit='lots')", box("busybox", ["true"], mem_limit="lots"),
         InvalidValue, "lots"),
    Case("vm-memory", "limits", "VM(memory='1P')", lambda: vm.VM(memory="1P"), InvalidValue, "1P"),
    Case("vm-cpus", "limits", "VM(cpus=0)", lambda: vm.VM(cpus=0), InvalidValue, "cpus 0"),
    # names
    Case("name-slash", "names", "name 'a/b'", cg(name="a/b"), InvalidValue, "a/b"),
    Case("name-dotdot", "names", "name '..'", cg(name=".."), InvalidValue, "'..'"),
    Case("name-traversal", "names", "container name '../../etc'", box("busybox", ["true"], name="../../etc"),
         InvalidValue, "../../etc"),
    Case("name-space", "names", "name 'my box'", box("busybox", ["true"], name="my box"), InvalidValue, "my box"),
    Case("name-nul", "names", "name 'box\\0x'", cg(name="box\0x"), InvalidValue, "box\\x00x"),
    Case("name-300", "names", "name of 300 characters", cg(name="x" * 300), InvalidValue, "x" * 300),
    Case("name-empty", "names", "name ''", cg(name=""), InvalidValue, "''"),
    Case("hostname-long", "names", "hostname of 100 characters", box("busybox", ["true"], hostname="h" * 100),
         InvalidValue, "h" * 100),
    Case("hostname-slash", "names", "hostname 'a/b'", box("busybox", ["true"], hostname="a/b"), InvalidValue, "a/b"),
    Case("env-nul", "names", "environment value with NUL", box("busybox", ["true"], environment={"KEY": "a\0b"}),
         InvalidValue, "KEY"),
    Case("namespace-kind", "names", "namespace kind 'bogus'", box("busybox", ["true"], namespaces=["mnt", "bogus"]),
         InvalidValue, "bogus"),
    # commands and root filesystems
    Case("command-empty", "commands", "command []", box("busybox", []), InvalidValue, "[]"),
    Case("command-missing", "commands", "spawn of /no/such/cmd", lambda: namespaces.run(["/no/such/cmd"], "pid"),
         NotFound, "/no/such/cmd"),
    Case("container-command-missing", "commands", "container command /no/such/cmd (no init)",
         lambda: container.run("busybox", ["/no/such/cmd"], init=False), NotFound, "/no/such/cmd"),
    Case("workdir-relative", "commands", "working_dir 'tmp'", box("busybox", ["true"], working_dir="tmp"),
         InvalidValue, "tmp"),
    Case("rootfs-missing", "rootfs", "rootfs /nonexistent/root", box(rootfs="/nonexistent/root", command=["true"]),
         InvalidValue, "/nonexistent/root"),
    Case("rootfs-a-file", "rootfs", "rootfs /etc/passwd (a file)", box(rootfs="/etc/passwd", command=["true"]),
         InvalidValue, "/etc/passwd"),
    Case("rootfs-empty", "rootfs", "rootfs an empty directory (no /proc, no /bin/sh)", empty_root(), LabkitError,
         "empty-root"),
    Case("image-unknown", "rootfs", "image 'nosuchimage'", box("nosuchimage", ["true"]), NotFound, "nosuchimage"),
    Case("image-traversal", "rootfs", "image '../../etc'", box("../../etc", ["true"]), NotFound, "../../etc"),
    # OCI bundles
    Case("bundle-no-config", "bundle", "bundle without config.json", run_bundle(None), NotFound, "config.json"),
    Case("bundle-broken-json", "bundle", "config.json '{not json'", run_bundle("{not json"), InvalidValue, "config.json"),
    Case("bundle-array", "bundle", "config.json is a JSON array", run_bundle("[1, 2]"), InvalidValue, "[1, 2]"),
    Case("bundle-hooks", "bundle", "unsupported field hooks", run_bundle(mutated(hooks={"prestart": [{"path": "/bin/true"}]})),
         Unsupported, "hooks"),
    Case("bundle-seccomp", "bundle", "unsupported field linux.seccomp",
         run_bundle(mutated(linux__seccomp={"defaultAction": "SCMP_ACT_ALLOW"})), Unsupported, "linux.seccomp"),
    Case("bundle-version", "bundle", "ociVersion '9.0.0'", run_bundle(mutated(ociVersion="9.0.0")), InvalidValue, "9.0.0"),
    Case("bundle-no-args", "bundle", "process.args missing", run_bundle(mutated(process__args=...)), InvalidValue,
         "process.args"),
    Case("bundle-root-missing", "bundle", "root.path /nonexistent", run_bundle(mutated(root__path="/nonexistent")),
         NotFound, "/nonexistent"),
    Case("bundle-ns-path", "bundle", "joining the host's netns by path",
         run_bundle(mutated(linux__namespaces=[{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}])),
         Unsupported, "linux.namespaces[1].path"),
    Case("bundle-memory-negative", "bundle", "linux.resources.memory.limit -5",
         run_bundle(mutated(linux__resources={"memory": {"limit": -5}})), InvalidValue, "-5"),
    # networks
    Case("subnet-outside-lab", "network", "subnet 10.0.0.0/8", lambda: net.Network(subnet="10.0.0.0/8"),
         InvalidValue, "10.0.0.0/8"),
    Case("subnet-garbage", "network", "subnet 'garbage'", lambda: net.Network(subnet="garbage"), InvalidValue, "garbage"),
    Case("route-default", "network", "route 0.0.0.0/0 (a way out)", lambda: net.check_route("0.0.0.0/0"),
         InvalidValue, "0.0.0.0/0"),
    # the engine's HTTP API
    Case("engine-malformed-json", "engine", "body '{\"Image\": '", http("POST", CREATE, raw=b'{"Image": '), 400,
         "malformed JSON"),
    Case("engine-body-array", "engine", "body is a JSON array", http("POST", CREATE, [1, 2]), 400, "list"),
    Case("engine-unsupported-field", "engine", "HostConfig.Privileged true", create_with(Privileged=True), 400,
         "HostConfig.Privileged"),
    Case("engine-memory-negative", "engine", "HostConfig.Memory -5", create_with(Memory=-5), 400, "-5"),
    Case("engine-memory-float", "engine", "HostConfig.Memory 1.5e7 (float)", create_with(Memory=1.5e7), 400,
         "15000000.0"),
    Case("engine-memory-absurd", "engine", "HostConfig.Memory 2**62", create_with(Memory=2**62), 400, str(2**62)),
    Case("engine-cpus-above", "engine", f"NanoCpus {CPUS + 62}e9 (> {CPUS} CPUs)",
         create_with(NanoCpus=(CPUS + 62) * 10**9), 400, f"{CPUS + 62}.0"),
    Case("engine-pids-words", "engine", "HostConfig.PidsLimit 'lots'", create_with(PidsLimit="lots"), 400, "lots"),
    Case("engine-cmd-int", "engine", "Cmd 5", http("POST", CREATE, {"Image": "labkit-busybox", "Cmd": 5}), 400, "Cmd 5"),
    Case("engine-name-traversal", "engine", "?name=../../etc", http("POST", CREATE + "?name=../../etc", OK_BODY), 400,
         "../../etc"),
    Case("engine-name-space", "engine", "?name=a%20b", http("POST", CREATE + "?name=a%20b", OK_BODY), 400, "a b"),
    Case("engine-name-nul", "engine", "?name=a%00b", http("POST", CREATE + "?name=a%00b", OK_BODY), 400, "a\\x00b"),
    Case("engine-image-traversal", "engine", "Image '../../../../etc'",
         http("POST", CREATE, {"Image": "../../../../etc", "Cmd": ["true"]}), 404, "../../../../etc"),
    Case("engine-image-traversal-inspect", "engine", "GET /images/..%2F..%2Fetc%2Fpasswd/json",
         http("GET", "/v1.41/images/..%2F..%2Fetc%2Fpasswd/json"), 404, "etc"),
    Case("engine-unknown-id-inspect", "engine", "GET /containers/nosuchid/json", http("GET", "/v1.41/containers/nosuchid/json"),
         404, "nosuchid"),
    Case("engine-unknown-id-start", "engine", "POST /containers/nosuchid/start",
         http("POST", "/v1.41/containers/nosuchid/start"), 404, "nosuchid"),
    Case("engine-unknown-id-delete", "engine", "DELETE /containers/nosuchid", http("DELETE", "/v1.41/containers/nosuchid"),
         404, "nosuchid"),
    Case("engine-unimplemented-route", "engine", "GET /plugins", http("GET", "/v1.41/plugins"), 501, "/plugins"),
    Case("engine-unknown-endpoint", "engine", "GET /no-such-route", http("GET", "/v1.41/no-such-route"), 404,
         "/no-such-route"),
    Case("engine-huge-body", "engine", f"a {len(HUGE) >> 20} MiB create body", http("POST", CREATE, raw=HUGE), 413,
         f"{len(HUGE)} bytes"),
]


@pytest.fixture(scope="module")
def engine():
    from labkit.engine import EngineProcess

    with EngineProcess() as e:
        yield e


def engine_containers(engine) -> list:
    status, body = http("GET", "/v1.41/containers/json?all=1")(engine)
    assert status == 200
    return json.loads(body)


def test_the_table_is_large_enough_and_the_base_bundle_is_valid(tmp_path):
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert oci.load(bundle(tmp_path, GOOD_CONFIG)).args == ["sh", "-c", "true"]   # so each row breaks ONE thing


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_by_name_and_creates_nothing(case, request, tmp_path, record_testsuite_property):
    expected = case.expect if isinstance(case.expect, int) else case.expect.__name__
    row = {"group": case.group, "input": case.bad, "expected": expected, "outcome": "nothing was refused"}
    try:
        _check(case, request, tmp_path, row)
    finally:       # what came back, for docs/reliability.md (suite properties survive JUnit's xunit2)
        record_testsuite_property(f"bad-input {case.id}", json.dumps(row))


def _check(case, request, tmp_path, row):
    if getattr(case.call, "needs_engine", False):
        engine = request.getfixturevalue("engine")
        assert engine_containers(engine) == []
        before = ks.snapshot()
        status, raw = case.call(engine)
        try:
            message = json.loads(raw).get("message", raw[:200].decode(errors="replace"))
        except ValueError:
            message = raw[:200].decode(errors="replace")
        row["outcome"] = f"{status} {message[:300]}"
        assert status == case.expect, f"expected {case.expect}, got {status}: {message[:300]}"
        assert case.names in message, f"the message does not name {case.names!r}: {message[:300]}"
        assert engine_containers(engine) == [], "the engine made a container anyway"
        owners = {os.getpid(), engine.pid}
    else:
        before = ks.snapshot()
        with pytest.raises(LabkitError) as caught:
            case.call(tmp_path) if getattr(case.call, "needs_tmp", False) else case.call()
        message = str(caught.value)
        row["outcome"] = f"{type(caught.value).__name__}: {message[:300]}"
        assert isinstance(caught.value, case.expect), f"{type(caught.value).__name__}: {message}"
        assert case.names in message, f"the message does not name {case.names!r}: {message}"
        owners = {os.getpid()}
    assert ks.new_objects(before, ks.snapshot(), owners=owners) == []
