"""labkit.runtime.systemd without systemd: the cgroupsPath parsing, the unit properties (checked as a
real D-Bus message that jeepney serialises and parses back), and the wait for a job's JobRemoved.

The driver itself, talking to a real systemd, is exercised in the Debian 13 guest tier (notebook 41 and
tests/integration/test_runtime.py under Docker's systemd cgroup driver)."""
from __future__ import annotations

import json
from collections import deque
from contextlib import contextmanager

import pytest
from jeepney import DBusAddress, HeaderFields, new_method_call
from jeepney.low_level import Parser

from labkit.cgroups.limits import Limits
from labkit.errors import InvalidValue, LabkitError, Unsupported
from labkit.oci import UnsupportedField
from labkit.runtime import cli, spec as specs, systemd
from labkit.runtime.systemd import INFINITY, Scope

MEMBER = HeaderFields.member        # a message's method name, in its header


@pytest.mark.parametrize("path, slice_name, unit, relpath", [
    ("system.slice:docker:abc", "system.slice", "docker-abc.scope", "system.slice/docker-abc.scope"),
    (":docker:abc", "system.slice", "docker-abc.scope", "system.slice/docker-abc.scope"),
    ("machine-a-b.slice:libpod:x", "machine-a-b.slice", "libpod-x.scope",
     "machine.slice/machine-a.slice/machine-a-b.slice/libpod-x.scope"),
    ("-.slice:p:n", "-.slice", "p-n.scope", "p-n.scope"),
    ("system.slice::n", "system.slice", "n.scope", "system.slice/n.scope"),
    ("", "system.slice", "labkit-ID.scope", "system.slice/labkit-ID.scope"),
])
def test_cgroups_path_names_a_scope(path, slice_name, unit, relpath):
    scope = systemd.parse_path(path, "ID")
    assert (scope.slice, scope.unit, scope.relpath) == (slice_name, unit, relpath)


@pytest.mark.parametrize("path", ["docker:abc", "/docker/abc", "a:b:c:d", "system:docker:abc",
                                  "a--b.slice:p:n", "-a.slice:p:n", "system.slice:docker:", "system.slice:p/q:n"])
def test_malformed_cgroups_path_is_refused_by_name(path):
    with pytest.raises(InvalidValue) as caught:
        systemd.parse_path(path, "ID")
    assert caught.value.value in (path, path.split(":")[0]) and \
        caught.value.what in ("linux.cgroupsPath", "slice")


def test_a_slice_unit_is_refused():
    with pytest.raises(Unsupported, match="slice unit"):
        systemd.parse_path("system.slice:p:mine.slice", "ID")


def test_resource_properties_carry_every_limit():
    props = dict(systemd.resource_properties(Limits(memory=64 * 2**20, swap=0, cpu=0.25, pids=20,
                                                    cpuset="0-2,9")))
    assert props == {"MemoryMax": ("t", 64 * 2**20), "MemorySwapMax": ("t", 0),
                     "CPUQuotaPerSecUSec": ("t", 250_000), "TasksMax": ("t", 20),
                     "AllowedCPUs": ("ay", bytes([0b111, 0b10]))}
    unlimited = dict(systemd.resource_properties(Limits(memory="max", cpu="max", pids="max")))
    assert unlimited == {"MemoryMax": ("t", INFINITY), "CPUQuotaPerSecUSec": ("t", INFINITY),
                         "TasksMax": ("t", INFINITY)}
    assert systemd.resource_properties(Limits()) == []


def test_io_limits_are_refused_not_dropped():
    from labkit.cgroups.limits import IoLimit
    with pytest.raises(Unsupported, match="io limits"):
        systemd.resource_properties(Limits(io=(IoLimit("7:0", read_bps=4096),)))


def test_start_transient_unit_message_round_trips_through_dbus_wire_format():
    """What create sends is a valid D-Bus message of StartTransientUnit's signature, and it says
    what runc's driver says: the slice, the pid, Delegate, the limits."""
    scope = Scope("system.slice", "docker-abc.scope")
    props = systemd.scope_properties(scope, 4242, Limits(memory=32 * 2**20, pids=20), "labkit-runtime container abc")
    address = DBusAddress(systemd.OBJECT, bus_name=systemd.BUS_NAME, interface=systemd.MANAGER)
    wire = new_method_call(address, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                           (scope.unit, "replace", props, [])).serialise(serial=1)
    parser = Parser()
    parser.add_data(wire)
    name, mode, sent, aux = parser.get_next_message().body
    values = dict(sent)
    assert (name, mode, aux) == ("docker-abc.scope", "replace", [])
    assert values["Slice"] == ("s", "system.slice") and values["PIDs"] == ("au", [4242])
    assert values["Delegate"] == ("b", True) and values["DefaultDependencies"] == ("b", False)
    assert values["MemoryMax"] == ("t", 32 * 2**20) and values["TasksMax"] == ("t", 20)


class _Message:
    def __init__(self, body):
        self.body = body


class _FakeConnection:
    """Delivers a scripted series of JobRemoved signals, one per recv_messages, into the filter's queue."""

    def __init__(self, signals):
        self.signals = deque(signals)
        self.queue = None

    @contextmanager
    def filter(self, rule, queue):
        self.queue = queue
        yield queue

    def recv_messages(self, timeout=None):
        if not self.signals:
            raise TimeoutError
        self.queue.append(_Message(self.signals.popleft()))


