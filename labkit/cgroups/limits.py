"""Resource limits as a learner writes them, parsed and validated once - before anything is created.

    parse({"memory": "64M", "cpu": 0.5, "pids": 20})  ->  Limits(memory=67108864, cpu=0.5, pids=20)

Every limit is checked against what the kernel accepts *and* what makes sense on this host, and a
bad one raises InvalidValue naming the value and the accepted range. Both backends (v1, v2) take a
validated `Limits` and only translate it into their files, so the rules live in one place:

    memory      bytes: an int, or a number with a binary unit: "512k", "64M", "1.5G" (k = 1024).
                At least 4M (below that not even a shell starts), at most this host's physical
                memory rounded up to a whole GiB (a bigger limit would not limit anything).
    swap        bytes a cgroup may swap out beyond its memory limit (v2's memory.swap.max meaning;
                on v1 labkit writes memory + swap to memory.memsw.limit_in_bytes). Needs a memory limit.
    cpu         a fraction of one CPU, 0.01 .. number of online CPUs (0.5 = half a CPU, 2 = two).
                Written as quota/period with a 100000 us period: 0.01 -> 1000 us, the kernel's minimum.
    cpu_weight  1 .. 10000 (v2 cpu.weight, default 100): a share when CPUs are contended, not a cap.
    pids        1 .. 4194304 (the kernel's PID_MAX_LIMIT) processes and threads.
    cpuset      CPUs to run on: "0", "0-1", "0,1" (or an int, or a list of ints); only online CPUs.
    io          {"device": "/dev/loop0" or "7:0", "read_bps": "1M", "write_bps": "512k"} or a list of
                such dicts; bytes per second with units, at least 4k/s. A whole disk, not a partition.

Any of them may be "max": remove that limit (useful with `Cgroup.set` while processes run).
"""
from __future__ import annotations

import math
import os
import re
import stat
from collections import namedtuple

from ..errors import InvalidValue
from .files import MAX, format_cpu_list, parse_cpu_list

KiB, MiB, GiB, TiB = 1024, 1024 ** 2, 1024 ** 3, 1024 ** 4

MEMORY_MIN = 4 * MiB
CPU_PERIOD_US = 100_000          # the kernel's default cfs period; quota = cpu * period
CPU_MIN = 0.01                   # 1000 us of quota per period: the kernel refuses less (EINVAL)
WEIGHT_MIN, WEIGHT_MAX = 1, 10_000
PIDS_MAX = 4_194_304             # PID_MAX_LIMIT on 64-bit kernels
IO_BPS_MIN = 4 * KiB             # one page per second; slower would stall a single write for seconds
IO_BPS_MAX = 1024 * TiB

NAMES = ("memory", "swap", "cpu", "cpu_weight", "pids", "cpuset", "io")


# --- facts about this host the ranges depend on -------------------------------------------------------

class HostFacts(namedtuple("HostFacts", "mem_total online_cpus")):
    """Bytes of physical memory (MemTotal), and the CPUs the kernel may schedule on
    (/sys/devices/system/cpu/online)."""
    __slots__ = ()

    @classmethod
    def read(cls) -> "HostFacts":
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        with open("/sys/devices/system/cpu/online") as f:
            cpus = parse_cpu_list(f.read())
        return cls(kib * KiB, tuple(cpus))

    @property
    def memory_max(self) -> int:
        """Physical memory rounded up to a whole GiB, so '2G' works on a VM whose MemTotal is 1.9G."""
        return math.ceil(self.mem_total / GiB) * GiB


# --- the validated result -----------------------------------------------------------------------------

class IoLimit(namedtuple("IoLimit", "device read_bps write_bps given", defaults=(None, None, ""))):
    """device "MAJ:MIN"; read_bps and write_bps in bytes/s, MAX to remove, None to leave alone;
    given: what the user wrote for the device, for messages."""
    __slots__ = ()


class Limits(namedtuple("Limits", NAMES, defaults=(None,) * len(NAMES))):
    """Validated limits; None means "not asked for, leave alone", MAX ("max") means "no limit".
    memory, swap: bytes; cpu: a fraction of one CPU; cpu_weight; pids; cpuset: "0-1"; io: IoLimits.
    (Named tuples, not dataclasses: importing dataclasses costs every container start 5 ms.)"""
    __slots__ = ()

    def given(self) -> dict:
        return {name: value for name, value in self._asdict().items() if value is not None}

    def __bool__(self) -> bool:
        return bool(self.given())


