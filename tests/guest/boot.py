"""Boot the guest image under qemu and follow what it says on its serial console.

The guest boots Debian's own kernel and initramfs from the image, mounts its ext4 disk as /, and
systemd (PID 1) starts what provisioning enabled - deep-dive-lab.service among it. The work is a unit
made from the kernel command line (`systemd.run=`, systemd-run-generator(8)) that runs
tests/guest/inside.sh from the shared checkout and powers the guest off when it ends; so nothing
of the test harness is baked into the image.

Two 9p shares: the checkout, read-only, at /vagrant (Vagrant's synced folder), and a writable
scratch directory of the host (`out`) for the request, the JUnit reports and executed notebooks.
Test boots open the disk with snapshot=on: the guest's writes go to a scratch file under
labkit's VM directory and are thrown away; the image stays pristine.

The console speaks labkit.vm's marker protocol (`@@LABKIT:KIND@@ text` lines); every other line is
printed as it comes. The qemu process and its scratch directory are claimed like labkit.vm's own
VMs (kind "vm", a name under /run/labkit/vm), so `labkit cleanup` removes them if this process dies.
"""
from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import cleanup, vm

PROJECT = Path(__file__).resolve().parents[2]
INSIDE = "/vagrant/tests/guest/inside.sh"


@dataclass
class BootSpec:
    disk: Path
    kernel: Path
    initrd: Path
    mode: str = "test"                 # "provision" (first boot, writable) or "test"
    snapshot: bool = True              # writes go to a scratch overlay, the image stays pristine
    memory_mib: int = 5120
    cpus: int = 2
    timeout: float = 3600.0
    request: dict = field(default_factory=dict)   # written to out/request.json for inside.sh
    accel: str = "auto"


@dataclass
class BootResult:
    returncode: int | None = None
    facts: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)    # stage -> {"rc": int, "seconds": float}
    out_dir: Path | None = None
    seconds: dict = field(default_factory=dict)   # boot milestones from qemu start
    accel: str = ""


def kernel_cmdline(mode: str) -> str:
    return " ".join([
        "console=ttyS0", "root=/dev/vda", "rw", "quiet", "loglevel=3", "panic=-1",
        "no_timer_check",       # under TCG on a loaded host the boot-time timer IRQ test can panic
        "systemd.show_status=false", "fsck.mode=skip",
        # no login prompt on the console we parse (the learner's box has one; nobody types here)
        "systemd.mask=serial-getty@ttyS0.service",
        f"systemd.run=\"/bin/bash {INSIDE} {mode}\"",
        # systemd.run= alone would boot into kernel-command-line.target, without the lab's service:
        # boot the learner's multi-user.target and pull the command's unit in beside it
        "systemd.unit=multi-user.target", "systemd.wants=kernel-command-line.service",
        "systemd.run_success_action=poweroff", "systemd.run_failure_action=poweroff",
    ])


