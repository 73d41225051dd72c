"""Start latency and memory per instance: a container against a qemu VM, side by side in one run.

    LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/vm_vs_container.py [--runs 20] [--vm-runs 3] [--accel auto]

Rows:
    namespaces+cgroup  labkit.namespaces.spawn of /bin/true in new pid, mnt, uts, ipc, net namespaces,
                       inside a fresh labkit cgroup (64M, 20 pids); cgroup created and removed each run
    labkit container   labkit.container.run("busybox", "/bin/true", mem_limit="64M"): overlay rootfs,
                       pivot_root, tini as pid 1 (only if labkit.container is present)
    VM to init         labkit.vm: qemu with Debian's kernel and a busybox initramfs, until /init runs
    VM to power-off    the same boot, until the guest has powered off and qemu has exited

Memory: what one idle instance costs the host - a container's cgroup charge (memory.current /
memory.usage_in_bytes) while it runs `sleep`, against the resident set (RSS) of one idle VM's qemu
process. The accelerator (KVM or TCG) is printed: TCG numbers are several times KVM's.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from labkit import host, vm
from labkit.cgroups import Cgroup
from labkit.namespaces import spawn

CONTAINER_NS = ("pid", "mnt", "uts", "ipc", "net")


def container_start() -> float:
    t0 = time.perf_counter()
    with Cgroup.create(memory="64M", pids=20) as cg:
        spawn(["/bin/true"], CONTAINER_NS, cgroup=cg, hostname="box").wait(timeout=30)
    return time.perf_counter() - t0


def labkit_container_start() -> float | None:
    try:
        from labkit import container
    except ImportError:
        return None
    t0 = time.perf_counter()
    result = container.run("busybox", ["/bin/true"], mem_limit="64M", timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"labkit container exited {result.returncode}: {result.stderr}")
    return time.perf_counter() - t0


def container_memory() -> int:
    with Cgroup.create(memory="64M", pids=20) as cg:
        proc = spawn(["sleep", "60"], CONTAINER_NS, cgroup=cg, hostname="box")
        try:
            time.sleep(0.3)  # past exec: the charge is settled
            return cg.stats()["memory_current"]
        finally:
            proc.kill()
            proc.wait()


def vm_memory(memory: str, accel: str) -> int:
    with vm.VM(memory=memory, hold=True, accel=accel) as machine:
        machine.wait_ready()
        time.sleep(0.5)
        rss = machine.rss()
        machine.stop()
        return rss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="container starts per row")
    parser.add_argument("--vm-runs", type=int, default=3, help="VM boots (each takes seconds under TCG)")
    parser.add_argument("--memory", default="256M", help="guest RAM")
    parser.add_argument("--accel", default="auto", help="auto, kvm or tcg")
    args = parser.parse_args(argv)
    host.require_lab_host("benchmark containers against VMs")
    accel, why = vm.choose_accel(args.accel)
    print(f"VM accelerator: {accel.upper()} ({why}); guest kernel {vm.find_kernel().image}", file=sys.stderr)

    starts: dict[str, list[float]] = {"namespaces+cgroup": [], "labkit container": [],
                                      "VM to init": [], "VM to power-off": []}
    for _ in range(args.runs):
        starts["namespaces+cgroup"].append(container_start())
        full = labkit_container_start()
        if full is not None:
            starts["labkit container"].append(full)
    for run in range(args.vm_runs):
        result = vm.boot(memory=args.memory, accel=accel)
        starts["VM to init"].append(result.boot_seconds)
        starts["VM to power-off"].append(result.total_seconds)
        print(f"VM boot {run + 1}/{args.vm_runs}: init after {result.boot_seconds:.2f} s", file=sys.stderr)

    base = statistics.median(starts["namespaces+cgroup"])
    print(f"\nstart latency, median (min-max); VM under {accel.upper()}\n")
    print(f"{'what':<20}{'runs':>5}{'median ms':>12}{'range ms':>20}{'x container':>13}")
    for what, values in starts.items():
        if not values:
            print(f"{what:<20}{'-':>5}   (skipped: module not present)")
            continue
        median = statistics.median(values)
        print(f"{what:<20}{len(values):>5}{median * 1e3:>12.1f}"
              f"{f'{min(values) * 1e3:.1f}-{max(values) * 1e3:.1f}':>20}{median / base:>13.1f}")

    per_container = container_memory()
    per_vm = vm_memory(args.memory, accel)
    print("\nmemory one idle instance costs the host\n")
    print(f"{'what':<34}{'MiB':>10}{'x container':>13}{'fit in 1 GiB':>14}")
    for what, cost in (("container (cgroup charge, sleep)", per_container),
                       (f"VM {args.memory} (qemu RSS, {accel.upper()})", per_vm)):
        print(f"{what:<34}{cost / 2**20:>10.1f}{cost / per_container:>13.0f}{2**30 // cost:>14,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
