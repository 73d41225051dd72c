"""Is this machine's own CPU emulated? Then deadlines written for real hardware stretch.

When KVM does not work, qemu runs a guest with TCG: it translates every guest instruction in
software. Measured in the guest tier (`make test-guest`, 2 cores, see the README): the unit tests
run about 14 times slower there than on the build machine, and a VM labkit boots inside the guest
(emulation inside emulation) reaches its init 30 times later (264 s against 8.9 s). A deadline is not
a property of the kernel: labkit's VM boot deadline and the test suite's waits are multiplied by
`time_scale()`; what they check stays the same, and on hardware nothing changes.

The factor:
- LABKIT_TIME_SCALE=N, if set (a number >= 1): the operator knows best;
- otherwise TCG_SCALE when the kernel shows a QEMU machine without KVM: DMI's system vendor is
  "QEMU" (/sys/class/dmi/id/sys_vendor) and there is no `kvm-clock` clocksource (a KVM guest always
  offers one; systemd-detect-virt calls this case "qemu", a KVM guest "kvm");
- otherwise 1: real hardware, a KVM guest, a container on either.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from .errors import InvalidValue

ENV = "LABKIT_TIME_SCALE"
TCG_SCALE = 20.0     # between the two slowdowns above; deadlines on hardware have margin of their own
DMI_VENDOR = Path("/sys/class/dmi/id/sys_vendor")
CLOCKSOURCES = Path("/sys/devices/system/clocksource/clocksource0/available_clocksource")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@functools.cache
def emulated_cpu() -> str | None:
    """Why this machine's CPU is emulated (a sentence), or None if it runs on hardware (or KVM)."""
    if _read(DMI_VENDOR) != "QEMU":
        return None
    if "kvm-clock" in _read(CLOCKSOURCES).split():
        return None
    return "a QEMU machine without kvm-clock: its CPU is emulated by TCG"


def time_scale() -> float:
    """How many times longer than on hardware a deadline should be on this machine (>= 1)."""
    given = os.environ.get(ENV, "").strip()
    if given:
        try:
            scale = float(given)
        except ValueError:
            scale = 0.0
        if not scale >= 1:
            raise InvalidValue(ENV, given, "a number >= 1 (how much slower than hardware this machine is)")
        return scale
    return TCG_SCALE if emulated_cpu() else 1.0


def scaled(seconds: float) -> float:
    """A deadline of `seconds` on hardware, stretched for this machine."""
    return seconds * time_scale()


def describe() -> str:
    """One line for a notebook or a log: the factor and where it comes from."""
    scale = time_scale()
    if os.environ.get(ENV, "").strip():
        return f"deadlines x{scale:g} ({ENV}={os.environ[ENV].strip()})"
    if scale > 1:
        return f"deadlines x{scale:g}: {emulated_cpu()}"
    return "deadlines as written (the CPU is not emulated)"