def cpu_quota_us(cpu: float) -> int:
    """A fraction of one CPU as cfs quota for the 100000 us period: 0.5 -> 50000."""
    return int(round(cpu * CPU_PERIOD_US))


def weight_to_shares(weight: int) -> int:
    """v2 cpu.weight -> v1 cpu.shares, the way the kernel relates them (weight 100 == 1024 shares).

    The scheduler stores one number; v2's cpu.weight is that number scaled so that the default
    weight 100 equals the default v1 share 1024. runc uses a different curve that maps the whole
    ranges onto each other ([2, 262144] -> [1, 10000]) and so makes the defaults disagree (1024
    shares -> weight 39); we keep the kernel's linear relation so defaults stay defaults.
    Result clamped to v1's range [2, 262144].
    """
    return max(2, min(262_144, round(weight * 1024 / 100)))


def shares_to_weight(shares: int) -> int:
    return max(WEIGHT_MIN, min(WEIGHT_MAX, round(shares * 100 / 1024)))


# --- parsing ---------------------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?$", re.IGNORECASE)
_UNITS = {None: 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}
_SIZE_FORMS = "an integer number of bytes or a number with a binary unit (512k, 64M, 1.5G; k = 1024)"


def format_size(n: int) -> str:
    """67108864 -> '64M'; 1610612736 -> '1.5G' (binary units, as the parser accepts them)."""
    for unit, size in (("T", TiB), ("G", GiB), ("M", MiB), ("k", KiB)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return str(n)


def parse_size(what: str, value, low: int, high: int, range_note: str = "") -> int | str:
    """Bytes from an int or '64M'-style string, within [low, high]; 'max' passes through."""
    accepted = (f"{_SIZE_FORMS}, between {format_size(low)} and {format_size(high)}"
                f"{range_note}, or 'max' for no limit")
    if isinstance(value, str) and value.strip().lower() == MAX:
        return MAX
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidValue(what, value, accepted)
    if isinstance(value, int):
        n = value
    else:
        match = _SIZE.match(value.strip())
        if not match:
            raise InvalidValue(what, value, accepted)
        number, unit = match.groups()
        n = int(float(number) * _UNITS[unit.lower() if unit else None])
    if not low <= n <= high:
        raise InvalidValue(what, value, accepted)
    return n


def _parse_number(what: str, value, accepted: str, kind=float):
    if isinstance(value, str) and value.strip().lower() == MAX:
        return MAX
    if isinstance(value, bool):
        raise InvalidValue(what, value, accepted)
    if isinstance(value, str):
        try:
            value_n = kind(value.strip())
        except ValueError:
            raise InvalidValue(what, value, accepted) from None
    elif isinstance(value, (int, float)):
        value_n = value
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise InvalidValue(what, value, accepted)
            value_n = int(value)
    else:
        raise InvalidValue(what, value, accepted)
    if isinstance(value_n, float) and not math.isfinite(value_n):
        raise InvalidValue(what, value, accepted)
    return value_n


def parse_cpu(value, facts: HostFacts) -> float | str:
    n = len(facts.online_cpus)
    accepted = (f"a fraction of one CPU between {CPU_MIN} and {n} (this host's online CPUs), "
                f"e.g. 0.5 for half a CPU, or 'max' for no limit")
    cpu = _parse_number("cpu limit", value, accepted)
    if cpu != MAX and not CPU_MIN <= cpu <= n:
        raise InvalidValue("cpu limit", value, accepted)
    return cpu if cpu == MAX else float(cpu)


def parse_pids(value) -> int | str:
    accepted = f"an integer between 1 and {PIDS_MAX}, or 'max' for no limit"
    pids = _parse_number("pids limit", value, accepted, int)
    if pids != MAX and not 1 <= pids <= PIDS_MAX:
        raise InvalidValue("pids limit", value, accepted)
    return pids


def parse_cpu_weight(value) -> int:
    accepted = f"an integer between {WEIGHT_MIN} and {WEIGHT_MAX} (100 is the default share)"
    weight = _parse_number("cpu_weight", value, accepted, int)
    if weight == MAX or not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        raise InvalidValue("cpu_weight", value, accepted)
    return weight


def parse_cpuset(value, facts: HostFacts) -> str:
    online = format_cpu_list(facts.online_cpus)
    accepted = f"a list of online CPUs like '0', '0-1' or '0,1' (this host's online CPUs: {online})"
    if isinstance(value, bool):
        raise InvalidValue("cpuset", value, accepted)
    if isinstance(value, int):
        cpus = [value]
    elif isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(c, int) and not isinstance(c, bool) for c in value):
        cpus = sorted(value)
    elif isinstance(value, str):
        try:
            cpus = parse_cpu_list(value)
        except ValueError:
            raise InvalidValue("cpuset", value, accepted) from None
    else:
        raise InvalidValue("cpuset", value, accepted)
    if not cpus or not set(cpus) <= set(facts.online_cpus):
        raise InvalidValue("cpuset", value, accepted)
    return format_cpu_list(cpus)


