"""What does watching a cgroup cost? CPU time of the sampler as a fraction of one CPU.

Samples one real cgroup (holding one sleeping process) at 10 Hz and at 100 Hz, on an asyncio loop as
in a notebook, for a few seconds each, and divides this process's CPU time (user + system, from
getrusage) by the wall time. Each rate is measured with and without the psutil per-process read.
Targets: < 1 % of a CPU at 10 Hz, < 5 % at 100 Hz (with the default settings: processes on).

    sudo LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/sampler_cost.py [--seconds 5]
"""
from __future__ import annotations

import argparse
import asyncio
import resource
import time

from labkit.cgroups import Cgroup, backend_name
from labkit.monitor import Sampler
from labkit.namespaces import spawn

TARGETS = {10: 0.01, 100: 0.05}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    args = parser.parse_args()

    with Cgroup.create(memory="256M", cpu=0.5, pids=50) as cg:
        sleeper = spawn(["sleep", "3600"], namespaces=None, cgroup=cg)
        try:
            measure(cg, 10, 0.5, True)  # warm-up: imports, first psutil objects
            rows = []
            for rate in (10, 100):
                for processes in (True, False):
                    cost, achieved = measure(cg, rate, args.seconds, processes)
                    rows.append((rate, processes, cost, achieved))
        finally:
            cg.kill()
            sleeper.wait()

    print(f"sampler cost, one cgroup ({backend_name()} backend), {args.seconds:g} s per row")
    print(f"{'rate':>6}  {'psutil procs':>12}  {'samples/s':>9}  {'CPU (of one)':>12}  {'target':>7}  verdict")
    for rate, processes, cost, achieved in rows:
        target = TARGETS[rate]
        verdict = ("ok" if cost < target else "OVER") if processes else "-"
        print(f"{rate:>4} Hz  {'yes' if processes else 'no':>12}  {achieved:>9.1f}  {cost * 100:>11.2f}%  "
              f"{target * 100:>6.0f}%  {verdict}")
    return 0 if all(cost < TARGETS[rate] for rate, processes, cost, _ in rows if processes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
