"""The systemd cgroup driver: the container's cgroup is a transient scope unit that systemd makes.

On a host whose init is systemd, systemd owns the cgroup tree. Docker configured with
`native.cgroupdriver=systemd` (Debian 13's and Ubuntu 24.04's docker.io do so) therefore does not
name a directory; it names a unit, `linux.cgroupsPath = "system.slice:docker:<id>"`
(slice:prefix:name), and containerd's shim adds `--systemd-cgroup` to every runtime call. The
runtime then asks systemd over D-Bus, as runc's libcontainer/cgroups/systemd does:

    create   StartTransientUnit("docker-<id>.scope", "replace", properties) with
             Slice=system.slice, PIDs=[the waiting pid 1], Delegate=yes, accounting on, and the limits
             as systemd's own properties (MemoryMax, MemorySwapMax, CPUQuotaPerSecUSec, TasksMax,
             AllowedCPUs) - so that a `systemctl daemon-reload`, which rewrites every unit's cgroup
             files from its properties, keeps them; then wait for the job's JobRemoved signal.
             The scope's directory, /sys/fs/cgroup/system.slice/docker-<id>.scope, is the container's
             cgroup: labkit's v2 backend writes the same limits there and reads its counters.
    update   SetUnitProperties(runtime=true) with the new limits, and the files again
    delete   StopUnit (systemd kills what is left and removes the directory), ResetFailedUnit

Only this module talks D-Bus, with jeepney (a pure-Python D-Bus client), through the system bus's
dbus-daemon, and it imports jeepney only when a container is systemd's: the cgroupfs path pays nothing.
The path parsing and the property building are plain functions (tests/unit/test_runtime_systemd.py).
"""
from __future__ import annotations

import os
from collections import namedtuple

from ..cgroups.files import MAX, parse_cpu_list
from ..errors import InvalidValue, LabkitError, Unsupported

DEFAULT_SLICE = "system.slice"
DEFAULT_PREFIX = "labkit"
SYSTEMD_BOOTED = "/run/systemd/system"       # what sd_booted(3) checks: systemd is PID 1
INFINITY = 2**64 - 1                         # systemd's USEC_INFINITY / CGROUP_LIMIT_MAX: "no limit"
JOB_TIMEOUT = 30.0                           # seconds systemd may take to run the start or stop job
PATH_FORMAT = "slice:prefix:name (Docker's systemd driver: 'system.slice:docker:<id>')"

BUS_NAME, OBJECT, MANAGER = "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"


class Scope(namedtuple("Scope", "slice unit")):
    """A transient scope unit `<prefix>-<name>.scope` in a slice, and where its cgroup lies. (A named
    tuple like the other records on `create`'s path: tests/unit/test_start_imports.py.)"""
    __slots__ = ()

    @property
    def relpath(self) -> str:
        """The scope's directory relative to /sys/fs/cgroup: system.slice/docker-<id>.scope."""
        return f"{expand_slice(self.slice).strip('/')}/{self.unit}".lstrip("/")


def expand_slice(slice_name: str) -> str:
    """systemd nests slices by their dashes: a-b.slice lives at /a.slice/a-b.slice; -.slice is the root."""
    if not slice_name.endswith(".slice") or slice_name == ".slice" or "/" in slice_name:
        raise InvalidValue("slice", slice_name, "a unit name ending in .slice, without '/'")
    stem = slice_name[:-len(".slice")]
    if stem == "-":
        return "/"
    parts = stem.split("-")
    if "" in parts:
        raise InvalidValue("slice", slice_name, "dash-separated non-empty parts (no '--', no leading dash)")
    return "".join(f"/{'-'.join(parts[:i + 1])}.slice" for i in range(len(parts)))