def test_run_job_waits_for_its_own_job_and_skips_others(monkeypatch):
    bus = systemd.Systemd.__new__(systemd.Systemd)
    bus.jobs_rule = None
    bus.conn = _FakeConnection([(1, "/org/freedesktop/systemd1/job/1", "other.scope", "failed"),
                                (2, "/org/freedesktop/systemd1/job/2", "docker-abc.scope", "done")])
    monkeypatch.setattr(bus, "call", lambda *args: ("/org/freedesktop/systemd1/job/2",))
    assert bus.run_job("StartTransientUnit", "ssa(sv)a(sa(sv))", "docker-abc.scope", "replace", [], []) == "done"


def test_run_job_sees_a_signal_that_came_before_the_reply(monkeypatch):
    """systemd may finish the job before our read of the reply: the signal is already queued then."""
    bus = systemd.Systemd.__new__(systemd.Systemd)
    bus.jobs_rule = None
    bus.conn = _FakeConnection([])

    def call(*args):
        bus.conn.queue.append(_Message((7, "/job/7", "docker-abc.scope", "done")))
        return ("/job/7",)
    monkeypatch.setattr(bus, "call", call)
    assert bus.run_job("StopUnit", "ss", "docker-abc.scope", "replace") == "done"


def _bundle(tmp_path, cgroups_path: str):
    (tmp_path / "rootfs").mkdir()
    doc = {"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/"}, "root": {"path": "rootfs"},
           "linux": {"namespaces": [{"type": "mount"}], "cgroupsPath": cgroups_path}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return tmp_path


def test_spec_takes_a_unit_only_with_systemd_cgroup(tmp_path):
    bundle = _bundle(tmp_path, "system.slice:docker:abc")
    with pytest.raises(UnsupportedField, match="--systemd-cgroup"):
        specs.load(bundle)
    assert specs.load(bundle, systemd=True).cgroups_path == "system.slice:docker:abc"


def test_spec_refuses_a_cgroupfs_path_with_systemd_cgroup(tmp_path):
    bundle = _bundle(tmp_path, "/docker/abc")
    assert specs.load(bundle).cgroups_path == "/docker/abc"
    with pytest.raises(InvalidValue, match="linux.cgroupsPath"):
        specs.load(bundle, systemd=True)


def test_the_global_option_is_accepted(tmp_path, capsys):
    """--systemd-cgroup is no longer a usage error (exit 2): the verb runs (here: no such container)."""
    assert cli.main(["--root", str(tmp_path), "--systemd-cgroup", "state", "nothing"]) == 1
    assert "container does not exist" in capsys.readouterr().err


class _ReplyingConnection(_FakeConnection):
    """Answers every method call with what `answer(method_call)` makes (a jeepney reply message)."""

    def __init__(self, answer):
        super().__init__([])
        self.answer, self.sent = answer, []

    def send_and_get_reply(self, message, timeout=None):
        self.sent.append(message)
        return self.answer(message)


def _bus(answer) -> systemd.Systemd:
    bus = systemd.Systemd.__new__(systemd.Systemd)
    bus.jobs_rule = None
    bus.manager = DBusAddress(systemd.OBJECT, bus_name=systemd.BUS_NAME, interface=systemd.MANAGER)
    bus.conn = _ReplyingConnection(answer)
    return bus


def test_stop_of_a_unit_systemd_already_collected_is_not_an_error():
    """StopUnit answered with org.freedesktop.systemd1.NoSuchUnit (the scope went when its last process
    did): delete goes on; ResetFailedUnit's own NoSuchUnit is swallowed too. Real jeepney messages."""
    from jeepney import new_error
    bus = _bus(lambda call: new_error(call, "org.freedesktop.systemd1.NoSuchUnit", "s", ("Unit x.scope not loaded.",)))
    bus.stop("x.scope")
    assert [m.header.fields[MEMBER] for m in bus.conn.sent] == ["StopUnit", "ResetFailedUnit"]


def test_a_refused_start_names_systemds_error():
    from jeepney import new_error
    bus = _bus(lambda call: new_error(call, "org.freedesktop.DBus.Error.InvalidArgs", "s", ("Unknown property X",)))
    with pytest.raises(LabkitError, match="systemd refused to start docker-abc.scope: "
                                          "org.freedesktop.DBus.Error.InvalidArgs: Unknown property X"):
        bus.start_scope(Scope("system.slice", "docker-abc.scope"), [])


def test_a_failed_job_is_an_error_and_the_unit_is_reset():
    from jeepney import new_method_return
    def answer(call):
        if call.header.fields[MEMBER] == "StartTransientUnit":
            bus.conn.queue.append(_Message((3, "/job/3", "docker-abc.scope", "failed")))
            return new_method_return(call, "o", ("/job/3",))
        return new_method_return(call)
    bus = _bus(answer)
    with pytest.raises(LabkitError, match="its job ended 'failed'"):
        bus.start_scope(Scope("system.slice", "docker-abc.scope"), [])
    assert bus.conn.sent[-1].header.fields[MEMBER] == "ResetFailedUnit"


def test_the_job_signal_is_recognised_whichever_name_systemd_sends_it_from():
    """The bus delivers JobRemoved with systemd's unique name (":1.2") as its sender, not
    org.freedesktop.systemd1: the rule that sorts incoming messages must still take it."""
    from jeepney import new_signal
    signal = new_signal(DBusAddress(systemd.OBJECT, interface=systemd.MANAGER), "JobRemoved", "uoss",
                        (9, "/org/freedesktop/systemd1/job/9", "docker-abc.scope", "done"))
    signal.header.fields[HeaderFields.sender] = ":1.2"
    assert systemd.jobs_rule().matches(signal)
    assert "sender='org.freedesktop.systemd1'" in systemd.jobs_rule(sender=systemd.BUS_NAME).serialise()
