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
  because /dev/kvm can exist and still hang), otherwise with TCG, qemu's CPU emulator.

Two kinds of guest:

- plain (`boot`): busybox is the whole userland; init prints what the guest sees (kernel version,
  CPU count, MemTotal), runs one command and powers off;
- host-sharing (`run`, or `boot(share_host=True)`): the host's filesystem is shared read-only over
  9p, a tmpfs is laid over it with overlayfs (guest writes land in guest RAM, never on the host),
  init `switch_root`s into it and mounts a pure cgroup-v2 hierarchy. The host's own Python then
  runs in the guest - the pure cgroup-v2 test tier uses this.

The guest talks back over its serial console (qemu's stdout); lines starting with ``@@LABKIT:``
are markers the host parses (see `parse_marker`). The guest has no network device at all.

Everything is released on success, error and interrupt: the qemu process (only the one started
here) is killed and its scratch directory (/run/labkit/vm/labkit-vm-...) removed. Both are claimed
in labkit.cleanup as kind "vm", so a sweep finds them if the owner died (`find_leftovers`).

arm64: the same code drives qemu-system-aarch64 (`-M virt`, console ttyAMA0) with Debian's
linux-image-arm64; written from qemu's documentation, not tested on an arm64 machine yet.
"""
from __future__ import annotations

import glob
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from . import cleanup
from .errors import InvalidValue, LabkitError, NotFound, Unsupported

KIND = "vm"
VM_DIR = cleanup.STATE_DIR / "vm"                  # scratch dirs, one per VM, named labkit-vm-...
KVM_PROBE_FILE = cleanup.STATE_DIR / "kvm-probe"   # cached answer of kvm_usable()
KVM_DEVICE = "/dev/kvm"
KERNEL_CACHE = Path(os.environ.get("LABKIT_KERNEL_DIR", "/var/cache/labkit/kernel"))
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")  # busybox-static installs /bin/busybox

MARK = "@@LABKIT:"

# Per architecture: which qemu, which machine, which serial console, which Debian kernel package.
ARCHES = {
    "x86_64": dict(qemu="qemu-system-x86_64", machine="pc", console="ttyS0",
                   package="linux-image-amd64", flavours=("amd64", "generic"), cpu_kvm=None, cpu_tcg=None),
    "aarch64": dict(qemu="qemu-system-aarch64", machine="virt", console="ttyAMA0",
                    package="linux-image-arm64", flavours=("arm64", "generic"), cpu_kvm="host",
                    cpu_tcg="max"),
}

# Modules the host-sharing guest loads, in dependency order (verified with Debian's 6.1 kernel):
# virtio PCI transport, then 9p over virtio, then overlayfs; loop for the io-controller tests.
SHARE_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                 "virtio_pci", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p", "overlay", "loop")

# Rough boot times (seconds to init), only used to move the progress bar before init speaks.
EXPECTED_BOOT = {"kvm": 1.5, "tcg": 7.0}

ProgressCallback = Callable[["Progress"], None]


# --- values: memory, CPUs, accelerator --------------------------------------------------------------

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


def check_accel(value) -> str:
    if value not in ("auto", "kvm", "tcg"):
        raise InvalidValue("accel", value, "'auto' (KVM if it really works, else TCG), 'kvm' or 'tcg'")
    return value


def arch_info(machine: str | None = None) -> dict:
    machine = machine or os.uname().machine
    if machine not in ARCHES:
        raise Unsupported(f"labkit.vm knows x86_64 and aarch64, not {machine!r}")
    return ARCHES[machine]


def qemu_binary(machine: str | None = None) -> str | None:
    """Path of the qemu system emulator for this architecture, or None if not installed."""
    return shutil.which(arch_info(machine)["qemu"])


# --- the kernel: Debian's own ------------------------------------------------------------------------

@dataclass
class Kernel:
    image: Path              # vmlinuz-<version>
    version: str             # e.g. 6.1.0-56-amd64
    modules: Path | None     # lib/modules/<version>, if present
    source: str              # "cache" or "/boot"


def _version_key(version: str):
    """Sort 6.1.0-10 after 6.1.0-9 and after 6.1.0-rc1; numbers and words stay comparable."""
    return [(1, int(p), "") if p.isdigit() else (0, 0, p) for p in re.split(r"[.-]", version)]


def find_kernel(machine: str | None = None, cache: Path | None = None) -> Kernel:
    """The newest Debian kernel of this architecture: extracted cache first, then /boot.

    Debian names its kernels vmlinuz-<version>-amd64 (-arm64); Ubuntu's -generic is accepted too.
    """
    flavours = arch_info(machine)["flavours"]
    cache = KERNEL_CACHE if cache is None else cache
    for root, source in ((cache, "cache"), (Path("/"), "/boot")):
        images = [p for flavour in flavours for p in glob.glob(str(root / "boot" / f"vmlinuz-*-{flavour}"))]
        versions = sorted((Path(p).name.removeprefix("vmlinuz-") for p in images), key=_version_key)
        for version in reversed(versions):
            image = root / "boot" / f"vmlinuz-{version}"
            if not os.access(image, os.R_OK):
                continue
            modules = root / "lib" / "modules" / version
            return Kernel(image, version, modules if modules.is_dir() else None, source)
    raise NotFound(f"no Debian {flavours[0]} kernel in {KERNEL_CACHE}/boot or /boot: run "
                   f"`labkit vm fetch-kernel` (apt-get download {arch_info(machine)['package']} + dpkg -x "
                   f"into {KERNEL_CACHE}) or `apt-get install {arch_info(machine)['package']}`")


def fetch_kernel(machine: str | None = None, dest: Path = KERNEL_CACHE) -> Kernel:
    """Extract Debian's kernel package into `dest` without installing it (no initramfs generation).

    `apt-get download` fetches the .deb from the configured Debian mirror; `dpkg -x` unpacks it.
    The meta package (linux-image-amd64) only depends on the versioned one, so resolve that first.
    """
    meta = arch_info(machine)["package"]
    depends = subprocess.run(["apt-cache", "depends", "--important", meta],
                             capture_output=True, text=True, check=True).stdout
    names = re.findall(r"Depends:\s*(linux-image-\S+)", depends)
    if not names:
        raise NotFound(f"apt-cache does not know which kernel {meta} depends on; run apt-get update")
    with tempfile.TemporaryDirectory(prefix="labkit-kernel-") as tmp:
        try:  # apt downloads as the unprivileged _apt user: let it write here
            import pwd
            os.chown(tmp, pwd.getpwnam("_apt").pw_uid, -1)
        except (KeyError, OSError):
            pass
        subprocess.run(["apt-get", "download", names[0]], cwd=tmp, check=True)
        deb = next(Path(tmp).glob("*.deb"))
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
    return find_kernel(machine, cache=dest)


# --- the initramfs: a cpio archive written by hand ---------------------------------------------------

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


def is_static_elf(data: bytes) -> bool:
    """True for an ELF executable without a PT_INTERP header: it needs no dynamic loader or libc."""
    import struct
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only (x86_64, aarch64)
        return False
    order = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    types = [struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP = 3


def find_busybox() -> Path:
    """A statically linked busybox: the initramfs has no libc for a dynamic one to load."""
    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path):
            with open(path, "rb") as f:
                if is_static_elf(f.read(65536)):
                    return Path(path)
    raise NotFound("no statically linked busybox in " + " or ".join(BUSYBOX_CANDIDATES) +
                   ": `apt-get install busybox-static` (the VM's whole userland)")


def _module_bytes(modules_dir: Path, name: str) -> bytes:
    """A module's .ko, decompressed if the distribution ships it compressed (busybox insmod can't)."""
    for path in modules_dir.rglob(name + ".ko*"):
        data = path.read_bytes()
        if path.suffix == ".xz":
            import lzma
            data = lzma.decompress(data)
        elif path.suffix == ".gz":
            import gzip
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


def init_script(*, command: str | None, share_host: bool, hold: bool, cwd: str = "/",
                modules: Iterable[str] = ()) -> str:
    """/init of the initramfs (busybox sh). It prints markers the host parses on the console."""
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev",
        "echo 1 > /proc/sys/kernel/printk   # keep kernel messages off the console we parse",
        f"echo '{MARK}INIT@@'",
        f"echo \"{MARK}INFO@@ kernel=$(uname -r) cpus=$(nproc) "
        "memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo) "
        "boot_id=$(cat /proc/sys/kernel/random/boot_id) net=$(ls /sys/class/net | tr '\\n' ,)\"",
        "fail() { echo \"" + MARK + "FAIL@@ $*\"; poweroff -f; }",
    ]
    if share_host:
        lines += [f"insmod /modules/{m}.ko || fail insmod {m}" for m in modules]
        lines += [
            f"echo '{MARK}STAGE@@ mounting the host filesystem (9p, read-only)'",
            "mkdir -p /host /rw /newroot",
            # the virtio device appears asynchronously after virtio_pci loads: retry briefly
            "i=0; until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose "
            "host /host 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && fail mount 9p; sleep 0.1; done",
            "mount -t tmpfs -o mode=755 tmpfs /rw && mkdir /rw/upper /rw/work",
            "mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot "
            "|| fail mount overlay",
            # A fresh /run: the host's runtime state (labkit's owner records, /run/netns, pid files)
            # is not the guest's. /tmp stays the host's (through the overlay, so still read-only
            # underneath): the checkout the guest runs may well live there.
            "mount -t tmpfs -o mode=755 tmpfs /newroot/run",
            "mkdir /newroot/run/labkit-guest && cp /bin/busybox /labkit/* /newroot/run/labkit-guest/",
            "for d in proc sys dev; do mount --move /$d /newroot/$d; done",
            "exec switch_root /newroot /bin/sh /run/labkit-guest/stage2",
        ]
        return "\n".join(lines) + "\n"
    lines += _command_lines(command, hold, cwd, bb="")
    return "\n".join(lines) + "\n"


def stage2_script(*, command: str | None, hold: bool, cwd: str, env: dict[str, str]) -> str:
    """Runs (with the host's /bin/sh) after switch_root into the host filesystem + tmpfs overlay."""
    bb = "/run/labkit-guest/busybox "
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    lines = [
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root",
        f"export {exports}" if exports else "",
        "mkdir -p /dev/shm /dev/pts; mount -t tmpfs tmpfs /dev/shm; mount -t devpts devpts /dev/pts",
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup",  # the pure v2 hierarchy, all controllers
        f"echo \"{MARK}CGROUP@@ $(cat /sys/fs/cgroup/cgroup.controllers)\"",
        f"{bb}hostname labkit-guest",
    ]
    lines += _command_lines(command, hold, cwd, bb=bb)
    return "\n".join(line for line in lines if line) + "\n"


def _command_lines(command: str | None, hold: bool, cwd: str, bb: str) -> list[str]:
    lines = [f"echo '{MARK}READY@@'"]
    if command is not None:
        cmd_file = "/run/labkit-guest/cmd" if bb else "/labkit/cmd"
        lines += [
            f"echo '{MARK}CMD-BEGIN@@'",
            f"(cd {shlex.quote(cwd)} && exec /bin/sh {cmd_file}) </dev/null 2>&1; rc=$?",
            f"echo \"{MARK}CMD-END@@ $rc\"",
        ]
    if hold:  # stay up until the host sends a line on the console (VM.stop)
        lines.append("read line")
    lines += [f"echo '{MARK}POWEROFF@@'", f"{bb}poweroff -f"]
    return lines


def build_initramfs(*, kernel: Kernel | None, command: str | None = None, share_host: bool = False,
                    hold: bool = False, cwd: str = "/", env: dict[str, str] | None = None,
                    busybox: Path | None = None) -> bytes:
    """The whole initramfs for one VM, as bytes (written to the VM's scratch dir)."""
    busybox = busybox or find_busybox()
    entries = [(d, S_IFDIR | 0o755, b"", (0, 0))
               for d in ("bin", "dev", "proc", "sys", "modules", "labkit", "run", "tmp")]
    entries.append(("dev/console", S_IFCHR | 0o600, b"", (5, 1)))  # the kernel opens it before /init
    entries.append(("bin/busybox", S_IFREG | 0o755, busybox.read_bytes(), (0, 0)))
    modules = ()
    if share_host:
        if kernel is None or kernel.modules is None:
            raise NotFound("sharing the host filesystem needs the kernel's modules (9p, virtio, overlay); "
                           "run `labkit vm fetch-kernel`")
        modules = [m for m in SHARE_MODULES if m not in builtin_modules(kernel.modules)]
        for name in modules:
            entries.append((f"modules/{name}.ko", S_IFREG | 0o644, _module_bytes(kernel.modules, name), (0, 0)))
        stage2 = stage2_script(command=command, hold=hold, cwd=cwd, env=env or {})
        entries.append(("labkit/stage2", S_IFREG | 0o755, stage2.encode(), (0, 0)))
    if command is not None:
        entries.append(("labkit/cmd", S_IFREG | 0o644, command.encode() + b"\n", (0, 0)))
    init = init_script(command=command, share_host=share_host, hold=hold, cwd=cwd, modules=modules)
    entries.append(("init", S_IFREG | 0o755, init.encode(), (0, 0)))
    return cpio_newc(entries)


# --- the qemu command line ---------------------------------------------------------------------------

def kernel_cmdline(console: str) -> str:
    # quiet + loglevel: the console carries our markers; panic=-1 + -no-reboot: a dying guest exits qemu
    return f"console={console} quiet loglevel=1 panic=-1 rdinit=/init"


def qemu_command(*, qemu: str, kernel: Path, initrd: Path, memory_mib: int, cpus: int, accel: str,
                 name: str, share_host: bool, machine: str | None = None) -> list[str]:
    """The qemu argv: no default devices, no network, no display; serial console on stdio."""
    info = arch_info(machine)
    cmd = [qemu, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
           "-machine", info["machine"], "-m", str(memory_mib), "-smp", str(cpus),
           "-serial", "stdio", "-no-reboot", "-net", "none",
           "-kernel", str(kernel), "-initrd", str(initrd), "-append", kernel_cmdline(info["console"])]
    cmd += ["-accel", "kvm"] if accel == "kvm" else ["-accel", "tcg"]
    cpu = info["cpu_kvm"] if accel == "kvm" else info["cpu_tcg"]
    if cpu:
        cmd += ["-cpu", cpu]
    if share_host:
        cmd += ["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"]
    return cmd


# --- what the guest says ---------------------------------------------------------------------------

def parse_marker(line: str) -> tuple[str, str] | None:
    """('INFO', 'kernel=... cpus=...') for a marker line, None for ordinary output."""
    match = re.search(re.escape(MARK) + r"([A-Z-]+)@@ ?(.*)$", line)
    return (match.group(1), match.group(2).strip()) if match else None


def parse_info(text: str) -> dict:
    """'kernel=6.1.0 cpus=1 memtotal_kb=20000' -> {'kernel': '6.1.0', 'cpus': 1, 'memtotal_kb': 20000}."""
    info = {}
    for key, _, value in (item.partition("=") for item in text.split()):
        info[key] = int(value) if value.isdigit() else value
    return info


class ConsoleReader:
    """Turns the raw bytes of qemu's stdout into lines (the serial line adds \\r)."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, b""
        return [rest.decode("utf-8", "replace").rstrip("\r")] if rest.strip() else []


# --- progress ----------------------------------------------------------------------------------------

@dataclass
class Progress:
    stage: str         # what is happening now, for humans
    fraction: float    # 0..1, an estimate until the guest speaks
    elapsed: float     # seconds since qemu started


def print_progress(stream=None) -> ProgressCallback:
    """A callback that redraws one progress line (a terminal) or prints each new stage (a log)."""
    import sys
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = {"stage": None}

    def show(p: Progress):
        if tty:
            bar = "#" * int(p.fraction * 20)
            end = "\n" if p.fraction >= 1 else ""
            stream.write(f"\r\033[K[{bar:<20}] {p.elapsed:5.1f}s {p.stage}{end}")
            stream.flush()
        elif p.stage != last["stage"]:
            stream.write(f"[{p.elapsed:5.1f}s] {p.stage}\n")
            stream.flush()
        last["stage"] = p.stage
    return show


def notebook_progress(description: str = "VM") -> ProgressCallback:
    """A callback that drives an ipywidgets progress bar (shown when created), or prints if absent."""
    try:
        import ipywidgets as w
        from IPython.display import display
    except ImportError:
        return print_progress()
    bar = w.FloatProgress(min=0, max=1, description=description)
    label = w.Label()
    display(w.HBox([bar, label]))

    def show(p: Progress):
        bar.value = p.fraction
        label.value = f"{p.elapsed:.1f}s {p.stage}"
        if p.fraction >= 1:
            bar.bar_style = "success"
    return show


# --- KVM: does it really work? -----------------------------------------------------------------------

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def kvm_usable(timeout: float = 10.0, refresh: bool = False) -> bool:
    """Boot a probe VM with KVM; True only if its init speaks within `timeout` seconds.

    /dev/kvm can exist and still not work (nested virtualisation: qemu aborts on an MSR, or spins
    at 100% without booting), so the device alone proves nothing. The answer is cached in
    /run/labkit/kvm-probe for this boot of the host (keyed by boot_id, kernel and qemu).
    """
    from .host import is_lab_host, is_root

    if not os.path.exists(KVM_DEVICE) or not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return False
    if not (is_root() and is_lab_host()):
        return False  # may not boot the probe VM here; answer without caching a guess
    qemu = qemu_binary()
    if qemu is None:
        return False
    try:
        kernel = find_kernel()
    except NotFound:
        return False
    key = f"{_boot_id()} {os.uname().release} {qemu} {kernel.image}"
    if not refresh:
        try:
            cached = json.loads(KVM_PROBE_FILE.read_text())
            if cached.get("key") == key:
                return bool(cached["usable"])
        except (OSError, ValueError, KeyError):
            pass
    usable, reason = False, ""
    try:
        with VM(accel="kvm", memory="128M", timeout=timeout) as vm:
            vm.wait_ready()
            usable = True
    except LabkitError as exc:
        reason = str(exc)[:300]
    KVM_PROBE_FILE.parent.mkdir(parents=True, exist_ok=True)
    KVM_PROBE_FILE.write_text(json.dumps({"key": key, "usable": usable, "reason": reason,
                                          "probed_at": time.time()}))
    return usable


def choose_accel(accel: str = "auto") -> tuple[str, str]:
    """(accelerator, why) for a requested 'auto' | 'kvm' | 'tcg'."""
    check_accel(accel)
    if accel == "tcg":
        return "tcg", "asked for TCG"
    if accel == "kvm":
        return "kvm", "asked for KVM"
    if not os.path.exists(KVM_DEVICE):
        return "tcg", "no /dev/kvm: TCG emulates the CPU in software"
    if kvm_usable():
        return "kvm", "KVM probe booted"
    return "tcg", "/dev/kvm exists but a probe VM did not boot with it (see /run/labkit/kvm-probe)"


# --- the VM ------------------------------------------------------------------------------------------

class VMError(LabkitError):
    """The guest did not boot, did not answer in time, or reported a failure."""


@dataclass
class BootResult:
    accel: str                    # "kvm" or "tcg"
    accel_reason: str
    boot_seconds: float           # qemu start -> the guest's /init runs
    ready_seconds: float          # qemu start -> ready to run the command (after switch_root if shared)
    command_seconds: float | None
    poweroff_seconds: float       # power-off requested -> qemu process gone
    total_seconds: float          # qemu start -> qemu gone
    qemu_rss_bytes: int           # peak resident memory of the qemu process seen while it ran
    memory_mib: int               # RAM given to the guest
    cpus: int
    guest_kernel: str
    guest_cpus: int
    guest_memtotal_kb: int
    guest_boot_id: str            # a fresh one per kernel boot: the guest is a kernel of its own
    guest_net: list[str]          # network interfaces in the guest (no NIC is given: only lo)
    host_kernel: str
    kernel_image: str
    share_host: bool
    cgroup_controllers: list[str] = field(default_factory=list)  # in the guest, host-sharing only
    returncode: int | None = None  # of the command, if one ran
    output: str = ""               # of the command

    def as_dict(self) -> dict:
        return asdict(self)


class VM:
    """One qemu process and its scratch directory; a context manager that always cleans up.

        with VM(memory="256M") as vm:      # qemu starts here
            vm.wait_ready()                # the guest's init is running
            print(vm.info)                 # what the guest sees
        # qemu is gone, the scratch dir removed

    `boot()` and `run()` below are the one-call versions.
    """

    def __init__(self, *, memory="256M", cpus=1, accel="auto", command: str | None = None,
                 share_host: bool = False, hold: bool = False, cwd: str = "/",
                 env: dict[str, str] | None = None, timeout: float = 120.0,
                 progress: ProgressCallback | None = None,
                 on_output: Callable[[str], None] | None = None, cgroup: bool = True):
        # validate everything before anything is created
        self.memory_mib = parse_memory(memory)
        self.cpus = check_cpus(cpus)
        check_accel(accel)
        if command is not None and not isinstance(command, str):
            raise InvalidValue("command", command, "a shell command line (a string)")
        self.qemu = qemu_binary()
        if self.qemu is None:
            raise Unsupported(f"{arch_info()['qemu']} is missing: `apt-get install qemu-system-x86` "
                              "(qemu-system-arm on arm64)")
        self.kernel = find_kernel()
        self.busybox = find_busybox()
        self.requested_accel, self.command, self.share_host, self.hold = accel, command, share_host, hold
        self.cwd, self.env, self.timeout = cwd, dict(env or {}), timeout
        self.progress, self.on_output, self.use_cgroup = progress, on_output, cgroup
        self.name = cleanup.unique_name("vm")
        self.dir = VM_DIR / self.name
        self.proc: subprocess.Popen | None = None
        self.cgroup = None
        self.accel = self.accel_reason = ""
        self.info: dict = {}
        self.controllers: list[str] = []
        self.output_lines: list[str] = []
        self.returncode: int | None = None
        self.times: dict[str, float] = {}
        self.peak_rss = 0
        self._reader = ConsoleReader()
        self._recent: deque[str] = deque(maxlen=15)  # every console line, for error messages
        self._t0 = 0.0
        self._stage = ""
        self._capturing = False

    # lifecycle

    def __enter__(self) -> "VM":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        from .host import require_lab_host

        require_lab_host("boot a VM")
        self.accel, self.accel_reason = choose_accel(self.requested_accel)
        self._emit("building the initramfs", 0.0)
        cleanup.claim(KIND, self.name)
        try:
            self.dir.mkdir(parents=True)
            initrd = self.dir / "initrd.cpio"
            guest_env = {"LABKIT_ALLOW_HOST": "1", **self.env}
            initrd.write_bytes(build_initramfs(kernel=self.kernel, command=self.command,
                                               share_host=self.share_host, hold=self.hold,
                                               cwd=self.cwd, env=guest_env, busybox=self.busybox))
            argv = qemu_command(qemu=self.qemu, kernel=self.kernel.image, initrd=initrd,
                                memory_mib=self.memory_mib, cpus=self.cpus, accel=self.accel,
                                name=self.name, share_host=self.share_host)
            self._stderr = open(self.dir / "qemu.stderr", "wb")
            self._t0 = time.monotonic()
            # own session: a Ctrl-C in the terminal reaches us, and we (not the tty) stop qemu
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, start_new_session=True)
            self._join_cgroup()
            self._emit("kernel booting", 0.02)
        except BaseException:
            self.close()
            raise

    def _join_cgroup(self) -> None:
        """Put qemu into a labkit cgroup (if labkit.cgroups is available) so a sweep finds it too."""
        if not self.use_cgroup:
            return
        try:
            from .cgroups import Cgroup
        except ImportError:
            return
        self.cgroup = Cgroup.create(name=self.name)
        self.cgroup.add(self.proc.pid)

    def close(self) -> None:
        """Kill qemu if it still runs, remove the cgroup and the scratch dir, forget the claim."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except (OSError, BrokenPipeError):
                    pass
        if getattr(self, "_stderr", None):
            self._stderr.close()
        if self.cgroup is not None:
            self.cgroup.delete()
            self.cgroup = None
        shutil.rmtree(self.dir, ignore_errors=True)
        cleanup.release(KIND, self.name)

    # talking to the guest

    def _emit(self, stage: str, fraction: float) -> None:
        self._stage = stage
        if self.progress:
            elapsed = time.monotonic() - self._t0 if self._t0 else 0.0
            self.progress(Progress(stage, min(fraction, 1.0), elapsed))

    def _sample_rss(self) -> None:
        try:
            import psutil
            self.peak_rss = max(self.peak_rss, psutil.Process(self.proc.pid).memory_info().rss)
        except Exception:  # qemu just exited: keep the last sample
            pass

    def _fail(self, why: str) -> VMError:
        try:
            stderr = (self.dir / "qemu.stderr").read_text(errors="replace").strip()[-600:]
        except OSError:
            stderr = ""
        tail = "\n".join(self._recent)
        return VMError(f"VM {self.name} ({self.accel}): {why}"
                       + (f"\nqemu stderr: {stderr}" if stderr else "")
                       + (f"\nlast console lines:\n{tail}" if tail else ""))

    def _handle(self, line: str) -> None:
        self._recent.append(line)
        marker = parse_marker(line)
        now = time.monotonic() - self._t0
        if marker is None:
            if self._capturing:
                self.output_lines.append(line)
                if self.on_output:
                    self.on_output(line)
            return
        kind, text = marker
        self.times.setdefault(kind, now)
        if kind == "INIT":
            self._emit("guest init running", 0.8 if self.share_host else 0.9)
        elif kind == "INFO":
            self.info = parse_info(text)
            self._sample_rss()
        elif kind == "STAGE":
            self._emit(text, 0.85)
        elif kind == "CGROUP":
            self.controllers = text.split()
        elif kind == "READY":
            self._sample_rss()
            self._emit("guest ready" + (", running the command" if self.command else ""), 0.95)
        elif kind == "CMD-BEGIN":
            self._capturing = True
        elif kind == "CMD-END":
            self._capturing = False
            self.returncode = int(text) if text.lstrip("-").isdigit() else None
            self._sample_rss()
        elif kind == "POWEROFF":
            self._emit("powering off", 0.98)
        elif kind == "FAIL":
            raise self._fail(f"guest init failed: {text}")

    def wait_for(self, marker: str, timeout: float | None = None) -> None:
        """Read the console until `marker` was seen (or qemu exits, or time runs out)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        fd = self.proc.stdout.fileno()
        expected = EXPECTED_BOOT.get(self.accel, 7.0) * (1.6 if self.share_host else 1.0)
        while marker not in self.times:
            if time.monotonic() > deadline:
                raise self._fail(f"no {marker} from the guest within {self.timeout:.0f}s")
            ready, _, _ = select.select([fd], [], [], 0.25)
            self._sample_rss()  # peak RSS: sampled all along, qemu may be gone right after power-off
            if ready:
                data = os.read(fd, 65536)
                if not data:  # qemu closed its stdout: it exited
                    for line in self._reader.flush():
                        self._handle(line)
                    self.proc.wait(timeout=10)
                    self._mark_exit()
                    if marker not in self.times:
                        raise self._fail(f"qemu exited (status {self.proc.returncode}) before {marker}")
                    return
                for line in self._reader.feed(data):
                    self._handle(line)
            elif "INIT" not in self.times:  # nothing said yet: move the bar on the expected time
                elapsed = time.monotonic() - self._t0
                self._emit("kernel booting", 0.02 + 0.75 * min(elapsed / expected, 1.0))
            else:
                self._emit(self._stage, 0.95 if "READY" in self.times else 0.85)

    def wait_ready(self) -> dict:
        self.wait_for("READY")
        return self.info

    def wait_exit(self) -> None:
        """Wait until the guest powered itself off and qemu exited."""
        self.wait_for("__EXIT__")  # never printed: returns when qemu closes its stdout

    def stop(self) -> None:
        """Ask a held guest to power off (a line on its console), then wait for qemu to go."""
        if self.proc and self.proc.poll() is None:
            self.times.setdefault("STOP", time.monotonic() - self._t0)
            try:
                self.proc.stdin.write(b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.wait_for("__EXIT__", timeout=30)
            except VMError:
                pass

    def rss(self) -> int:
        self._sample_rss()
        return self.peak_rss

    def result(self) -> BootResult:
        t = self.times
        exit_t = t.get("__EXIT__", time.monotonic() - self._t0)
        off_from = t.get("POWEROFF", t.get("STOP", exit_t))
        command_s = t["CMD-END"] - t["CMD-BEGIN"] if "CMD-END" in t and "CMD-BEGIN" in t else None
        return BootResult(
            accel=self.accel, accel_reason=self.accel_reason,
            boot_seconds=round(t.get("INIT", 0.0), 3), ready_seconds=round(t.get("READY", 0.0), 3),
            command_seconds=None if command_s is None else round(command_s, 3),
            poweroff_seconds=round(exit_t - off_from, 3), total_seconds=round(exit_t, 3),
            qemu_rss_bytes=self.peak_rss, memory_mib=self.memory_mib, cpus=self.cpus,
            guest_kernel=str(self.info.get("kernel", "")), guest_cpus=int(self.info.get("cpus", 0) or 0),
            guest_memtotal_kb=int(self.info.get("memtotal_kb", 0) or 0),
            guest_boot_id=str(self.info.get("boot_id", "")),
            guest_net=[n for n in str(self.info.get("net", "")).split(",") if n],
            host_kernel=os.uname().release,
            kernel_image=str(self.kernel.image), share_host=self.share_host,
            cgroup_controllers=self.controllers, returncode=self.returncode,
            output="\n".join(self.output_lines))

    def _mark_exit(self) -> None:
        self.times.setdefault("__EXIT__", time.monotonic() - self._t0)
        self._emit("powered off", 1.0)


def boot(command: str | None = None, *, memory="256M", cpus=1, accel="auto", share_host=False,
         cwd="/", env=None, timeout=120.0, progress: ProgressCallback | None = None,
         on_output: Callable[[str], None] | None = None) -> BootResult:
    """Boot a VM, optionally run one shell command in it, power it off; measurements in the result."""
    with VM(memory=memory, cpus=cpus, accel=accel, command=command, share_host=share_host, cwd=cwd,
            env=env, timeout=timeout, progress=progress, on_output=on_output) as vm:
        vm.wait_exit()
        if "READY" not in vm.times:
            raise vm._fail("the guest powered off before it was ready")
        return vm.result()


def run(command: str, *, memory="512M", cpus=1, accel="auto", cwd="/", env=None, timeout=180.0,
        progress=None, on_output=None) -> BootResult:
    """Run a shell command in a VM that sees the host's files read-only (writes go to guest RAM)."""
    return boot(command, memory=memory, cpus=cpus, accel=accel, share_host=True, cwd=cwd, env=env,
                timeout=timeout, progress=progress, on_output=on_output)


# --- leftovers: qemu processes and scratch dirs of dead owners ---------------------------------------

def _labkit_qemus() -> dict[str, int]:
    """{vm name: pid} of qemu processes whose command line names a labkit VM scratch dir."""
    found = {}
    pattern = re.compile(re.escape(str(VM_DIR)) + r"/(" + re.escape(cleanup.PREFIX) + r"[A-Za-z0-9-]+)/")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or b"qemu-system" not in os.path.basename(argv[0]):
            continue
        match = pattern.search(b" ".join(argv).decode(errors="replace"))
        if match:
            found[match.group(1)] = int(entry.name)
    return found


def find_leftovers() -> Iterable[cleanup.Leftover]:
    qemus = _labkit_qemus()
    names = set(qemus)
    if VM_DIR.is_dir():
        names |= {p.name for p in VM_DIR.iterdir() if p.name.startswith(cleanup.PREFIX)}
    for name in sorted(names):
        pid = qemus.get(name)
        where = f"qemu pid {pid}, {VM_DIR / name}" if pid else str(VM_DIR / name)
        yield cleanup.leftover(KIND, name, where, qemu_pid=pid)


def remove_leftover(item: cleanup.Leftover) -> None:
    if item.kind != KIND:
        return
    pid = _labkit_qemus().get(item.name)  # looked up again: the pid must still be that qemu
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.05)
    shutil.rmtree(VM_DIR / item.name, ignore_errors=True)
    cleanup.release(KIND, item.name)
