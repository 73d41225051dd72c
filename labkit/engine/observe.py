"""What `docker stats` and `docker top` show, read from the kernel: the container's cgroup counters
and the processes of its pid namespace.

    docker stats   GET /containers/ID/stats   cpuacct.usage / cpu.stat, memory.usage_in_bytes /
                                              memory.current, pids.current - two samples, and the
                                              CLI turns the CPU time between them into a percentage
    docker top     GET /containers/ID/top     every process whose /proc/PID/ns/pid is the
                                              container's pid namespace, with host pids (as Docker)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from .clock import rfc3339

CLK_TCK = os.sysconf("SC_CLK_TCK")


def system_cpu_ns() -> int:
    """All CPUs' time since boot in ns (the first line of /proc/stat), what the CLI divides by."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    return sum(int(f) for f in fields) * 1_000_000_000 // CLK_TCK


def sample(cgroup) -> dict:
    """One reading of the cgroup's counters, in the shape of Docker's cpu_stats / memory_stats."""
    counters = cgroup.stats()
    limits = cgroup.limits()
    usage_ns = (counters.get("cpu_usage_usec") or 0) * 1000
    memory_limit = limits.get("memory")
    if not isinstance(memory_limit, int):
        memory_limit = psutil.virtual_memory().total
    pids_limit = limits.get("pids")
    return {
        "cpu_stats": {"cpu_usage": {"total_usage": usage_ns, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                      "system_cpu_usage": system_cpu_ns(), "online_cpus": os.cpu_count(),
                      "throttling_data": {"periods": counters.get("nr_periods") or 0,
                                          "throttled_periods": counters.get("throttled_periods") or 0,
                                          "throttled_time": (counters.get("throttled_usec") or 0) * 1000}},
        "memory_stats": {"usage": counters.get("memory_current") or 0,
                         "max_usage": counters.get("memory_peak") or 0,
                         "failcnt": counters.get("oom_kills") or 0,
                         "limit": memory_limit, "stats": {}},
        "pids_stats": {"current": counters.get("pids_current") or 0,
                       **({"limit": pids_limit} if isinstance(pids_limit, int) else {})},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "Read", "value": counters.get("io_read_bytes") or 0},
            {"major": 0, "minor": 0, "op": "Write", "value": counters.get("io_write_bytes") or 0}]},
    }


def stats(record_id: str, name: str, cgroup, previous: dict | None) -> dict:
    """GET /containers/ID/stats's JSON: this sample, and the one before as "precpu_stats"."""
    now = sample(cgroup)
    empty = {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0, "online_cpus": os.cpu_count(),
             "throttling_data": {}}
    return {"read": rfc3339(time.time()), "preread": rfc3339(previous["time"]) if previous else rfc3339(None),
            "id": record_id, "name": "/" + name, "num_procs": 0, "networks": {},
            **now, "precpu_stats": previous["cpu_stats"] if previous else empty, "time": time.time()}


TOP_TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


def top(pid: int) -> dict:
    """`ps -ef` of the container: the processes in the pid namespace of `pid` (its pid 1)."""
    namespace = os.readlink(f"/proc/{pid}/ns/pid")
    rows = []
    for process in psutil.process_iter(["pid", "ppid", "username", "create_time", "cpu_times", "cmdline",
                                        "name", "terminal"]):
        try:
            if os.readlink(f"/proc/{process.pid}/ns/pid") != namespace:
                continue
        except OSError:
            continue
        info = process.info
        times = info["cpu_times"]
        seconds = int((times.user + times.system) if times else 0)
        rows.append([info["username"] or "?", str(info["pid"]), str(info["ppid"]), "0",
                     time.strftime("%H:%M", time.localtime(info["create_time"] or 0)),
                     (info["terminal"] or "?").removeprefix("/dev/"),
                     f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
                     " ".join(info["cmdline"] or []) or f"[{info['name']}]"])
    rows.sort(key=lambda row: int(row[1]))
    return {"Titles": TOP_TITLES, "Processes": rows}