def parse_path(cgroups_path: str, container_id: str) -> Scope:
    """linux.cgroupsPath in the systemd driver's form slice:prefix:name -> the Scope.

    An empty slice is system.slice (runc's default for root); an empty path gives
    system.slice:labkit:<id>. A name ending in .slice asks for a slice unit, which labkit does not
    make (a container's processes live in a scope)."""
    if not cgroups_path:
        return Scope(DEFAULT_SLICE, f"{DEFAULT_PREFIX}-{container_id}.scope")
    parts = cgroups_path.split(":")
    if len(parts) != 3:
        raise InvalidValue("linux.cgroupsPath", cgroups_path, PATH_FORMAT)
    slice_name, prefix, name = parts
    if not name or "/" in name or "/" in prefix:
        raise InvalidValue("linux.cgroupsPath", cgroups_path, PATH_FORMAT + ", a name and no '/'")
    if name.endswith(".slice"):
        raise Unsupported(f"linux.cgroupsPath {cgroups_path!r} names a slice unit: labkit-runtime puts a "
                          "container into a scope unit (slice:prefix:name with a name not ending in .slice)")
    slice_name = slice_name or DEFAULT_SLICE
    expand_slice(slice_name)                 # refuses a malformed slice name now, before anything exists
    return Scope(slice_name, f"{prefix}-{name}.scope" if prefix else f"{name}.scope")


