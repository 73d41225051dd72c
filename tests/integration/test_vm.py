"""labkit.vm on the real machine: a qemu VM is booted, asked what it sees, and must leave nothing.

Each boot takes ~4-14 s under TCG, so there are few of them. Everything is checked from outside:
/proc (is that qemu process gone?), the VM's scratch directory, and labkit.cleanup's records.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from labkit import cleanup, vm
from labkit.emulation import scaled

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(vm.qemu_binary() is None, reason="qemu-system is not installed")]

PROJECT = Path(__file__).resolve().parents[2]
LABKIT = str(Path(sys.executable).with_name("labkit"))


def qemu_pids_naming(name: str) -> list[int]:
    """Any process on the machine whose command line mentions this VM's name."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(name in arg for arg in proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


def assert_nothing_left(name: str, pid: int | None = None) -> None:
    assert qemu_pids_naming(name) == []
    if pid is not None:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (vm.VM_DIR / name).exists()
    assert cleanup.owner(vm.KIND, name) == (None, False)


def test_boot_runs_a_command_and_the_guest_has_its_own_kernel_cpus_and_ram():
    with vm.VM(memory="192M", cpus=1, command="uname -r; grep MemTotal /proc/meminfo") as machine:
        machine.wait_ready()
        # from outside: a real qemu process, started with the requested RAM, in its own session
        qemu = psutil.Process(machine.proc.pid)
        argv = qemu.cmdline()
        assert "qemu-system" in argv[0] and argv[argv.index("-m") + 1] == "192"
        assert (vm.VM_DIR / machine.name / "initrd.cpio").exists()
        machine.wait_exit()
        result = machine.result()
        name, pid = machine.name, machine.proc.pid
    assert_nothing_left(name, pid)
    assert result.returncode == 0
    assert result.guest_kernel == vm.find_kernel().version       # Debian's kernel, not the host's
    assert result.output.splitlines()[0] == result.guest_kernel  # what `uname -r` said in the guest
    assert result.guest_cpus == 1
    assert 100 * 1024 < result.guest_memtotal_kb < 192 * 1024   # its own RAM, less the kernel's share
    assert result.guest_memtotal_kb < psutil.virtual_memory().total // 1024
    assert result.qemu_rss_bytes > 0 and result.accel in ("kvm", "tcg")


def test_host_sharing_guest_sees_pure_cgroup_v2_and_cannot_write_to_the_host():
    marker = PROJECT / f".{cleanup.unique_name('guestwrite')}"
    result = vm.run(f"touch {marker} && ls {marker} && stat -f -c %T /sys/fs/cgroup", cwd=str(PROJECT))
    assert result.returncode == 0
    assert result.output.split() == [str(marker), "cgroup2fs"]
    assert {"cpuset", "cpu", "io", "memory", "pids"} <= set(result.cgroup_controllers)
    assert not marker.exists()  # the write went to the guest's tmpfs overlay, never to the host


def _processes_using_vm_dir() -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(vm.VM_DIR) in a for a in p.info["cmdline"] or [])}


def test_cli_vm_boot_json_reports_and_leaves_nothing():
    before = set(os.listdir(vm.VM_DIR)) if vm.VM_DIR.exists() else set()
    running_before = _processes_using_vm_dir()     # another owner's VM may be running meanwhile
    out = subprocess.run([LABKIT, "vm", "boot", "--json", "--quiet", "--memory", "128M"],
                         capture_output=True, text=True, timeout=scaled(150),
                         env=dict(os.environ, LABKIT_ALLOW_HOST="1"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["accel"] in ("kvm", "tcg") and report["boot_seconds"] > 0
    assert report["guest_kernel"] == vm.find_kernel().version
    assert 64 * 1024 < report["guest_memtotal_kb"] < 128 * 1024
    after = set(os.listdir(vm.VM_DIR)) if vm.VM_DIR.exists() else set()
    assert after <= before
    assert _processes_using_vm_dir() - running_before == set()


def test_keyboard_interrupt_mid_boot_kills_qemu_and_removes_everything():
    seen = {}

    def interrupt_mid_boot(progress):
        if progress.stage == "kernel booting" and progress.elapsed > 1.0 and not seen:
            seen["name"], seen["pid"] = machine.name, machine.proc.pid
            assert psutil.pid_exists(machine.proc.pid)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered while qemu boots
            time.sleep(1)

    machine = vm.VM(accel="tcg", progress=interrupt_mid_boot)
    with pytest.raises(KeyboardInterrupt):
        with machine:
            machine.wait_exit()
    assert "INIT" not in machine.times  # it really was interrupted before the guest's init ran
    assert_nothing_left(seen["name"], seen["pid"])


def test_sweep_kills_the_qemu_of_a_dead_owner():
    # an owner process that starts a VM and is then killed outright (no finally blocks run)
    owner = subprocess.Popen([sys.executable, "-c",
                              "from labkit import vm\n"
                              "m = vm.VM(accel='tcg', timeout=300); m.start()\n"
                              "print(m.name, m.proc.pid, flush=True)\n"
                              "import time; time.sleep(300)\n"],
                             stdout=subprocess.PIPE, text=True,
                             # no watchdog: this test's own sweep is what is under test
                             env=dict(os.environ, LABKIT_ALLOW_HOST="1", LABKIT_NO_WATCHDOG="1"))
    name, pid = owner.stdout.readline().split()
    owner.kill()
    owner.wait()
    assert psutil.pid_exists(int(pid))  # the orphaned qemu still runs
    found = [item for item in cleanup.find_all() if item.kind == vm.KIND and item.name == name]
    assert len(found) == 1 and not found[0].owner_alive
    removed = cleanup.sweep()
    assert name in {item.name for item in removed}
    assert_nothing_left(name, int(pid))
