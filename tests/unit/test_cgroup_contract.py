"""Both cgroup backends honour one contract (psutil-style), and read/write the kernel's formats right.

No root: the v1 and v2 backends are pointed at fake cgroupfs trees in tmp_path, filled with what the
kernel's files contain. (The real kernel is exercised by tests/integration/test_cgroups.py, on v1 here
and on pure v2 inside the microVM.)
"""
from __future__ import annotations

import inspect
import os

import pytest

import labkit.cgroups as cgroups
from labkit import host
from labkit.cgroups import Cgroup, files, limits
from labkit.cgroups.base import STAT_KEYS, BaseCgroup
from labkit.cgroups.limits import MiB, HostFacts, parse
from labkit.cgroups.v1 import V1Cgroup
from labkit.cgroups.v2 import V2Cgroup

FACTS = HostFacts(mem_total=8 * 1024 * MiB, online_cpus=(0, 1, 2, 3))


def public(cls) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(cls, name)) for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))}


# --- the contract -------------------------------------------------------------------------------------

def test_both_backends_expose_the_same_methods_with_the_same_signatures():
    v1, v2 = public(V1Cgroup), public(V2Cgroup)
    assert set(v1) == set(v2)
    for name in v1:
        assert v1[name] == v2[name], name
    assert set(public(BaseCgroup)) == set(v1)         # no backend-only public extras
    assert V1Cgroup.version == "v1" and V2Cgroup.version == "v2"


def test_the_language_holds_the_backends_to_the_interface():
    assert {"create", "apply", "add", "limits", "stats", "kill", "path", "dirs", "available_controllers",
            "find_labkit"} <= BaseCgroup.__abstractmethods__
    assert not V1Cgroup.__abstractmethods__ and not V2Cgroup.__abstractmethods__
    with pytest.raises(TypeError, match="abstract"):
        BaseCgroup("labkit-x")

    class Incomplete(V2Cgroup):      # a backend that forgot one method cannot even be made
        kill = BaseCgroup.kill
    with pytest.raises(TypeError, match="kill"):
        Incomplete("labkit-x")


def test_public_api_names():
    for name in ("create", "open", "add", "set", "limits", "stats", "procs", "oom_kills", "kill", "delete",
                 "path", "exists", "__enter__", "__exit__"):
        assert callable(getattr(Cgroup, name)), name
    assert isinstance(Cgroup.name, property)
    params = inspect.signature(Cgroup.create).parameters
    assert list(params) == ["name", "memory", "cpu", "pids", "cpuset", "io", "cpu_weight", "swap"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(params)[1:])
    for name in ("backend_name", "backend", "available_controllers", "find_leftovers", "remove_leftover"):
        assert callable(getattr(cgroups, name)), name
    assert "labkit.cgroups" in __import__("labkit.cleanup", fromlist=["x"]).SWEEP_MODULES


@pytest.mark.parametrize("mode, backend", [("v2", V2Cgroup), ("hybrid", V1Cgroup), ("v1", V1Cgroup)])
def test_backend_is_picked_from_the_host_mode(monkeypatch, mode, backend):
    cgroups.backend.cache_clear()
    monkeypatch.setattr(host, "cgroup_mode", lambda root="/sys/fs/cgroup": mode)
    try:
        assert cgroups.backend() is backend
        assert cgroups.backend_name() == backend.version
    finally:
        cgroups.backend.cache_clear()


def test_this_host_backend_matches_what_the_kernel_mounted():
    """Read without labkit (coreutils' statfs): v2 only where /sys/fs/cgroup itself is cgroup2."""
    import subprocess
    fstype = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True,
                            text=True).stdout.strip()
    assert fstype, "stat -f could not read /sys/fs/cgroup"
    assert cgroups.backend_name() == ("v2" if fstype == "cgroup2fs" else "v1"), fstype


# --- parsers -----------------------------------------------------------------------------------------

def test_pressure_lines():
    text = ("some avg10=72.11 avg60=43.60 avg300=22.35 total=4986194038\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert files.parse_pressure(text) == {
        "some": {"avg10": 72.11, "avg60": 43.60, "avg300": 22.35, "total": 4986194038},
        "full": {"avg10": 0.0, "avg60": 0.0, "avg300": 0.0, "total": 0}}


def test_flat_and_nested_keyed():
    assert files.parse_flat_keyed("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n") == \
        {"low": 0, "high": 0, "max": 3, "oom": 1, "oom_kill": 1}
    assert files.parse_nested_keyed("7:0 rbytes=4096 wbytes=1048576 rios=1 wios=16 dbytes=0 dios=0\n"
                                    "8:0 rbytes=1 wbytes=2\n") == {
        "7:0": {"rbytes": 4096, "wbytes": 1048576, "rios": 1, "wios": 16, "dbytes": 0, "dios": 0},
        "8:0": {"rbytes": 1, "wbytes": 2}}
    assert files.parse_nested_keyed("7:0 rbps=max wbps=1048576 riops=max wiops=max") == \
        {"7:0": {"rbps": "max", "wbps": 1048576, "riops": "max", "wiops": "max"}}


