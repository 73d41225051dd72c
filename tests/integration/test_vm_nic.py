"""A VM's virtio-net NIC on a lab bridge (labkit.vm.nic): the VM and a container ping each other, the
card is what the kernel says it is on both sides, nothing is left behind (tap, bridge, namespace,
qemu), and the traffic between them never reaches the real host namespace (its counters are watched).

Each boot takes ~10-15 s under TCG, so there are two.
"""
from __future__ import annotations

import os
import socket

import psutil
import pytest

from labkit import cleanup, net, vm
from labkit.namespaces import spawn
from labkit.net import devices
from labkit.net.netlink import link_kind, rtnl

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(vm.qemu_binary() is None, reason="qemu-system is not installed")]

CONTAINER_NS = ("pid", "mnt", "uts", "ipc", "net")


@pytest.fixture
def box():
    proc = spawn(["sleep", "600"], CONTAINER_NS, hostname="box")
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def links_in(ns: net.Namespace) -> dict[str, dict]:
    """{name: {"kind", "master"}} of every link in a namespace, from netlink."""
    with rtnl(ns) as ipr:
        links = ipr.get_links()
    names = {link["index"]: link.get("ifname") for link in links}
    return {link.get("ifname"): {"kind": link_kind(link), "master": names.get(link.get("IFLA_MASTER"))}
            for link in links}


def host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))   # this test's sysfs: the real host namespace


def test_a_vm_on_a_lab_bridge_and_a_container_ping_each_other_and_nothing_is_left(box):
    with net.Network(members=[box]) as lan:
        container = lan.endpoints[0]
        switch = lan.switch
        with vm.VM(memory="160M", hold=True, network=lan, command=f"ping -c 3 -W 5 {container.ip}",
                   timeout=180) as machine:
            machine.wait_for("CMD-END")
            tap, qemu = machine.nic.tap, machine.proc.pid
            # the VM -> the container: busybox ping in the guest, over its virtio-net card
            assert machine.returncode == 0, "\n".join(machine.output_lines)
            assert "3 packets received" in "\n".join(machine.output_lines)
            assert machine.nic_info["address"] == str(machine.nic.address) and machine.nic_info["ifname"] == "eth0"
            # the container -> the VM: an ICMP socket made inside the container's namespace
            assert net.ping(container.namespace, machine.nic.ip, timeout=5) == {machine.nic.ip: True}
            # the kernel's view: a tap, port of the lab bridge, in the switch namespace - not the host's
            assert links_in(switch)[tap] == {"kind": "tun", "master": lan.bridge}
            assert devices.tun_flags(switch, tap)["type"] == "tap"
            assert devices.driver_info(switch, tap)["bus-info"] == "tap"
            assert tap not in host_links()
            # qemu holds it open, and lives in the switch namespace (where it opened the tap by name)
            assert tap in devices.tun_holders(qemu).values()
            assert os.stat(f"/proc/{qemu}/ns/net").st_ino == os.stat(switch.path).st_ino
            assert os.stat(f"/proc/{qemu}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
            # every packet the guest sent came out of the tap (read later, so at least as many)
            taps = devices.net_dev(qemu)[tap]
            machine.stop()
            result = machine.result()
        assert tap not in links_in(switch)       # the VM removed its tap; the bridge is still there
        assert lan.bridge in links_in(switch)
    assert "eth0" in result.guest_net and result.tap == tap
    assert taps.rx_packets >= 4 and taps.tx_packets >= 4      # 3 echo requests + an ARP, and the replies
    assert not os.path.exists(switch.path)
    assert not psutil.pid_exists(qemu) or psutil.Process(qemu).status() == psutil.STATUS_ZOMBIE
    assert cleanup.owner("link", tap) == (None, False) and cleanup.owner("netns", switch.name) == (None, False)
    assert not any(i.owner_pid == os.getpid() for i in cleanup.find_all(include_in_use=True))


def host_counters() -> dict[str, int]:
    """rx + tx bytes of every interface of the REAL host namespace (this test process lives there)."""
    return {name: c.rx_bytes + c.tx_bytes for name, c in devices.net_dev(os.getpid()).items()}


def test_traffic_between_a_vm_and_a_container_never_reaches_the_real_host_namespace(box):
    """16 MiB of UDP from the container to a host-sharing VM's NIC: the container's veth and the tap
    carry it, the real host's interfaces do not. Other engineers' traffic on this machine adds
    noise, so the bound is a quarter of it; lo is left out (no packet from another namespace can
    arrive on this namespace's loopback)."""
    sent, payload = 16 << 20, b"x" * 1400
    with net.Network(members=[box]) as lan:
        container = lan.endpoints[0]
        with vm.VM(memory="384M", hold=True, share_host=True, network=lan, timeout=240,
                   command=f"ping -c 1 -W 5 {container.ip} >/dev/null && echo reached") as machine:
            machine.wait_for("CMD-END")
            assert machine.output_lines == ["reached"]   # configured before switch_root, works after it
            tap, qemu = machine.nic.tap, machine.proc.pid
            veth_before, tap_before = devices.net_dev(box.pid)["eth0"], devices.net_dev(qemu)[tap]
            before = host_counters()
            sock = net.socket_in(container.namespace, socket.SOCK_DGRAM)
            try:
                for _ in range(sent // len(payload) + 1):
                    sock.sendto(payload, (machine.nic.ip, 9))      # discard port: nobody answers
            finally:
                sock.close()
            after = host_counters()
            veth_after, tap_after = devices.net_dev(box.pid)["eth0"], devices.net_dev(qemu)[tap]
            machine.stop()
    assert veth_after.tx_bytes - veth_before.tx_bytes >= sent
    # the bridge passed it on to the tap (a few may still sit in the tap's qdisc when we read): the tap
    # sent it to qemu, or dropped it because qemu, a user process reading the tap, fell behind (under
    # emulation most are: the guest tier counted 1027 sent and 9994 dropped)
    handed = (tap_after.tx_bytes - tap_before.tx_bytes) + (tap_after.tx_dropped - tap_before.tx_dropped) * len(payload)
    assert handed >= sent // 2, (tap_before, tap_after)
    moved = sum(after[i] - before[i] for i in after if i in before and i != "lo")
    assert moved < sent // 4, f"the real host's interfaces carried {moved} bytes while {sent} crossed the lab bridge"
    assert not any(name.startswith(cleanup.PREFIX) for name in set(after) - set(before))