_DEVNUM = re.compile(r"^(\d+):(\d+)$")


def resolve_device(value) -> str:
    """'/dev/loop0' or '7:0' -> '7:0', checked to be a whole block device (not a partition)."""
    accepted = "a block device path like '/dev/loop0' or its 'MAJOR:MINOR' like '7:0', a whole disk (not a partition)"
    if not isinstance(value, str) or not value:
        raise InvalidValue("io device", value, accepted)
    match = _DEVNUM.match(value)
    if match:
        devnum = f"{int(match[1])}:{int(match[2])}"
    else:
        try:
            st = os.stat(value)
        except OSError:
            raise InvalidValue("io device", value, accepted + "; it does not exist") from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidValue("io device", value, accepted + "; it is not a block device")
        devnum = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    sysfs = f"/sys/dev/block/{devnum}"
    if not os.path.exists(sysfs):
        raise InvalidValue("io device", value, accepted + f"; no block device {devnum} exists")
    if os.path.exists(f"{sysfs}/partition"):
        raise InvalidValue("io device", value, accepted + "; it is a partition - the kernel throttles whole disks")
    return devnum


def parse_bps(what: str, value) -> int | str:
    return parse_size(what, value, IO_BPS_MIN, IO_BPS_MAX, " per second")


def parse_io(value) -> tuple[IoLimit, ...]:
    accepted = ("a dict {'device': '/dev/loop0' or '7:0', 'read_bps': '1M', 'write_bps': '512k'} "
                "(at least one of read_bps, write_bps), or a list of such dicts")
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidValue("io limit", value, accepted)
    result = []
    for item in items:
        if not isinstance(item, dict) or "device" not in item or set(item) - {"device", "read_bps", "write_bps"} \
                or not ({"read_bps", "write_bps"} & set(item)):
            raise InvalidValue("io limit", item, accepted)
        device = resolve_device(item["device"])
        read = parse_bps("io read_bps", item["read_bps"]) if item.get("read_bps") is not None else None
        write = parse_bps("io write_bps", item["write_bps"]) if item.get("write_bps") is not None else None
        if read is None and write is None:
            raise InvalidValue("io limit", item, accepted)
        result.append(IoLimit(device, read, write, str(item["device"])))
    return tuple(result)


def parse(given: dict, facts: HostFacts | None = None, current: dict | None = None) -> Limits:
    """Validate every limit in `given` (None values are skipped); raise InvalidValue on the first bad one.

    `current` is what the cgroup has now (Cgroup.limits()), so that rules that tie two limits together
    (swap needs a memory limit) are checked against the result of a change, not just the change.
    """
    unknown = [key for key in given if key not in NAMES]
    if unknown:
        raise InvalidValue("limit", unknown[0], "one of " + ", ".join(NAMES))
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return Limits()
    facts = facts or HostFacts.read()
    mem_note = (f" ({format_size(facts.memory_max)} = this host's physical memory, "
                f"{format_size(facts.mem_total)}, rounded up to a whole GiB)")
    parsed: dict = {}
    if "memory" in given:
        parsed["memory"] = parse_size("memory limit", given["memory"], MEMORY_MIN, facts.memory_max, mem_note)
    if "swap" in given:
        parsed["swap"] = parse_size("swap limit", given["swap"], 0, facts.memory_max, mem_note)
    if "cpu" in given:
        parsed["cpu"] = parse_cpu(given["cpu"], facts)
    if "cpu_weight" in given:
        parsed["cpu_weight"] = parse_cpu_weight(given["cpu_weight"])
    if "pids" in given:
        parsed["pids"] = parse_pids(given["pids"])
    if "cpuset" in given:
        parsed["cpuset"] = parse_cpuset(given["cpuset"], facts)
    if "io" in given:
        parsed["io"] = parse_io(given["io"])
    if "swap" in parsed and parsed["swap"] != MAX:
        memory = parsed.get("memory", (current or {}).get("memory", MAX))
        if memory in (None, MAX):
            raise InvalidValue("swap limit", given["swap"],
                               "a memory limit as well: swap is what a cgroup may swap out beyond its "
                               "memory limit (set memory='64M', swap='64M')")
    return Limits(**parsed)