def test_cpu_max_and_blkio():
    assert files.parse_cpu_max("max 100000\n") == ("max", 100000)
    assert files.parse_cpu_max("50000 100000\n") == (50000, 100000)
    text = "7:0 Read 4096\n7:0 Write 1048576\n7:0 Sync 0\n7:0 Total 1052672\n8:0 Write 10\nTotal 1052682\n"
    assert files.parse_blkio_bytes(text) == {"Read": 4096, "Write": 1048586, "Sync": 0, "Total": 1052672}
    assert files.parse_device_values("7:0 1048576\n8:16 4096\n") == {"7:0": 1048576, "8:16": 4096}


# --- a fake v2 tree ---------------------------------------------------------------------------------------

V2_FILES = {
    "memory.current": "3457024\n",
    "memory.peak": "33554432\n",
    "memory.max": "33554432\n",
    "memory.swap.max": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 42\noom 2\noom_kill 2\noom_group_kill 0\n",
    "cpu.stat": "usage_usec 201234\nuser_usec 200000\nsystem_usec 1234\nnr_periods 11\n"
                "nr_throttled 9\nthrottled_usec 712345\nnr_bursts 0\nburst_usec 0\n",
    "cpu.max": "20000 100000\n",
    "cpu.weight": "100\n",
    "pids.current": "5\n",
    "pids.max": "5\n",
    "pids.events": "max 15\n",
    "cpuset.cpus": "\n",
    "cpuset.cpus.effective": "0-3\n",
    "io.stat": "7:0 rbytes=4096 wbytes=1572864 rios=1 wios=24 dbytes=0 dios=0\n"
               "8:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    "io.max": "7:0 rbps=max wbps=1048576 riops=max wiops=max\n",
    "cgroup.procs": "",
}


def fake_tree(root, relpath, contents):
    directory = root / relpath
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (directory / name).write_text(text)
    return directory


def test_v2_stats_from_kernel_files(tmp_path):
    fake_tree(tmp_path, "labkit-x", V2_FILES)
    stats = V2Cgroup("labkit-x", root=str(tmp_path)).stats()
    assert set(stats) == set(STAT_KEYS)
    assert stats == {"memory_current": 3457024, "memory_peak": 33554432, "oom_kills": 2,
                     "cpu_usage_usec": 201234, "throttled_periods": 9, "throttled_usec": 712345,
                     "nr_periods": 11, "pids_current": 5, "pids_events_max": 15,
                     "io_read_bytes": 4196, "io_write_bytes": 1572864}


def test_v2_stats_none_where_controllers_are_missing(tmp_path):
    fake_tree(tmp_path, "labkit-x", {"cgroup.procs": "", "cpu.stat": "usage_usec 5\nuser_usec 5\nsystem_usec 0\n"})
    stats = V2Cgroup("labkit-x", root=str(tmp_path)).stats()
    assert stats["cpu_usage_usec"] == 5
    assert all(stats[k] is None for k in STAT_KEYS if k != "cpu_usage_usec")


def test_v2_limits_read_back(tmp_path):
    fake_tree(tmp_path, "labkit-x", V2_FILES)
    assert V2Cgroup("labkit-x", root=str(tmp_path)).limits() == {
        "memory": 32 * MiB, "swap": 0, "cpu": 0.2, "cpu_weight": 100, "pids": 5, "cpuset": "0-3",
        "io": [{"device": "7:0", "read_bps": "max", "write_bps": 1048576}]}
    fake_tree(tmp_path, "labkit-y", {"memory.max": "max\n", "cpu.max": "max 100000\n", "pids.max": "max\n",
                                     "cpuset.cpus": "1\n"})
    assert V2Cgroup("labkit-y", root=str(tmp_path)).limits() == {
        "memory": "max", "cpu": "max", "pids": "max", "cpuset": "1"}


def test_v2_procs_are_recursive(tmp_path):
    fake_tree(tmp_path, "labkit-x", {"cgroup.procs": "10\n11\n"})
    fake_tree(tmp_path, "labkit-x/sub", {"cgroup.procs": "12\n"})
    fake_tree(tmp_path, "labkit-x/sub/deeper", {"cgroup.procs": "13\n10\n"})
    assert V2Cgroup("labkit-x", root=str(tmp_path)).procs() == [10, 11, 12, 13]


