"""The guest's initramfs: a cpio archive written here, holding static busybox, modules and /init."""
from __future__ import annotations

import gzip
import lzma
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable

from ..binaries import find_busybox
from ..errors import NotFound, Unsupported
from .guest_init import init_script, stage2_script
from .kernel import Kernel


# Modules the host-sharing guest loads, in dependency order (verified with Debian's 6.1 kernel):
# virtio PCI transport, then 9p over virtio, then overlayfs; loop for the io-controller tests.
SHARE_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                 "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay", "loop")
# Newer kernels (Debian 13's 6.12) fold fscache into netfs: no fscache.ko, nothing to load for it.
FOLDED_INTO = {"fscache": "netfs"}
# ... and a guest with a NIC (labkit.vm.nic): the same virtio PCI transport, then the virtio-net driver
# (virtio_net needs net_failover, which needs failover: modules.dep of Debian's 6.1 kernel).
NET_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
               "failover", "net_failover", "virtio_net")


def guest_modules(share_host: bool = True, nic: bool = True) -> tuple[str, ...]:
    """The modules a guest loads, in load order, each once (both lists by default: all a guest may need)."""
    wanted = (SHARE_MODULES if share_host else ()) + (NET_MODULES if nic else ())
    return tuple(dict.fromkeys(wanted))
S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def cpio_newc(entries: Iterable[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as initramfs.

    Each entry is (path, mode incl. file type, data, (rdev major, minor)). Every member is a
    110-byte ASCII header of 13 hex fields, the NUL-terminated name and the data, each padded to 4
    bytes; a member named TRAILER!!! ends the archive (Documentation/driver-api/early-userspace).
    """
    out = bytearray()

    def pad():
        out.extend(b"\0" * (-len(out) % 4))

    ino = 1
    for path, mode, data, (rmaj, rmin) in list(entries) + [("TRAILER!!!", 0, b"", (0, 0))]:
        name = path.lstrip("/").encode() + b"\0"
        nlink = 2 if mode & 0o170000 == S_IFDIR else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name)
        pad()
        out.extend(data)
        pad()
        ino += 1
    return bytes(out)


def _module_bytes(modules_dir: Path, name: str) -> bytes:
    """A module's .ko, decompressed if the distribution ships it compressed (busybox insmod can't)."""
    for path in modules_dir.rglob(name + ".ko*"):
        data = path.read_bytes()
        if path.suffix == ".xz":
            data = lzma.decompress(data)
        elif path.suffix == ".gz":
            data = gzip.decompress(data)
        elif path.suffix == ".zst":  # Ubuntu 24.04; the stdlib of Python 3.11 has no zstd
            if not shutil.which("zstd"):
                raise Unsupported(f"{path} is zstd-compressed: `apt-get install zstd` to unpack it")
            data = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
        return data
    raise NotFound(f"kernel module {name} not found under {modules_dir}")


def builtin_modules(modules_dir: Path) -> set[str]:
    """Names of drivers compiled into the kernel (modules.builtin): nothing to insmod for those."""
    try:
        lines = (modules_dir / "modules.builtin").read_text().split()
    except OSError:
        return set()
    return {os.path.basename(line).split(".ko")[0] for line in lines}


def build_initramfs(*, kernel: Kernel | None, command: str | None = None, share_host: bool = False,
                    hold: bool = False, cwd: str = "/", env: dict[str, str] | None = None,
                    busybox: Path | None = None, nic: tuple[str, str] | None = None) -> bytes:
    """The whole initramfs for one VM, as bytes (written to the VM's scratch dir).

    `nic` = (MAC, address/prefix): the guest has a virtio-net card (labkit.vm.nic) to configure."""
    busybox = busybox or find_busybox()
    entries = [(d, S_IFDIR | 0o755, b"", (0, 0))
               for d in ("bin", "dev", "proc", "sys", "modules", "labkit", "run", "tmp")]
    entries.append(("dev/console", S_IFCHR | 0o600, b"", (5, 1)))  # the kernel opens it before /init
    entries.append(("bin/busybox", S_IFREG | 0o755, busybox.read_bytes(), (0, 0)))
    modules = ()
    if share_host or nic:
        if kernel is None or kernel.modules is None:
            raise NotFound("sharing the host filesystem or a NIC needs the kernel's modules (virtio, 9p, "
                           "overlay, virtio_net); run `labkit vm fetch-kernel`")
        builtin = builtin_modules(kernel.modules)
        modules = [m for m in guest_modules(share_host, nic is not None) if m not in builtin
                   and not (m in FOLDED_INTO and not any(kernel.modules.rglob(m + ".ko*")))]
        for name in modules:
            entries.append((f"modules/{name}.ko", S_IFREG | 0o644, _module_bytes(kernel.modules, name), (0, 0)))
    if share_host:
        stage2 = stage2_script(command=command, hold=hold, cwd=cwd, env=env or {})
        entries.append(("labkit/stage2", S_IFREG | 0o755, stage2.encode(), (0, 0)))
    if command is not None:
        entries.append(("labkit/cmd", S_IFREG | 0o644, command.encode() + b"\n", (0, 0)))
    init = init_script(command=command, share_host=share_host, hold=hold, cwd=cwd, modules=modules, nic=nic)
    entries.append(("init", S_IFREG | 0o755, init.encode(), (0, 0)))
    return cpio_newc(entries)
