"""The qemu command line: which emulator, machine and console per architecture; guest RAM and vCPUs."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Sequence

from ..errors import InvalidValue, Unsupported

# Per architecture: which qemu, which machine, which serial console, which Debian kernel package.
ARCHES = {
    "x86_64": dict(qemu="qemu-system-x86_64", machine="pc", console="ttyS0",
                   package="linux-image-amd64", flavours=("amd64", "generic"), cpu_kvm=None, cpu_tcg=None,
                   # emulated slowly (TCG on a loaded host), the timer can miss the kernel's boot-time
                   # IRQ test, which then panics "IO-APIC + timer doesn't work"; skip that test
                   cmdline="no_timer_check"),
    "aarch64": dict(qemu="qemu-system-aarch64", machine="virt", console="ttyAMA0",
                    package="linux-image-arm64", flavours=("arm64", "generic"), cpu_kvm="host",
                    cpu_tcg="max", cmdline=""),
}


def parse_memory(value) -> int:
    """Guest RAM in MiB from '256M', '1G', '512' (MiB) or an int; 64 MiB .. 16 GiB."""
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    match = re.fullmatch(r"(\d+)([MG]?)", text)
    if not match:
        raise InvalidValue("memory", value, "a size like 256M or 1G (64M .. 16G)")
    mib = int(match.group(1)) * (1024 if match.group(2) == "G" else 1)
    if not 64 <= mib <= 16 * 1024:
        raise InvalidValue("memory", value, "between 64M and 16G (the kernel and busybox need ~64M)")
    return mib


def check_cpus(value) -> int:
    """vCPU count: 1 .. the host's CPU count (more would only make TCG slower)."""
    limit = os.cpu_count() or 1
    try:
        cpus = int(value)
    except (TypeError, ValueError):
        cpus = 0
    if not 1 <= cpus <= limit or str(value).strip() != str(cpus):
        raise InvalidValue("cpus", value, f"a whole number from 1 to {limit} (this host's CPUs)")
    return cpus


def arch_info(machine: str | None = None) -> dict:
    machine = machine or os.uname().machine
    if machine not in ARCHES:
        raise Unsupported(f"labkit.vm knows x86_64 and aarch64, not {machine!r}")
    return ARCHES[machine]


def qemu_binary(machine: str | None = None) -> str | None:
    """Path of the qemu system emulator for this architecture, or None if not installed."""
    return shutil.which(arch_info(machine)["qemu"])


def kernel_cmdline(info: dict) -> str:
    # quiet + loglevel: the console carries our markers; panic=-1 + -no-reboot: a dying guest exits qemu
    return f"console={info['console']} quiet loglevel=1 panic=-1 rdinit=/init {info['cmdline']}".strip()


def qemu_command(*, qemu: str, kernel: Path, initrd: Path, memory_mib: int, cpus: int, accel: str,
                 name: str, share_host: bool, machine: str | None = None, nic: Sequence[str] = ()) -> list[str]:
    """The qemu argv: no default devices, no display; serial console on stdio. No network card unless
    `nic` (qemu options from labkit.vm.nic) gives one."""
    info = arch_info(machine)
    cmd = [qemu, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
           "-machine", info["machine"], "-m", str(memory_mib), "-smp", str(cpus),
           "-serial", "stdio", "-no-reboot", *(nic or ["-net", "none"]),
           "-kernel", str(kernel), "-initrd", str(initrd), "-append", kernel_cmdline(info)]
    cmd += ["-accel", "kvm"] if accel == "kvm" else ["-accel", "tcg"]
    cpu = info["cpu_kvm"] if accel == "kvm" else info["cpu_tcg"]
    if cpu:
        cmd += ["-cpu", cpu]
    if share_host:
        cmd += ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"]
    return cmd
