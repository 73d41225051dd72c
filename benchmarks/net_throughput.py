"""TCP throughput between two lab namespaces over veth+bridge, against loopback inside one namespace.

    LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/net_throughput.py [--seconds 1] [--runs 5]

Both paths are measured side by side in the same run, alternating, so a noisy neighbour on this
2-core machine slows both. Each run: one TCP stream for `--seconds` (at most `--max-gib` GiB),
sender and receiver in two forked processes, both ends in lab namespaces (198.18.0.0/24 on a bridge
in a labkit switch namespace; 127.0.0.1 inside a lab namespace). Nothing leaves the lab.
"""
from __future__ import annotations

import argparse
import statistics
import sys

from labkit import net


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each run (0.05-10)")
    parser.add_argument("--runs", type=int, default=5, help="runs per path")
    parser.add_argument("--max-gib", type=float, default=8.0, help="byte cap per run, GiB")
    args = parser.parse_args(argv)
    cap = int(args.max_gib * 2**30)

    results: dict[str, list[net.Throughput]] = {"veth+bridge": [], "loopback": []}
    with net.Network(members=[None, None], label=None) as n:
        a, b = n.endpoints
        for run in range(args.runs):
            results["veth+bridge"].append(
                net.measure_throughput(a.namespace, b.namespace, b.ip, seconds=args.seconds, max_bytes=cap))
            results["loopback"].append(
                net.measure_throughput(a.namespace, a.namespace, "127.0.0.1", seconds=args.seconds, max_bytes=cap))
            print(f"run {run + 1}/{args.runs}: veth+bridge {results['veth+bridge'][-1].gbit_per_s:6.2f} Gbit/s, "
                  f"loopback {results['loopback'][-1].gbit_per_s:6.2f} Gbit/s", file=sys.stderr)

    print(f"\nTCP throughput, one stream, {args.runs} runs of {args.seconds:g} s each (median, min-max)\n")
    print(f"{'path':<14}{'Gbit/s':>9}{'range':>18}{'MiB/s':>10}")
    medians = {}
    for path, runs in results.items():
        rates = [r.gbit_per_s for r in runs]
        medians[path] = statistics.median(rates)
        print(f"{path:<14}{medians[path]:>9.2f}{f'{min(rates):.2f}-{max(rates):.2f}':>18}"
              f"{statistics.median(r.mib_per_s for r in runs):>10.0f}")
    if medians["loopback"]:
        print(f"\nveth+bridge / loopback = {medians['veth+bridge'] / medians['loopback']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