@pytest.fixture
def recorded(monkeypatch):
    """files.write recorded (and applied to the fake file, as the kernel would store it)."""
    writes = []

    def write(path, value, hints=None):
        writes.append((os.path.basename(path), str(value)))
        with open(path, "w") as f:
            f.write(f"{value}\n")

    monkeypatch.setattr(files, "write", write)
    # the io limits name loop devices 7:0 and 7:1: present on a machine that has loaded `loop`, not on
    # every machine (a fresh Debian 13 guest has none) - the formats written are what is under test
    real_exists = limits.os.path.exists
    monkeypatch.setattr(limits.os.path, "exists", lambda p: True if str(p) in (
        "/sys/dev/block/7:0", "/sys/dev/block/7:1") else real_exists(p))
    return writes


def test_v2_writes_limits_in_the_kernels_formats(tmp_path, recorded):
    fake_tree(tmp_path, "labkit-x", {name: "" for name in V2_FILES})
    limits = parse({"memory": "64M", "swap": 0, "cpu": 0.5, "cpu_weight": 200, "pids": 20, "cpuset": "1-2",
                    "io": [{"device": "7:0", "write_bps": "1M"}, {"device": "7:1", "read_bps": "max"}]}, FACTS)
    V2Cgroup("labkit-x", root=str(tmp_path)).apply(limits)
    assert recorded == [("cpuset.cpus", "1-2"), ("memory.max", str(64 * MiB)), ("memory.swap.max", "0"),
                        ("cpu.max", "50000 100000"), ("cpu.weight", "200"), ("pids.max", "20"),
                        ("io.max", "7:0 wbps=1048576"), ("io.max", "7:1 rbps=max")]
    recorded.clear()
    V2Cgroup("labkit-x", root=str(tmp_path)).apply(parse({"cpu": "max", "memory": "max"}, FACTS))
    assert recorded == [("memory.max", "max"), ("cpu.max", "max 100000")]


def test_v2_create_enables_only_missing_controllers_and_never_disables(tmp_path, recorded):
    fake_tree(tmp_path, "", {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
                             "cgroup.subtree_control": "memory hugetlb\n"})
    cg = V2Cgroup("labkit-x", root=str(tmp_path))
    cg.create(parse({}, FACTS))
    control = [value for name, value in recorded if name == "cgroup.subtree_control"]
    assert sorted(control) == ["+cpu", "+cpuset", "+io", "+pids"]       # memory was on already
    assert not any(value.startswith("-") for value in control)
    assert os.path.isdir(tmp_path / "labkit-x")
    assert cg.available_controllers(str(tmp_path)) == ["cpu", "cpuset", "io", "memory", "pids"]


def test_v2_create_under_a_missing_parent_is_refused(tmp_path):
    from labkit.errors import NotFound
    with pytest.raises(NotFound, match="LABKIT_CGROUP_PARENT"):
        V2Cgroup("nowhere/labkit-x", root=str(tmp_path)).create(parse({}, FACTS))


def test_v2_path_takes_v1_names_too(tmp_path):
    cg = V2Cgroup("lab/labkit-x", root=str(tmp_path))
    assert cg.path("memory") == cg.path("blkio") == cg.path("io") == cg.path("cpuacct") == str(tmp_path / "lab/labkit-x")
    from labkit.errors import InvalidValue
    with pytest.raises(InvalidValue):
        cg.path("nonsense")


def test_find_labkit_prunes_at_our_cgroups_and_honours_the_parent(tmp_path):
    for rel in ("labkit-a/sub", "system.slice/labkit-b", "process_api/123", "other", "labkit-lab/labkit-c"):
        (tmp_path / rel).mkdir(parents=True)
    assert V2Cgroup.find_labkit(str(tmp_path)) == ["labkit-a", "labkit-lab", "system.slice/labkit-b"]
    assert V2Cgroup.find_labkit(str(tmp_path), keep="labkit-lab") == [
        "labkit-a", "labkit-lab/labkit-c", "system.slice/labkit-b"]


# --- a fake v1 tree ---------------------------------------------------------------------------------------

