"""The guest tier: the workbook and the test suite on the learner's platform (`make test-guest`).

A fresh Debian 13 image (tests/guest/image.py: debootstrap + vagrant/provision.sh, cached) boots
under qemu with systemd as PID 1, a pure cgroup-v2 hierarchy and Debian 13's own kernel; the
checkout is shared at /vagrant as Vagrant's synced folder. Inside (tests/guest/inside.sh): the facts,
`labkit doctor`, then pytest stages - nbval's kernels in deep-dive-lab.service's delegated jupyter/
leaf, as a learner's kernels are. The closing line counts every stage's JUnit report.

    python tests/guest/run.py [--stages "unit notebooks integration"] [--rebuild] [--update-outputs]
                              [--notebooks GLOBS] [--tests FILES] [--time-scale N]
                              [--memory MiB] [--cpus N] [--timeout S] [-- PYTEST_ARGS...]

--update-outputs executes every notebook in the guest and writes it back to notebooks/ (see
tests/guest/outputs.py). Exit status: 0 all passed, 1 something failed, 77 (skipped) when qemu or
debootstrap is missing outside CI.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from labkit import vm  # noqa: E402
from tests.guest import boot, image  # noqa: E402
from tests.junit_counts import junit_counts  # noqa: E402

SKIPPED = 77
DEFAULT_STAGES = "unit notebooks integration"


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=os.environ.get("GUEST_STAGES"),
                   help=f"test stages to run in the guest, in order (default: {DEFAULT_STAGES}; "
                        "with --update-outputs none but the execution, unless named here)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the image even if the cached one is current")
    p.add_argument("--update-outputs", action="store_true",
                   help="execute every notebook in the guest and write it back to notebooks/")
    p.add_argument("--notebooks", default=os.environ.get("GUEST_NOTEBOOKS", ""),
                   help="only these notebooks (globs under notebooks/, e.g. '00-* 1?-*')")
    p.add_argument("--tests", default=os.environ.get("GUEST_TESTS", ""),
                   help="the integration stage runs only these (paths under tests/integration/, "
                        "e.g. 'test_runtime.py test_nb41_runtime.py')")
    p.add_argument("--time-scale", default=os.environ.get("GUEST_TIME_SCALE", ""),
                   help="LABKIT_TIME_SCALE inside the guest (default: labkit.emulation detects TCG)")
    p.add_argument("--memory", type=int, default=int(os.environ.get("GUEST_MEMORY", 5120)), help="MiB")
    p.add_argument("--cpus", type=int, default=int(os.environ.get("GUEST_CPUS", min(2, os.cpu_count() or 1))))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("TEST_OUTPUT", PROJECT / "test-output")) / "guest")
    p.add_argument("--timeout", type=int, default=int(os.environ.get("GUEST_TIMEOUT", 3000)),
                   help="seconds the whole boot may take before qemu is killed")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)   # progress as it happens, also into a log file

    in_ci = os.environ.get("CI") == "true"
    missing = [tool for tool, found in (("qemu-system-x86_64", vm.qemu_binary()),
                                        ("debootstrap", shutil.which("debootstrap")),
                                        ("mkfs.ext4", shutil.which("mkfs.ext4"))) if not found]
    if missing:
        print(("FAILED" if in_ci else "SKIPPED") + f" guest tier: {', '.join(missing)} missing "
              "(vagrant/provision.sh --test-tools installs them)")
        return 1 if in_ci else SKIPPED
    if os.geteuid() != 0:
        print("FAILED guest tier: run as root (debootstrap, chroot, qemu's tap-free boot)")
        return 1

    t0 = time.monotonic()
    img = image.ensure(rebuild=args.rebuild)
    t_image = time.monotonic() - t0
    if args.update_outputs:   # the execution first; other stages only when asked for (same boot)
        stages = " ".join(["execute"] + (args.stages or "").split())
    else:
        stages = args.stages or DEFAULT_STAGES
    spec = boot.BootSpec(disk=img.disk, kernel=img.kernel, initrd=img.initrd, mode="test",
                         memory_mib=args.memory, cpus=args.cpus, timeout=args.timeout,
                         request={"stages": stages, "pytest_args": " ".join(extra),
                                  "notebooks": args.notebooks, "tests": args.tests,
                                  "time_scale": args.time_scale})
    print(f"[guest] booting the image ({'cached' if img.reused else 'just built'}); stages: {stages}", flush=True)
    result = boot.boot_guest(spec, out_dir=args.out)

    passed = failed = skipped = 0
    lines = []
    for name, stage in result.stages.items():
        report = args.out / f"{name}.xml"
        counts = junit_counts(report) if report.exists() else None
        if counts:
            passed, failed, skipped = passed + counts[0], failed + counts[1], skipped + counts[2]
        rc = stage.get("rc")
        if counts is None and rc != 0:
            failed += 1          # a stage without a report (doctor, leaks, a crash) counts as one test
        elif counts is None:
            passed += 1
        what = f"{counts[0]} passed, {counts[1]} failed, {counts[2]} skipped" if counts else f"exit {rc}"
        lines.append(f"  {name:<18} {stage.get('seconds', 0):7.0f}s  {what}")
    for stage in stages.split():
        if stage not in result.stages:
            failed += 1
            lines.append(f"  {stage:<18}      --  did not run (the guest stopped before it)")

    if args.update_outputs:
        from tests.guest import outputs
        executed = args.out / "notebooks"
        if executed.is_dir():   # written even if a notebook failed: its error is in its outputs
            refused = outputs.write_back(executed, PROJECT / "notebooks")
            failed += len(refused)
            traces = outputs.scan(PROJECT / "notebooks")
            print("[guest] build-machine traces left in notebooks/: " + (f"{len(traces)}\n  " + "\n  ".join(traces)
                                                                    if traces else "none"))

    print("\n[guest] ==== summary ====")
    for key in ("release", "kernel", "python", "pid1", "cgroupfs", "controllers", "unit", "unit-cgroup",
                "subtree", "jupyterlab", "cgroup-parent", "deadlines"):
        print(f"  {key:<16} {result.facts.get(key, '(not reported)')}")
    print(f"  image            {'reused the cached image' if img.reused else 'built'} {img.disk} "
          f"({t_image:.0f}s{'' if img.reused else ', build steps ' + str(img.steps)})")
    print(f"  boot             {result.accel}, {args.cpus} vCPUs, {args.memory} MiB; systemd reached the "
          f"test unit at {result.seconds.get(next(iter(result.seconds), ''), 0)}s; total {result.seconds.get('total')}s")
    print("\n".join(lines))
    if result.returncode is None:
        failed += 1
        why = f"its kernel panicked {result.facts['panic']}" if "panic" in result.facts else "crash or timeout"
        print(f"  the guest did not report its end ({why}): counted as a failure")
    elapsed = time.monotonic() - t0
    print(f"==== {passed} passed, {failed} failed, {skipped} skipped in {elapsed:.1f}s ====")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
