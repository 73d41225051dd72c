"""`update` (new limits for a running container) and `events` (its cgroup's counters as JSON).

    labkit-runtime update --resources FILE|- ID    what `docker update --memory ... --cpus ...` sends
    labkit-runtime events --stats ID               one sample; without --stats, one every --interval
"""
from __future__ import annotations

import json
import sys
import time

from . import state as states
from .spec import Spec, parse_resources
from ..errors import NotFound
from ..oci import Reader


def update(opts, log) -> int:
    """linux.resources from FILE (or stdin), checked like create's, written to the cgroup."""
    from ..cgroups.limits import parse as parse_limits
    box = states.Container(opts.root, opts.id)
    if not box.exists():
        raise NotFound("container does not exist")
    source = opts.get("resources") or "-"
    text = sys.stdin.read() if source == "-" else open(source).read()
    wanted = Spec(bundle=None, process=None, root=None, readonly=False, hostname=None, namespaces=[])
    parse_resources(json.loads(text or "{}"), Reader(f"update --resources {source}"), wanted)
    if wanted.devices or wanted.oom_kill_disable:
        from ..errors import Unsupported
        raise Unsupported("update: device rules and disableOOMKiller can only be set at create")
    group = box.cgroup()
    limits = parse_limits(wanted.limits, current=group.limits())
    group.check_supported(limits)
    box.runtime_cgroup().update(limits)      # systemd's unit properties too, with --systemd-cgroup
    return 0


def stats(box: states.Container) -> dict:
    """runc's events "stats" record, filled from labkit's cgroup counters."""
    s = box.cgroup().stats()
    return {"type": "stats", "id": box.id, "data": {
        "cpu": {"usage": {"total": (s["cpu_usage_usec"] or 0) * 1000},
                "throttling": {"periods": s["nr_periods"] or 0, "throttledPeriods": s["throttled_periods"] or 0,
                               "throttledTime": (s["throttled_usec"] or 0) * 1000}},
        "memory": {"usage": {"usage": s["memory_current"] or 0, "max": s["memory_peak"] or 0}},
        "pids": {"current": s["pids_current"] or 0},
        "oom_kills": s["oom_kills"] or 0}}


def events(opts, log) -> int:
    box = states.Container(opts.root, opts.id)
    if not box.exists():
        raise NotFound("container does not exist")
    interval = float(str(opts.get("interval") or "5").rstrip("s"))
    while True:
        print(json.dumps(stats(box)), flush=True)
        if opts.get("stats") or box.status() == "stopped":
            return 0
        time.sleep(interval)
