"""The guest's /init (busybox sh) and, for a host-sharing guest, the stage run after switch_root.

Both print markers on the console (labkit.vm.console) that the host parses.
"""
from __future__ import annotations

import shlex
from typing import Iterable

from .console import MARK


def init_script(*, command: str | None, share_host: bool, hold: bool, cwd: str = "/",
                modules: Iterable[str] = (), nic: tuple[str, str] | None = None) -> str:
    """/init of the initramfs (busybox sh). It prints markers the host parses on the console."""
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "export PATH=/bin",
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev",
        "echo 1 > /proc/sys/kernel/printk   # keep kernel messages off the console we parse",
        f"echo '{MARK}INIT@@'",
        "fail() { echo \"" + MARK + "FAIL@@ $*\"; poweroff -f; }",
    ]
    if nic:  # no IPv6 chatter (router solicitations, DAD): every packet on the NIC is one we sent
        lines.append("echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
    lines += [f"insmod /modules/{m}.ko || fail insmod {m}" for m in modules]
    if nic:
        lines += _nic_lines(*nic)
    lines.append(f"echo \"{MARK}INFO@@ kernel=$(uname -r) cpus=$(nproc) "
                 "memtotal_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo) "
                 "boot_id=$(cat /proc/sys/kernel/random/boot_id) net=$(ls /sys/class/net | tr '\\n' ,)\"")
    if share_host:
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


def _nic_lines(mac: str, address: str) -> list[str]:
    """Find the card by its MAC (the driver probes it asynchronously, so wait briefly), address it, up."""
    return [
        "i=0; until found=$(grep -l '^" + mac + "$' /sys/class/net/*/address 2>/dev/null); do "
        "i=$((i+1)); [ $i -gt 100 ] && fail no NIC with MAC " + mac + "; sleep 0.1; done",
        "nic=${found%/address}; nic=${nic##*/}",
        "ip link set lo up && ip addr add " + address + " dev $nic && ip link set $nic up || fail configure $nic",
        f"echo \"{MARK}NIC@@ ifname=$nic address={address} mac={mac}\"",
    ]


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