V1_FILES = {
    "memory": {"memory.usage_in_bytes": "3457024\n", "memory.max_usage_in_bytes": "33554432\n",
               "memory.limit_in_bytes": "33554432\n", "memory.memsw.limit_in_bytes": "67108864\n",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"},
    "cpu": {"cpu.stat": "nr_periods 11\nnr_throttled 9\nthrottled_time 712345678\nnr_bursts 0\nburst_time 0\n",
            "cpu.cfs_quota_us": "20000\n", "cpu.cfs_period_us": "100000\n", "cpu.shares": "1024\n"},
    "cpuacct": {"cpuacct.usage": "201234567\n"},
    "pids": {"pids.current": "5\n", "pids.max": "max\n", "pids.events": "max 15\n"},
    "cpuset": {"cpuset.cpus": "0-1\n", "cpuset.mems": "0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
    "blkio": {"blkio.throttle.io_service_bytes_recursive":
              "7:0 Read 4096\n7:0 Write 1572864\n7:0 Sync 1576960\n7:0 Async 0\n7:0 Discard 0\n"
              "7:0 Total 1576960\nTotal 1576960\n",
              "blkio.throttle.read_bps_device": "", "blkio.throttle.write_bps_device": "7:0 1048576\n"},
}


def v1_tree(root, relpath="labkit-x"):
    for controller, contents in V1_FILES.items():
        fake_tree(root, f"{controller}/{relpath}", {**contents, "cgroup.procs": ""})
    return V1Cgroup(relpath, root=str(root))


def test_v1_stats_from_kernel_files(tmp_path):
    stats = v1_tree(tmp_path).stats()
    assert stats == {"memory_current": 3457024, "memory_peak": 33554432, "oom_kills": 3,
                     "cpu_usage_usec": 201234, "throttled_periods": 9, "throttled_usec": 712345,
                     "nr_periods": 11, "pids_current": 5, "pids_events_max": 15,
                     "io_read_bytes": 4096, "io_write_bytes": 1572864}


def test_v1_limits_read_back(tmp_path):
    assert v1_tree(tmp_path).limits() == {
        "memory": 32 * MiB, "swap": 32 * MiB, "cpu": 0.2, "cpu_weight": 100, "pids": "max", "cpuset": "0-1",
        "io": [{"device": "7:0", "read_bps": "max", "write_bps": 1048576}]}


def test_v1_writes_limits_in_the_kernels_formats(tmp_path, recorded):
    cg = v1_tree(tmp_path)
    cg.apply(parse({"cpu": 0.01, "cpu_weight": 50, "pids": 7, "cpuset": "1",
                    "io": {"device": "7:0", "write_bps": "max", "read_bps": "2M"}}, FACTS))
    assert recorded == [("cpuset.cpus", "1"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "1000"),
                        ("cpu.shares", "512"), ("pids.max", "7"),
                        ("blkio.throttle.read_bps_device", f"7:0 {2 * MiB}"),
                        ("blkio.throttle.write_bps_device", "7:0 0")]


def test_v1_memory_and_swap_are_written_in_an_order_the_kernel_accepts(tmp_path, recorded):
    cg = v1_tree(tmp_path)                      # memory 32M, memsw 64M (swap 32M)
    cg.apply(parse({"memory": "256M", "swap": 0}, FACTS))
    assert recorded == [("memory.memsw.limit_in_bytes", str(256 * MiB)),       # grows: memsw first
                        ("memory.limit_in_bytes", str(256 * MiB))]
    recorded.clear()
    cg.apply(parse({"memory": "64M"}, FACTS))                                 # shrinks, keeps swap 0
    assert recorded == [("memory.limit_in_bytes", str(64 * MiB)),
                        ("memory.memsw.limit_in_bytes", str(64 * MiB))]
    recorded.clear()
    cg.apply(parse({"swap": "max"}, FACTS, current={"memory": 64 * MiB}))
    assert recorded == [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", str(64 * MiB))]


def test_v1_dirs_and_path(tmp_path):
    cg = v1_tree(tmp_path)
    assert cg.path("io") == cg.path("blkio") == str(tmp_path / "blkio/labkit-x")
    assert set(cg.dirs()) == {str(tmp_path / c / "labkit-x") for c in V1_FILES}
    assert cg.dirs()[0].endswith("cpuset/labkit-x")          # cpuset first: set before attaching
    assert V1Cgroup.find_labkit(str(tmp_path)) == ["labkit-x"]


def test_v1_unsupported_limit_is_refused_before_creating(tmp_path):
    from labkit.errors import Unsupported
    fake_tree(tmp_path, "memory", {})                        # a host with only the memory controller
    cg = V1Cgroup("labkit-x", root=str(tmp_path))
    cg.check_supported(parse({"memory": "64M"}, FACTS))
    with pytest.raises(Unsupported, match="pids"):
        cg.check_supported(parse({"pids": 5}, FACTS))
    assert not os.path.exists(tmp_path / "memory/labkit-x")


def test_a_write_to_a_missing_file_says_why(tmp_path):
    from labkit.errors import NotFound, Unsupported
    (tmp_path / "labkit-x").mkdir()
    with pytest.raises(Unsupported, match="memory.swap.max: the file does not exist"):
        files.write(str(tmp_path / "labkit-x" / "memory.swap.max"), 0)
    with pytest.raises(NotFound, match="was it deleted"):
        files.write(str(tmp_path / "labkit-gone" / "cgroup.procs"), 1)
