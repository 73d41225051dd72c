"""The sampler's fast counter reads (labkit.monitor.CounterFiles) over fake cgroupfs trees for v1 and
v2: the same fields as Cgroup.stats() gives, from files kept open and re-read in place."""
from __future__ import annotations

import pytest

from labkit.monitor import CounterFiles, _keyed

V1 = {
    "memory/memory.usage_in_bytes": "1048576\n",
    "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "cpuacct/cpuacct.usage": "2500000000\n",
    "cpu/cpu.stat": "nr_periods 40\nnr_throttled 7\nthrottled_time 123\n",
    "pids/pids.current": "3\n",
    "pids/pids.events": "max 5\n",
    "blkio/blkio.throttle.io_service_bytes_recursive":
        "8:0 Read 100\n8:0 Write 4096\n8:16 Read 1\n8:16 Write 4\nTotal 4201\n",
}
V2 = {
    "memory.current": "2097152\n",
    "memory.swap.current": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\noom_group_kill 0\n",
    "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 9\nnr_throttled 2\n",
    "pids.current": "4\n",
    "pids.events": "max 0\n",
    "io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n8:16 rbytes=1 wbytes=2 rios=0 wios=1\n",
}


def tree(tmp_path, files: dict) -> None:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v1_counters_match_what_the_kernel_files_say(tmp_path):
    tree(tmp_path, V1)
    counters = CounterFiles("v1", lambda controller: str(tmp_path / controller))
    try:
        assert counters.read() == {"memory_current": 1048576, "oom_kills": 2, "cpu_usage_usec": 2_500_000,
                                   "throttled_periods": 7, "pids_current": 3, "pids_events_max": 5,
                                   "io_read_bytes": 101, "io_write_bytes": 4100}
        (tmp_path / "pids/pids.current").write_text("9\n")     # re-read in place: the new value
        assert counters.read()["pids_current"] == 9
    finally:
        counters.close()


def test_v2_counters_match_what_the_kernel_files_say(tmp_path):
    tree(tmp_path, V2)
    counters = CounterFiles("v2", lambda controller: str(tmp_path))
    try:
        assert counters.read() == {"memory_current": 2097152, "swap_current": 0, "oom_kills": 1,
                                   "cpu_usage_usec": 1500, "throttled_periods": 2, "pids_current": 4,
                                   "pids_events_max": 0, "io_read_bytes": 11, "io_write_bytes": 22}
    finally:
        counters.close()


def test_a_missing_controller_leaves_its_fields_out(tmp_path):
    tree(tmp_path, {k: v for k, v in V1.items() if not k.startswith("blkio/")})
    counters = CounterFiles("v1", lambda controller: str(tmp_path / controller))
    try:
        assert "io_write_bytes" not in counters.read()
    finally:
        counters.close()


@pytest.mark.parametrize("text, key, value", [
    (b"max 5\n", b"max", 5),
    (b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", b"oom_kill", 3),
    (b"oom_kill_disable 1\n", b"oom_kill", None),
    (b"usage_usec 12", b"usage_usec", 12),
])
def test_keyed_finds_the_whole_key_at_a_line_start(text, key, value):
    assert _keyed(text, key) == value
