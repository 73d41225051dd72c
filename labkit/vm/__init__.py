"""A disposable virtual machine, to compare with a container: its own kernel, CPUs and RAM.

The seed says hypervisors "take a single physical machine … and carve out one or more virtual
machines, each with its own virtual CPU, virtual RAM, virtual networking". This module boots one
for real, with nothing downloaded but Debian packages:

- the kernel is the distribution's own (`linux-image-amd64`): an extracted copy in
  /var/cache/labkit/kernel (see `fetch_kernel`, which uses `apt-get download` + `dpkg -x` and so
  skips the slow initramfs generation of a real install), or else /boot/vmlinuz-*;
- the initramfs is built here, in Python, as a cpio archive holding busybox-static, a few kernel
  modules and a shell script as /init;
- qemu runs it with KVM when KVM really works (`kvm_usable` boots a probe VM with a short timeout,
  because /dev/kvm can exist and still hang), otherwise with TCG, qemu's CPU emulator. A guest
  gets BOOT_TIMEOUT seconds to be ready; on a machine whose own CPU is emulated (a TCG guest, where
  a VM is emulation inside emulation) that deadline is stretched by labkit.emulation's factor.

Two kinds of guest:

- plain (`boot`): busybox is the whole userland; init prints what the guest sees (kernel version,
  CPU count, MemTotal), runs one command and powers off;
- host-sharing (`run`, or `boot(share_host=True)`): the host's filesystem is shared read-only over
  9p, a tmpfs is laid over it with overlayfs (guest writes land in guest RAM, never on the host),
  init `switch_root`s into it and mounts a pure cgroup-v2 hierarchy. The host's own Python then
  runs in the guest - the pure cgroup-v2 test tier uses this.

The guest talks back over its serial console (qemu's stdout); lines starting with ``@@LABKIT:``
are markers the host parses (see `parse_marker`). The guest has no network device unless it is
given a `network` (a labkit.net.Network): then it gets a virtio-net card that qemu emulates, whose host
side is a tap on that network's bridge, inside the lab's switch namespace (see labkit.vm.nic).

Everything is released on success, error and interrupt: the qemu process (only the one started
here) is killed and its scratch directory (/run/labkit/vm/labkit-vm-...) removed. Both are claimed
in labkit.cleanup as kind "vm", so a sweep finds them if the owner died (`find_leftovers`).

arm64: the same code drives qemu-system-aarch64 (`-M virt`, console ttyAMA0) with Debian's
linux-image-arm64; written from qemu's documentation, not tested on an arm64 machine yet.

The package, one concern per module (lowest first): qemu (argv, RAM, vCPUs), kernel (Debian's
kernel), console (the marker protocol), guest_init (/init scripts), initramfs (the cpio archive),
accel (KVM probe), nic (the virtio-net card and its tap), lifecycle (VM, boot, run), sweep (cleanup hooks). Progress bars are in
labkit.vmview, exported here too.
"""
from __future__ import annotations

from ..binaries import BUSYBOX_CANDIDATES, find_busybox, is_static_elf
from ..vmview import notebook_progress, print_progress
from .accel import KVM_DEVICE, KVM_PROBE_FILE, check_accel
from .console import MARK, ConsoleReader, parse_info, parse_marker
from .guest_init import init_script, stage2_script
from .initramfs import (NET_MODULES, S_IFCHR, S_IFDIR, S_IFLNK, S_IFREG, SHARE_MODULES, build_initramfs,
                        builtin_modules, cpio_newc, guest_modules)
from .kernel import KERNEL_CACHE, Kernel, fetch_kernel, find_kernel
from .nic import VmNic, check_network
from .lifecycle import (BOOT_TIMEOUT, KIND, VM, VM_DIR, BootResult, Progress, ProgressCallback, VMError, boot,
                        choose_accel, kvm_usable, run)
from .qemu import ARCHES, arch_info, check_cpus, kernel_cmdline, parse_memory, qemu_binary, qemu_command
from .sweep import find_leftovers, remove_leftover

__all__ = [
    "ARCHES", "BOOT_TIMEOUT", "BUSYBOX_CANDIDATES", "KERNEL_CACHE", "KIND", "KVM_DEVICE", "KVM_PROBE_FILE", "MARK", "NET_MODULES",
    "S_IFCHR", "S_IFDIR", "S_IFLNK", "S_IFREG", "SHARE_MODULES", "VM", "VM_DIR", "BootResult",
    "ConsoleReader", "Kernel", "Progress", "ProgressCallback", "VMError", "VmNic", "arch_info", "boot",
    "build_initramfs", "builtin_modules", "check_accel", "check_cpus", "check_network", "choose_accel", "cpio_newc",
    "fetch_kernel", "find_busybox", "find_kernel", "find_leftovers", "guest_modules", "init_script", "is_static_elf",
    "kernel_cmdline", "kvm_usable", "notebook_progress", "parse_info", "parse_marker", "parse_memory",
    "print_progress", "qemu_binary", "qemu_command", "remove_leftover", "run", "stage2_script",
]
