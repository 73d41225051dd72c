"""One VM: qemu started, the console read until the guest is ready, everything released afterwards."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable

import psutil

from .. import cleanup, emulation, host, syscalls
from ..binaries import find_busybox
from ..cgroups import Cgroup
from ..errors import InvalidValue, LabkitError, Unsupported
from . import accel
from .accel import check_accel
from .console import ConsoleReader, parse_info, parse_marker
from .initramfs import build_initramfs
from .kernel import find_kernel
from .nic import VmNic
from .qemu import arch_info, check_cpus, parse_memory, qemu_binary, qemu_command


KIND = "vm"
VM_DIR = cleanup.STATE_DIR / "vm"                  # scratch dirs, one per VM, named labkit-vm-...
# Rough boot times (seconds to init), only used to move the progress bar before init speaks.
EXPECTED_BOOT = {"kvm": 1.5, "tcg": 7.0}
# Seconds a guest may take to get ready, on hardware (stretched on an emulated CPU: labkit.emulation).
BOOT_TIMEOUT = 120.0
ProgressCallback = Callable[["Progress"], None]


@dataclass
class Progress:
    stage: str         # what is happening now, for humans
    fraction: float    # 0..1, an estimate until the guest speaks
    elapsed: float     # seconds since qemu started


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
    guest_net: list[str]          # network interfaces in the guest (only lo unless a network was given)
    host_kernel: str
    kernel_image: str
    share_host: bool
    cgroup_controllers: list[str] = field(default_factory=list)  # in the guest, host-sharing only
    nic: dict = field(default_factory=dict)  # the guest's NIC, as its /init reported it: ifname, address, mac
    tap: str = ""                  # the tap on the lab bridge that is the NIC's host side
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
                 env: dict[str, str] | None = None, timeout: float = BOOT_TIMEOUT,
                 progress: ProgressCallback | None = None,
                 on_output: Callable[[str], None] | None = None, cgroup: bool = True, network=None):
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
        self.nic = VmNic(network) if network is not None else None  # refuses anything but an open Network
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
        self.nic_info: dict = {}
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
        host.require_lab_host("boot a VM")
        self.accel, self.accel_reason = choose_accel(self.requested_accel)
        self._emit("building the initramfs", 0.0)
        cleanup.claim(KIND, self.name)
        try:
            self.dir.mkdir(parents=True)
            if self.nic:
                self.nic.plug()
            initrd = self.dir / "initrd.cpio"
            guest_env = {"LABKIT_ALLOW_HOST": "1", **self.env}
            initrd.write_bytes(build_initramfs(kernel=self.kernel, command=self.command,
                                               share_host=self.share_host, hold=self.hold,
                                               cwd=self.cwd, env=guest_env, busybox=self.busybox,
                                               nic=self.nic.guest() if self.nic else None))
            argv = qemu_command(qemu=self.qemu, kernel=self.kernel.image, initrd=initrd,
                                memory_mib=self.memory_mib, cpus=self.cpus, accel=self.accel,
                                name=self.name, share_host=self.share_host,
                                nic=self.nic.qemu_args() if self.nic else ())
            if self.nic:
                argv = self.nic.enter(argv)
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
        """Put qemu into a labkit cgroup, so a sweep finds it too."""
        if not self.use_cgroup:
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
        if self.nic is not None:
            self.nic.unplug()
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
            self.peak_rss = max(self.peak_rss, psutil.Process(self.proc.pid).memory_info().rss)
        except Exception:  # qemu just exited: keep the last sample
            pass

    def failure(self, why: str) -> VMError:
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
        elif kind == "NIC":
            self.nic_info = parse_info(text)
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
            raise self.failure(f"guest init failed: {text}")

    def wait_for(self, marker: str, timeout: float | None = None) -> None:
        """Read the console until `marker` was seen (or qemu exits, or time runs out).

        The deadline is for hardware; on a machine whose own CPU is emulated it is stretched
        (labkit.emulation: a VM here is emulation inside emulation)."""
        limit = emulation.scaled(self.timeout if timeout is None else timeout)
        deadline = time.monotonic() + limit
        fd = self.proc.stdout.fileno()
        expected = emulation.scaled(EXPECTED_BOOT.get(self.accel, 7.0) * (1.6 if self.share_host else 1.0))
        while marker not in self.times:
            if time.monotonic() > deadline:
                raise self.failure(f"no {marker} from the guest within {limit:.0f}s ({emulation.describe()})")
            ready = syscalls.readable([fd], 0.25)
            self._sample_rss()  # peak RSS: sampled all along, qemu may be gone right after power-off
            if ready:
                data = os.read(fd, 65536)
                if not data:  # qemu closed its stdout: it exited
                    for line in self._reader.flush():
                        self._handle(line)
                    self.proc.wait(timeout=10)
                    self._mark_exit()
                    if marker not in self.times:
                        raise self.failure(f"qemu exited (status {self.proc.returncode}) before {marker}")
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
            cgroup_controllers=self.controllers, nic=dict(self.nic_info),
            tap=self.nic.tap if self.nic else "", returncode=self.returncode,
            output="\n".join(self.output_lines))

    def _mark_exit(self) -> None:
        self.times.setdefault("__EXIT__", time.monotonic() - self._t0)
        self._emit("powered off", 1.0)


def boot(command: str | None = None, *, memory="256M", cpus=1, accel="auto", share_host=False,
         cwd="/", env=None, timeout=BOOT_TIMEOUT, progress: ProgressCallback | None = None,
         on_output: Callable[[str], None] | None = None, network=None) -> BootResult:
    """Boot a VM, optionally run one shell command in it, power it off; measurements in the result.
    `network`: a labkit.net.Network the VM joins with a virtio-net NIC (labkit.vm.nic)."""
    with VM(memory=memory, cpus=cpus, accel=accel, command=command, share_host=share_host, cwd=cwd,
            env=env, timeout=timeout, progress=progress, on_output=on_output, network=network) as vm:
        vm.wait_exit()
        if "READY" not in vm.times:
            raise vm.failure("the guest powered off before it was ready")
        return vm.result()


def run(command: str, *, memory="512M", cpus=1, accel="auto", cwd="/", env=None, timeout=180.0,
        progress=None, on_output=None, network=None) -> BootResult:
    """Run a shell command in a VM that sees the host's files read-only (writes go to guest RAM)."""
    return boot(command, memory=memory, cpus=cpus, accel=accel, share_host=True, cwd=cwd, env=env,
                timeout=timeout, progress=progress, on_output=on_output, network=network)


def _boot_kvm_probe(timeout: float) -> None:
    with VM(accel="kvm", memory="128M", timeout=timeout) as vm:
        vm.wait_ready()


def kvm_usable(timeout: float = 10.0, refresh: bool = False) -> bool:
    """Does KVM really work here? Boots a small probe VM once per host boot (see accel.kvm_usable)."""
    return accel.kvm_usable(_boot_kvm_probe, timeout=timeout, refresh=refresh)


def choose_accel(requested: str = "auto") -> tuple[str, str]:
    """(accelerator, why) for a requested 'auto' | 'kvm' | 'tcg'."""
    return accel.choose_accel(requested, kvm_usable)