def qemu_argv(spec: BootSpec, name: str, scratch: Path, out: Path, accel: str) -> list[str]:
    qemu = vm.qemu_binary()
    if qemu is None:
        raise RuntimeError("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    drive = f"file={spec.disk},format=raw,if=virtio,cache=unsafe" + (",snapshot=on" if spec.snapshot else "")
    argv = [qemu, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
            "-machine", "pc", "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
            "-serial", "stdio", "-no-reboot", "-net", "none",
            "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", kernel_cmdline(spec.mode),
            "-drive", drive,
            "-object", "rng-random,filename=/dev/urandom,id=rng0", "-device", "virtio-rng-pci,rng=rng0",
            "-virtfs", f"local,path={PROJECT},mount_tag=vagrant,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out},mount_tag=labkit-out,security_model=none,multidevs=remap",
            "-pidfile", str(scratch / "qemu.pid")]
    # TCG: one host thread per vCPU (multi-threaded TCG), and a CPU model with the instructions
    # numpy's wheels are built for (the default qemu64 dies with "Illegal instruction").
    # Single-threaded TCG by default: with multi-threaded TCG (qemu 7.2 here) the guest kernel died
    # twice of an int3 Oops (in __schedule 35 min into a run, in sched_clock_cpu 2 s into a boot) - a
    # half-patched instruction seen by the other vCPU while the kernel live-patches its code.
    # GUEST_TCG_THREAD=multi runs one host thread per vCPU: faster, where that qemu bug is fixed.
    thread = os.environ.get("GUEST_TCG_THREAD", "single")
    if thread not in ("multi", "single"):
        raise ValueError(f"GUEST_TCG_THREAD={thread!r}: expected multi or single")
    argv += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", f"tcg,thread={thread}", "-cpu", "max"]
    return argv


def boot_guest(spec: BootSpec, out_dir: Path | None = None, echo=print) -> BootResult:
    """Boot, stream the console, wait for power-off. `out_dir` (if given) receives the guest's files."""
    accel, why = vm.choose_accel(spec.accel)
    name = cleanup.unique_name("guest")
    scratch = vm.VM_DIR / name
    cleanup.claim(vm.KIND, name)
    result = BootResult(accel=accel)
    proc = None
    try:
        scratch.mkdir(parents=True)
        out = scratch / "out"
        out.mkdir()
        os.chmod(out, 0o777)
        (out / "request.json").write_text(json.dumps({"mode": spec.mode, **spec.request}))
        argv = qemu_argv(spec, name, scratch, out, accel)
        echo(f"[guest] qemu ({accel}: {why}; {spec.cpus} vCPUs, {spec.memory_mib} MiB, disk "
             f"{'snapshot' if spec.snapshot else 'writable'}): {shlex.join(argv[:3])} ... "
             f"-append {shlex.quote(kernel_cmdline(spec.mode))}")
        env = dict(os.environ, TMPDIR=str(scratch))   # snapshot=on puts its overlay file in TMPDIR
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=open(scratch / "qemu.stderr", "wb"), env=env, start_new_session=True)
        reader = vm.ConsoleReader()
        deadline = t0 + spec.timeout
        fd = proc.stdout.fileno()
        last_output = t0
        while True:
            if time.monotonic() > deadline:
                echo(f"[guest] TIMEOUT after {spec.timeout:.0f}s: killing qemu")
                break
            ready, _, _ = select.select([fd], [], [], 5)
            now = time.monotonic()
            if not ready:
                if now - last_output > 60:
                    echo(f"[guest] ... {now - t0:.0f}s, waiting for the guest")
                    last_output = now
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            last_output = now
            for line in reader.feed(data):
                _handle(line, result, now - t0, echo)
        for line in reader.flush():
            _handle(line, result, time.monotonic() - t0, echo)
        try:      # stdout closed: qemu is exiting (power-off) or we gave up on it
            proc.wait(timeout=5 if result.returncode is None else 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        result.seconds["total"] = round(time.monotonic() - t0, 1)
        stderr = (scratch / "qemu.stderr").read_text(errors="replace").strip()
        if proc.returncode not in (0, None) or (stderr and result.returncode is None):
            echo(f"[guest] qemu exited with status {proc.returncode}; stderr: {stderr[-800:]}")
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            shutil.copytree(out, out_dir)
            result.out_dir = out_dir
        return result
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
        cleanup.release(vm.KIND, name)


def _handle(line: str, result: BootResult, at: float, echo) -> None:
    marker = vm.parse_marker(line)
    if marker is None:
        echo(f"  {line}")
        if "Kernel panic - not syncing" in line:
            result.facts.setdefault("panic", f"at {at:.0f}s: {line.strip()}")
        return
    kind, text = marker
    if kind == "FACT":
        key, _, value = text.partition("=")
        result.facts[key] = value
        echo(f"[guest] {key:<16} {value}")
    elif kind == "MILESTONE":
        result.seconds.setdefault(text, round(at, 1))
        echo(f"[guest] {at:6.1f}s {text}")
    elif kind == "STAGE-BEGIN":
        echo(f"[guest] {at:6.1f}s ---- {text} ----")
        result.stages[text] = {"start": at}
    elif kind == "STAGE-END":
        name, _, rc = text.rpartition(" ")
        stage = result.stages.setdefault(name, {"start": at})
        stage["rc"] = int(rc) if rc.lstrip("-").isdigit() else None
        stage["seconds"] = round(at - stage["start"], 1)
        echo(f"[guest] {at:6.1f}s ---- {name}: exit {rc} in {stage['seconds']:.0f}s ----")
    elif kind == "DONE":
        result.returncode = int(text) if text.lstrip("-").isdigit() else None
        result.seconds.setdefault("done", round(at, 1))
    else:
        echo(f"[guest] {kind}: {text}")


if __name__ == "__main__":   # debugging: python -m tests.guest.boot [facts | shell COMMAND...]
    from tests.guest import image as _image
    img = _image.cached()
    if img is None:
        sys.exit("no cached image: run tests/guest/run.py first")
    mode = sys.argv[1] if len(sys.argv) > 1 else "facts"
    res = boot_guest(BootSpec(disk=img.disk, kernel=img.kernel, initrd=img.initrd, mode=mode,
                              request={"command": " ".join(sys.argv[2:])}))
    print(res)
