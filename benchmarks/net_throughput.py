"""TCP throughput between two lab namespaces over veth+bridge and a direct veth, against loopback.

    LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/net_throughput.py [--seconds 1] [--runs 5]

All paths are measured side by side in the same run, alternating, so a noisy neighbour on this
2-core machine slows all of them. Each run: one TCP stream for `--seconds` (at most `--max-gib` GiB),
sender and receiver in two forked processes, both ends in lab namespaces:
  veth+bridge   198.18.0.0/24 on a bridge in a labkit switch namespace (what Network builds)
  direct veth   one veth pair straight from one namespace to the other, 198.18.9.0/24, no bridge
  loopback      127.0.0.1 inside one lab namespace
Nothing leaves the lab.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
import statistics
import sys

from labkit import net


@contextmanager
def direct_pair():
    """Two lab namespaces joined by one veth pair, no bridge: the cable alone."""
    left = net.create_namespace("bl")
    try:
        right = net.create_namespace("br")
        try:
            a, b = net.create_veth(left)
            net.move_link(left, b, right, new_name="eth0")
            net.add_address(left, a, "198.18.9.1/24")
            net.add_address(right, "eth0", "198.18.9.2/24")
            for ns, ifname in ((left, a), (right, "eth0"), (left, "lo"), (right, "lo")):
                net.set_up(ns, ifname)
            yield left, right, "198.18.9.2"
        finally:
            net.remove_namespace(right)
    finally:
        net.remove_namespace(left)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each run (0.05-10)")
    parser.add_argument("--runs", type=int, default=5, help="runs per path")
    parser.add_argument("--max-gib", type=float, default=8.0, help="byte cap per run, GiB")
    args = parser.parse_args(argv)
    cap = int(args.max_gib * 2**30)

    results: dict[str, list[net.Throughput]] = {"veth+bridge": [], "direct veth": [], "loopback": []}
    with net.Network(members=[None, None]) as n, direct_pair() as (left, right, right_ip):
        a, b = n.endpoints
        for run in range(args.runs):
            results["veth+bridge"].append(net.measure_throughput(
                a.namespace, b.namespace, b.ip, seconds=args.seconds, max_bytes=cap))
            results["direct veth"].append(net.measure_throughput(
                left, right, right_ip, seconds=args.seconds, max_bytes=cap, path="direct veth"))
            results["loopback"].append(net.measure_throughput(
                a.namespace, a.namespace, "127.0.0.1", seconds=args.seconds, max_bytes=cap))
            print(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{path} {runs[-1].gbit_per_s:.2f}" for path, runs in results.items()) + " Gbit/s", file=sys.stderr)

    print(f"\nTCP throughput, one stream, {args.runs} runs of {args.seconds:g} s each (median, min-max)\n")
    print(f"{'path':<14}{'Gbit/s':>9}{'range':>18}{'MiB/s':>10}")
    medians = {}
    for path, runs in results.items():
        rates = [r.gbit_per_s for r in runs]
        medians[path] = statistics.median(rates)
        print(f"{path:<14}{medians[path]:>9.2f}{f'{min(rates):.2f}-{max(rates):.2f}':>18}"
              f"{statistics.median(r.mib_per_s for r in runs):>10.0f}")
    if medians["loopback"]:
        print(f"\nveth+bridge / loopback = {medians['veth+bridge'] / medians['loopback']:.2f}, "
              f"direct veth / loopback = {medians['direct veth'] / medians['loopback']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
