"""The pure cgroup-v2 test tier: labkit's cgroup tests run inside a throwaway microVM.

This lab's host has hybrid cgroups, so the v2 code paths cannot be exercised on it. This script
boots a VM (labkit.vm.run) that sees the host's filesystem read-only over 9p with a tmpfs overlay
on top (so the guest's writes never reach the host), mounts cgroup2 at /sys/fs/cgroup in the guest
- a pure v2 hierarchy with every controller - and runs pytest there with the project's own venv
Python, by absolute path. The guest has no network device.

Run as root from the project root (`make test` does, as its stage 4):
    .venv/bin/python tests/v2tier/run.py [extra pytest args]
Exit status: pytest's in the guest (0 = all passed). Without qemu it skips with a message and exits
77 (the "skipped" status tests/run_suite.sh knows) - except in CI (CI=true), where a missing qemu is a
failure (exit 1).
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from labkit import vm  # noqa: E402
from labkit.errors import LabkitError  # noqa: E402

# Assertions written directly against cgroup2's files, plus labkit's backend-agnostic integration
# tests of labkit.cgroups (run here on its v2 backend) when that file exists, and of what reads and
# places into cgroups: the sampler (its v2 counter files) and the starter (placement by the parent);
# and labkit-runtime's device rules, which v2 enforces with an eBPF program.
SKIPPED = 77
TEST_FILES = ("tests/v2tier/test_v2_only.py", "tests/v2tier/test_v2_devices.py",
              "tests/v2tier/test_container_leaf.py", "tests/integration/test_cgroups.py",
              "tests/integration/test_monitor.py", "tests/integration/test_starter.py")
# the live-plot tests import numpy, which stops with "Illegal instruction" under TCG's default CPU
DESELECT = "not plot"


def guest_command(python: str, extra: list[str]) -> str:
    files = [f for f in TEST_FILES if (PROJECT / f).exists()]
    argv = [python, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", "-v", "-rs", "-k", DESELECT,
            *files, *extra]
    return shlex.join(argv)


def main(argv: list[str]) -> int:
    in_ci = os.environ.get("CI") == "true"
    if vm.qemu_binary() is None:
        message = f"v2 tier: {vm.arch_info()['qemu']} is missing (apt-get install qemu-system-x86)"
        print(("FAILED " if in_ci else "SKIPPED ") + message + (" - required in CI" if in_ci else ""))
        return 1 if in_ci else SKIPPED
    os.environ.setdefault("LABKIT_ALLOW_HOST", "1")  # the guest is the lab here; it sets its own too
    # the venv's python by its absolute path, not resolved: the venv's site-packages come with it
    python = os.path.abspath(sys.executable)
    command = guest_command(python, argv)
    cpus = min(2, os.cpu_count() or 1)
    print(f"v2 tier: booting a microVM ({cpus} CPUs, 1 GiB) with the host's / read-only; in the guest:\n"
          f"  {command}", flush=True)
    try:
        # no plugin autoloading: importing nbval's Jupyter stack costs ~30 s under TCG, and is unused
        result = vm.run(command, memory="1G", cpus=cpus, cwd=str(PROJECT), timeout=290,
                        env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONUNBUFFERED": "1"},
                        progress=vm.print_progress(), on_output=lambda line: print(line, flush=True))
    except LabkitError as exc:
        print(f"v2 tier: FAILED - the VM did not run the tests: {exc}")
        return 1
    print(f"v2 tier: guest kernel {result.guest_kernel} ({result.accel}), cgroup2 controllers: "
          f"{' '.join(result.cgroup_controllers)}; boot {result.ready_seconds:.1f} s, "
          f"tests {result.command_seconds or 0:.1f} s; pytest exit status {result.returncode}")
    return 1 if result.returncode is None else result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
