"""Parsing and validating cgroup limits (no root, nothing created)."""
from __future__ import annotations

import os
import stat

import pytest

from labkit.cgroups import Cgroup, limits
from labkit.cgroups.files import format_cpu_list, parse_cpu_list
from labkit.cgroups.limits import GiB, KiB, MiB, HostFacts, parse
from labkit.errors import InvalidValue

FACTS = HostFacts(mem_total=2 * GiB - 100 * MiB, online_cpus=(0, 1))   # a 2-CPU VM with 1.9G


def p(**given):
    return parse(given, FACTS)


# --- memory ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("64M", 64 * MiB), ("64m", 64 * MiB), ("1G", GiB), ("1g", GiB), ("8192k", 8 * MiB),
    ("8192K", 8 * MiB), ("1.5G", GiB + GiB // 2), ("64MiB", 64 * MiB), ("64MB", 64 * MiB),
    ("64 M", 64 * MiB), ("  32M ", 32 * MiB), (str(8 * MiB), 8 * MiB), (8 * MiB, 8 * MiB),
    ("4M", 4 * MiB), ("2G", 2 * GiB), (f"{4 * MiB}b", 4 * MiB), ("max", "max"), ("MAX", "max"),
])
def test_memory_accepted_forms(value, expected):
    assert p(memory=value).memory == expected


@pytest.mark.parametrize("value", [
    "12Q", "", "M", "64X", "-64M", "64 MB extra", "1e9", "0x100", 1.5, True, None.__class__, [64],
    "3M", 4 * MiB - 1, 0, -1, "2.1G", "3G", 3 * GiB,
])
def test_memory_rejected_with_value_and_range_named(value):
    with pytest.raises(InvalidValue) as err:
        p(memory=value)
    message = str(err.value)
    assert repr(value) in message
    assert "4M" in message and "2G" in message and "64M" in message
    assert err.value.value == value


@pytest.mark.parametrize("value, expected", [("512k", 512 * KiB), ("512K", 512 * KiB), ("1t", 1024 * GiB), ("0", 0), ("7b", 7)])
def test_size_units_are_binary(value, expected):
    assert limits.parse_size("size", value, 0, 2 * 1024 * GiB) == expected


def test_memory_message_names_12Q_and_forms():
    with pytest.raises(InvalidValue, match=r"'12Q'.*512k, 64M, 1\.5G.*physical memory"):
        p(memory="12Q")


def test_memory_max_is_physical_memory_rounded_up_to_a_gib():
    assert FACTS.memory_max == 2 * GiB
    assert HostFacts(mem_total=2 * GiB, online_cpus=(0,)).memory_max == 2 * GiB
    assert HostFacts(mem_total=2 * GiB + 1, online_cpus=(0,)).memory_max == 3 * GiB


def test_real_host_facts_are_sane():
    facts = HostFacts.read()
    assert facts.mem_total > 64 * MiB
    assert len(facts.online_cpus) == os.cpu_count() or len(facts.online_cpus) >= 1


# --- swap -----------------------------------------------------------------------------------------

def test_swap_with_memory():
    assert p(memory="64M", swap="64M").swap == 64 * MiB
    assert p(memory="64M", swap=0).swap == 0


def test_swap_needs_a_memory_limit():
    with pytest.raises(InvalidValue, match="swap.*memory limit"):
        p(swap="64M")
    with pytest.raises(InvalidValue, match="memory limit"):
        p(memory="max", swap="64M")


def test_swap_uses_current_memory_when_changing():
    assert parse({"swap": "1M"}, FACTS, current={"memory": 64 * MiB}).swap == MiB
    with pytest.raises(InvalidValue):
        parse({"swap": "1M"}, FACTS, current={"memory": "max"})
    assert parse({"swap": "max"}, FACTS, current={"memory": "max"}).swap == "max"


def test_swap_rejects_negative():
    with pytest.raises(InvalidValue):
        p(memory="64M", swap=-1)


# --- cpu ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (0.5, 0.5), (1, 1.0), (2, 2.0), ("0.25", 0.25), (0.01, 0.01), ("max", "max"), (1.0, 1.0),
])
def test_cpu_accepted(value, expected):
    assert p(cpu=value).cpu == expected


@pytest.mark.parametrize("value", [0, 0.009, 2.01, 3, -0.5, "half", "", float("nan"), float("inf"), True, [0.5]])
def test_cpu_rejected(value):
    with pytest.raises(InvalidValue) as err:
        p(cpu=value)
    assert "0.01" in str(err.value) and "2 (this host's online CPUs)" in str(err.value)


@pytest.mark.parametrize("cpu, quota", [(0.01, 1000), (0.5, 50000), (1, 100000), (2, 200000), (0.333, 33300)])
def test_cpu_becomes_quota_over_100ms_period(cpu, quota):
    assert limits.CPU_PERIOD_US == 100_000
    assert limits.cpu_quota_us(cpu) == quota
    assert limits.cpu_quota_us(limits.CPU_MIN) >= 1000      # the kernel refuses less (EINVAL)


# --- cpu_weight -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 100, 10000, "50"])
def test_weight_accepted(value):
    assert p(cpu_weight=value).cpu_weight == int(value)


@pytest.mark.parametrize("value", [0, 10001, -1, "max", 1.5, "x", True])
def test_weight_rejected(value):
    with pytest.raises(InvalidValue, match="between 1 and 10000"):
        p(cpu_weight=value)


