"""What does watching a cgroup cost? CPU time of the sampler as a fraction of one CPU.

Samples one real cgroup (holding one sleeping process) at 10 Hz and at 100 Hz, on an asyncio loop as
in a notebook, for a few seconds each, and divides this process's CPU time (user + system, from
getrusage) by the wall time. Each rate is measured with and without the psutil per-process read,
beside the floor: an asyncio loop that wakes up as often and does nothing (what any live plot costs
on this machine before it reads a single file).
Targets: <= 0.5 % of a CPU at 10 Hz, <= 3 % at 100 Hz (with the default settings: processes on).

    sudo LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/sampler_cost.py [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time

from labkit.cgroups import Cgroup, backend_name
from labkit.monitor import Sampler
from labkit.namespaces import spawn

TARGETS = {10: 0.005, 100: 0.03}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(cg, rate: float, seconds: float, processes: bool) -> tuple[float, float]:
    """(fraction of one CPU used while sampling, samples per second achieved)."""
    sampler = Sampler(cg, rate=rate, processes=processes, keep=int(rate * seconds) + 10)

    async def go():
        # measured inside the loop: the cost of sampling, not of starting an event loop
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await sampler.run(seconds=seconds)
        return cpu_seconds() - cpu0, time.monotonic() - wall0

    cpu, wall = asyncio.run(go())
    return cpu / wall, len(sampler.samples) / wall


def floor(rate: float, seconds: float) -> float:
    """The fraction of one CPU an asyncio loop uses to wake up `rate` times a second, doing nothing."""
    async def go():
        loop = asyncio.get_running_loop()
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        tick = loop.time()
        while loop.time() - wall0 < seconds:
            tick += 1 / rate
            await asyncio.sleep(max(tick - loop.time(), 0))
        return (cpu_seconds() - cpu0) / (time.monotonic() - wall0)

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    args = parser.parse_args()

    with Cgroup.create(memory="256M", cpu=0.5, pids=50) as cg:
        sleeper = spawn(["sleep", "3600"], namespaces=None, cgroup=cg)
        try:
            measure(cg, 10, 0.5, True)  # warm-up: imports, first psutil objects
            rows, floors = [], {}
            for rate in (10, 100):
                for processes in (True, False):
                    cost, achieved = measure(cg, rate, args.seconds, processes)
                    rows.append((rate, processes, cost, achieved))
                floors[rate] = floor(rate, args.seconds)
        finally:
            cg.kill()
            sleeper.wait()

    print(f"sampler cost, one cgroup ({backend_name()} backend), {args.seconds:g} s per row")
    print(f"{'rate':>6}  {'psutil procs':>12}  {'samples/s':>9}  {'CPU (of one)':>12}  {'floor':>6}  {'target':>7}  verdict")
    for rate, processes, cost, achieved in rows:
        target = TARGETS[rate]
        verdict = ("ok" if cost <= target else "OVER") if processes else "-"
        print(f"{rate:>4} Hz  {'yes' if processes else 'no':>12}  {achieved:>9.1f}  {cost * 100:>11.2f}%  "
              f"{floors[rate] * 100:>5.2f}%  {target * 100:>6.1f}%  {verdict}")
    print("floor: an asyncio loop waking up as often, doing nothing; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    return 0 if all(cost <= TARGETS[rate] for rate, processes, cost, _ in rows if processes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