def _cpu_bitmask(cpus: str) -> bytes:
    """AllowedCPUs' D-Bus form: a bitmask, CPU n is bit n % 8 of byte n // 8."""
    numbers = parse_cpu_list(cpus)
    mask = bytearray(max(numbers) // 8 + 1)
    for n in numbers:
        mask[n // 8] |= 1 << (n % 8)
    return bytes(mask)


def resource_properties(limits) -> list[tuple[str, tuple[str, object]]]:
    """labkit Limits -> systemd's resource-control properties, as D-Bus (name, (signature, value)).

    cpu: CPUQuotaPerSecUSec is CPU time per wall-clock second; systemd writes cpu.max as that times
    its period (100 ms unless CPUQuotaPeriodUSec says otherwise, labkit's period too), so 0.5 CPU is
    500000 us/s and becomes "50000 100000". (runc rounds it up to a whole 10 ms; systemd does not
    need that for a scope it writes itself, so the value stays exactly what config.json asked.)"""
    def amount(value) -> int:
        return INFINITY if value == MAX else int(value)

    props: list[tuple[str, tuple[str, object]]] = []
    if limits.memory is not None:
        props.append(("MemoryMax", ("t", amount(limits.memory))))
    if limits.swap is not None:
        props.append(("MemorySwapMax", ("t", amount(limits.swap))))
    if limits.cpu is not None:
        props.append(("CPUQuotaPerSecUSec", ("t", INFINITY if limits.cpu == MAX else round(limits.cpu * 1_000_000))))
    if limits.cpu_weight is not None:
        props.append(("CPUWeight", ("t", int(limits.cpu_weight))))
    if limits.pids is not None:
        props.append(("TasksMax", ("t", amount(limits.pids))))
    if limits.cpuset is not None:
        props.append(("AllowedCPUs", ("ay", _cpu_bitmask(limits.cpuset))))
    if limits.io:
        raise Unsupported("io limits: labkit-runtime's systemd driver does not pass IO limits to systemd")
    return props


def scope_properties(scope: Scope, pid: int, limits, description: str) -> list[tuple[str, tuple[str, object]]]:
    """Everything StartTransientUnit gets: where the scope goes, who is in it, and its limits."""
    return [("Description", ("s", description)),
            ("Slice", ("s", scope.slice)),
            ("PIDs", ("au", [pid])),
            # the container's own subtree is the runtime's (and the container's, with a cgroup ns)
            ("Delegate", ("b", True)),
            ("MemoryAccounting", ("b", True)), ("CPUAccounting", ("b", True)),
            ("IOAccounting", ("b", True)), ("TasksAccounting", ("b", True)),
            # no ordering against shutdown.target & co.: a container is not a system service
            ("DefaultDependencies", ("b", False)),
            *resource_properties(limits)]


def require_systemd() -> None:
    if not os.path.isdir(SYSTEMD_BOOTED):
        raise Unsupported(f"--systemd-cgroup: systemd is not this machine's init ({SYSTEMD_BOOTED} is "
                          "missing), so no systemd can make the container's scope; use Docker's "
                          "native.cgroupdriver=cgroupfs")


# --- D-Bus: the calls runc's driver makes, through jeepney ------------------------------------------------

class Systemd:
    """A connection to systemd on the system bus (used as a context manager)."""

    def __init__(self):
        from jeepney import DBusAddress, message_bus
        from jeepney.io.blocking import open_dbus_connection
        try:
            self.conn = open_dbus_connection("SYSTEM")
        except OSError as exc:
            raise Unsupported(f"--systemd-cgroup: cannot reach the D-Bus system bus ({exc}); is dbus "
                              "running?") from None
        self.manager = DBusAddress(OBJECT, bus_name=BUS_NAME, interface=MANAGER)
        # systemd broadcasts JobRemoved for the jobs this connection started; the bus routes it here
        # once we ask for it (sender: systemd's well-known name, which the bus resolves). The signal
        # arrives from systemd's unique name (":1.2"), so the rule that sorts incoming messages here
        # names no sender.
        self.jobs_rule = jobs_rule()
        self._call_bus(message_bus.AddMatch(jobs_rule(sender=BUS_NAME)))

    def __enter__(self) -> "Systemd":
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()

    def _call_bus(self, message):
        """The reply's body; an error reply raises jeepney's DBusErrorResponse (its .name says which)."""
        from jeepney.wrappers import unwrap_msg
        return unwrap_msg(self.conn.send_and_get_reply(message, timeout=JOB_TIMEOUT))

    def call(self, method: str, signature: str, *args):
        from jeepney import new_method_call
        return self._call_bus(new_method_call(self.manager, method, signature, args))

    def run_job(self, method: str, signature: str, *args) -> str:
        """Call a Manager method that queues a job and wait for its JobRemoved: "done", "failed" ..."""
        import time
        from collections import deque
        removed: deque = deque()
        deadline = time.monotonic() + JOB_TIMEOUT
        with self.conn.filter(self.jobs_rule, queue=removed):     # also the signals before the reply
            job = self.call(method, signature, *args)[0]
            while True:
                while removed:
                    _id, path, _unit, result = removed.popleft().body
                    if path == job:
                        return result
                if time.monotonic() > deadline:
                    raise LabkitError(f"systemd did not finish {method} {args[0]} within {JOB_TIMEOUT:g} s")
                try:
                    self.conn.recv_messages(timeout=max(deadline - time.monotonic(), 0))
                except TimeoutError:
                    pass

    def start_scope(self, scope: Scope, properties) -> None:
        from jeepney import DBusErrorResponse
        try:
            result = self.run_job("StartTransientUnit", "ssa(sv)a(sa(sv))", scope.unit, "replace", properties, [])
        except DBusErrorResponse as exc:                       # systemd's refusal, named
            raise LabkitError(f"systemd refused to start {scope.unit}: {_dbus_error(exc)}") from None
        if result != "done":
            self.reset_failed(scope.unit)
            raise LabkitError(f"systemd could not start {scope.unit} in {scope.slice}: its job ended {result!r}")

    def stop(self, unit: str) -> None:
        """Stop the unit and forget it; a unit systemd no longer knows (the container's processes all
        exited and systemd collected the empty scope) is already where delete wants it."""
        from jeepney import DBusErrorResponse
        try:
            self.run_job("StopUnit", "ss", unit, "replace")
        except DBusErrorResponse as exc:
            if "NoSuchUnit" not in _dbus_error(exc):
                raise LabkitError(f"systemd refused to stop {unit}: {_dbus_error(exc)}") from None
        self.reset_failed(unit)

    def reset_failed(self, unit: str) -> None:
        from jeepney import DBusErrorResponse
        try:
            self.call("ResetFailedUnit", "s", unit)
        except DBusErrorResponse:          # not failed, or already gone: nothing to forget
            pass

    def set_properties(self, unit: str, properties) -> None:
        from jeepney import DBusErrorResponse
        try:
            self.call("SetUnitProperties", "sba(sv)", unit, True, properties)
        except DBusErrorResponse as exc:
            raise LabkitError(f"systemd refused the new limits of {unit}: {_dbus_error(exc)}") from None


def jobs_rule(sender: str | None = None):
    """The JobRemoved signals of systemd's manager object (a jeepney MatchRule)."""
    from jeepney import MatchRule
    return MatchRule(type="signal", sender=sender, interface=MANAGER, member="JobRemoved", path=OBJECT)


def _dbus_error(exc) -> str:
    """"org.freedesktop.systemd1.NoSuchUnit: Unit docker-x.scope not loaded." from a DBusErrorResponse."""
    return f"{exc.name}: {exc.data[0] if exc.data else ''}".rstrip(": ")