@pytest.mark.parametrize("weight, shares", [(100, 1024), (1, 10), (10000, 102400), (50, 512), (200, 2048)])
def test_weight_to_v1_shares_keeps_the_defaults_equal(weight, shares):
    assert limits.weight_to_shares(weight) == shares
    assert limits.shares_to_weight(shares) == weight


def test_shares_clamped_into_v1_range():
    assert limits.shares_to_weight(2) == 1
    assert limits.shares_to_weight(262144) == 10000
    assert all(2 <= limits.weight_to_shares(w) <= 262144 for w in (1, 5000, 10000))


# --- pids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(1, 1), (20, 20), ("20", 20), (4194304, 4194304), ("max", "max"), (10.0, 10)])
def test_pids_accepted(value, expected):
    assert p(pids=value).pids == expected


@pytest.mark.parametrize("value", [0, -1, 4194305, "ten", 1.5, True, ""])
def test_pids_rejected(value):
    with pytest.raises(InvalidValue, match="between 1 and 4194304"):
        p(pids=value)


# --- cpuset ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("0", "0"), ("1", "1"), ("0-1", "0-1"), ("0,1", "0-1"), ("1,0", "0-1"), (0, "0"), ([1], "1"), ([0, 1], "0-1"),
    (" 0 ", "0"),
])
def test_cpuset_accepted_and_normalised(value, expected):
    assert p(cpuset=value).cpuset == expected


@pytest.mark.parametrize("value", ["2", "0-2", "1-0", "a", "", "0,,1", "-1", 5, [0, 7], True, 0.5, "0-"])
def test_cpuset_rejected_names_online_cpus(value):
    with pytest.raises(InvalidValue, match="online CPUs: 0-1"):
        p(cpuset=value)


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-2,4,6-7", [0, 1, 2, 4, 6, 7]), ("", [])])
def test_cpu_list_round_trip(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert format_cpu_list(cpus) == text


# --- io -------------------------------------------------------------------------------------------

def _a_block_device():
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        try:
            st = os.stat(path)
        except OSError:
            continue
        devnum = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        if stat.S_ISBLK(st.st_mode) and os.path.exists(f"/sys/dev/block/{devnum}") \
                and not os.path.exists(f"/sys/dev/block/{devnum}/partition"):
            return path, devnum
    pytest.skip("no whole-disk block device in /dev")


def test_io_with_device_path_and_units():
    path, devnum = _a_block_device()
    (rule,) = p(io={"device": path, "write_bps": "1M", "read_bps": 4096}).io
    assert (rule.device, rule.read_bps, rule.write_bps) == (devnum, 4096, MiB)


def test_io_with_major_minor_and_list():
    path, devnum = _a_block_device()
    rules = p(io=[{"device": devnum, "read_bps": "max"}]).io
    assert rules[0].device == devnum and rules[0].read_bps == "max" and rules[0].write_bps is None


@pytest.mark.parametrize("value", [
    {"device": "/dev/null", "write_bps": "1M"},          # a character device
    {"device": "/nonexistent", "write_bps": "1M"},
    {"device": "4095:4095", "write_bps": "1M"},          # no such block device
    {"device": "sda", "write_bps": "1M"},
    {"write_bps": "1M"},                                 # no device
    {"device": "7:0"},                                   # no rate
    {"device": "7:0", "write_bps": None},
    {"device": "7:0", "writes": "1M"},                   # unknown key
    "7:0 1048576", [], 5,
])
def test_io_rejected(value):
    with pytest.raises(InvalidValue):
        p(io=value)


@pytest.mark.parametrize("rate", ["1k", 100, "12Q", -1, 0])
def test_io_rate_rejected(rate):
    path, _ = _a_block_device()
    with pytest.raises(InvalidValue, match="per second"):
        p(io={"device": path, "write_bps": rate})


# --- the whole call ---------------------------------------------------------------------------------

def test_nothing_given_is_empty():
    assert not p()
    assert not p(memory=None, cpu=None)
    assert p(pids=5).given() == {"pids": 5}


def test_unknown_limit_is_named():
    with pytest.raises(InvalidValue, match="'cpus'.*memory, swap, cpu"):
        p(cpus=1)


def test_first_bad_value_stops_everything():
    with pytest.raises(InvalidValue, match="pids"):
        p(memory="64M", cpu=0.5, pids=0)


def test_create_validates_before_touching_the_machine(monkeypatch):
    """Cgroup.create raises InvalidValue before the lab-host guard, claim or mkdir could run."""
    from labkit import cleanup, host

    def forbidden(*args, **kwargs):
        raise AssertionError("touched the machine before validating")

    monkeypatch.setattr(host, "require_lab_host", forbidden)
    monkeypatch.setattr(cleanup, "claim", forbidden)
    monkeypatch.setattr(os, "mkdir", forbidden)
    with pytest.raises(InvalidValue, match="12Q"):
        Cgroup.create(memory="12Q")
    with pytest.raises(InvalidValue, match="cpu"):
        Cgroup.create(memory="64M", cpu=99)
    with pytest.raises(InvalidValue, match="name"):
        Cgroup.create("../escape", memory="64M")
    with pytest.raises(InvalidValue, match="name"):
        Cgroup.create("a/b")


def test_format_size():
    assert limits.format_size(64 * MiB) == "64M"
    assert limits.format_size(GiB + GiB // 2) == "1.5G"
    assert limits.format_size(512) == "512"
