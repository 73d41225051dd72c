"""KVM or TCG: does KVM really work here? A probe VM answers, cached for this boot of the host."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from .. import cleanup, host
from ..errors import InvalidValue, LabkitError, NotFound
from .kernel import find_kernel
from .qemu import qemu_binary


KVM_PROBE_FILE = cleanup.STATE_DIR / "kvm-probe"   # cached answer of kvm_usable()
KVM_DEVICE = "/dev/kvm"


def check_accel(value) -> str:
    if value not in ("auto", "kvm", "tcg"):
        raise InvalidValue("accel", value, "'auto' (KVM if it really works, else TCG), 'kvm' or 'tcg'")
    return value


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def kvm_usable(boot_probe: Callable[[float], None], timeout: float = 10.0, refresh: bool = False) -> bool:
    """Boot a probe VM with KVM; True only if its init speaks within `timeout` seconds.

    `boot_probe(timeout)` boots it and raises a LabkitError unless the guest is ready in time
    (labkit.vm.kvm_usable passes one that boots a `VM`; the probe is this module's, the VM is not).

    /dev/kvm can exist and still not work (nested virtualisation: qemu aborts on an MSR, or spins
    at 100% without booting), so the device alone proves nothing. The answer is cached in
    /run/labkit/kvm-probe for this boot of the host (keyed by boot_id, kernel and qemu).
    """
    if not os.path.exists(KVM_DEVICE) or not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return False
    if not (host.is_root() and host.is_lab_host()):
        return False  # may not boot the probe VM here; answer without caching a guess
    qemu = qemu_binary()
    if qemu is None:
        return False
    try:
        kernel = find_kernel()
    except NotFound:
        return False
    key = f"{boot_id()} {os.uname().release} {qemu} {kernel.image}"
    if not refresh:
        try:
            cached = json.loads(KVM_PROBE_FILE.read_text())
            if cached.get("key") == key:
                return bool(cached["usable"])
        except (OSError, ValueError, KeyError):
            pass
    usable, reason = False, ""
    try:
        boot_probe(timeout)
        usable = True
    except LabkitError as exc:
        reason = str(exc)[:300]
    KVM_PROBE_FILE.parent.mkdir(parents=True, exist_ok=True)
    KVM_PROBE_FILE.write_text(json.dumps({"key": key, "usable": usable, "reason": reason,
                                          "probed_at": time.time()}))
    return usable


def choose_accel(accel: str, kvm_works: Callable[[], bool]) -> tuple[str, str]:
    """(accelerator, why) for a requested 'auto' | 'kvm' | 'tcg'; `kvm_works()` runs the (cached) probe."""
    check_accel(accel)
    if accel == "tcg":
        return "tcg", "asked for TCG"
    if accel == "kvm":
        return "kvm", "asked for KVM"
    if not os.path.exists(KVM_DEVICE):
        return "tcg", "no /dev/kvm: TCG emulates the CPU in software"
    if kvm_works():
        return "kvm", "KVM probe booted"
    return "tcg", "/dev/kvm exists but a probe VM did not boot with it (see /run/labkit/kvm-probe)"
