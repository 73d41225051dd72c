"""Unit tests (no root, no qemu) for a VM's NIC: what the initramfs, qemu's argv and the guest's /init
get when a VM joins a lab network, the refusal of anything that is not an open Network, and the
parsers of the kernel's device facts (/proc/net/dev, ethtool -i)."""
from __future__ import annotations

from pathlib import Path

import pytest

from labkit import net, vm
from labkit.errors import Conflict, InvalidValue, NotFound
from labkit.net import devices

from test_vm_initramfs import fake_busybox, fake_kernel, read_newc  # noqa: F401 (fixture)

NIC = ("52:54:00:12:34:56", "198.18.0.3/24")


def test_the_net_modules_load_the_virtio_transport_before_virtio_net_and_its_failover_deps():
    order = vm.guest_modules(share_host=False, nic=True)
    assert order == vm.NET_MODULES
    assert order.index("virtio_pci") < order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    both = vm.guest_modules(share_host=True, nic=True)
    assert len(both) == len(set(both)) == 15 and both[:len(vm.SHARE_MODULES)] == vm.SHARE_MODULES
    assert vm.guest_modules(share_host=False, nic=False) == ()


def test_a_guest_with_a_nic_carries_virtio_net_and_configures_the_card_by_its_mac(tmp_path, fake_busybox):
    members = read_newc(vm.build_initramfs(kernel=fake_kernel(tmp_path), command="ip addr", nic=NIC,
                                           busybox=fake_busybox))
    for name in vm.NET_MODULES:
        assert members[f"modules/{name}.ko"][1] == f"module {name}".encode()
    assert "modules/9p.ko" not in members                   # a plain guest shares nothing
    init = members["init"][1].decode()
    steps = [init.index(s) for s in ("disable_ipv6", "insmod /modules/virtio_net.ko", "grep -l '^52:54:00:12:34:56$'",
                                     "ip addr add 198.18.0.3/24 dev $nic", vm.MARK + "NIC@@", vm.MARK + "INFO@@",
                                     vm.MARK + "READY@@")]
    assert steps == sorted(steps)
    assert "switch_root" not in init


def test_a_nic_needs_the_kernels_modules(fake_busybox):
    kernel = vm.Kernel(Path("/nonexistent/vmlinuz"), "x", None, "/boot")
    with pytest.raises(NotFound, match="virtio_net"):
        vm.build_initramfs(kernel=kernel, nic=NIC, busybox=fake_busybox)


def test_qemu_gets_a_virtio_net_card_on_a_tap_instead_of_no_network():
    nic = ["-netdev", "tap,id=nic0,ifname=labkit-t-abc123,script=no,downscript=no",
           "-device", "virtio-net-pci,netdev=nic0,mac=52:54:00:12:34:56"]
    argv = vm.qemu_command(qemu="/usr/bin/qemu-system-x86_64", kernel=Path("/boot/vmlinuz"), initrd=Path("/i"),
                           memory_mib=128, cpus=1, accel="tcg", name="labkit-vm-abc123", share_host=False,
                           machine="x86_64", nic=nic)
    assert "-net" not in argv and argv[argv.index("-netdev") + 1] == nic[1]
    assert argv[argv.index("-device") + 1] == nic[3]


@pytest.mark.parametrize("bad", ["labkit-sw-abc123", 42, object(), net.Network()])  # the last: never opened
def test_a_vm_refuses_a_network_that_is_not_an_open_lab_network_naming_the_option(bad):
    with pytest.raises(InvalidValue) as info:
        vm.check_network(bad)
    assert "network" in str(info.value) and "Network" in str(info.value)


def test_a_network_never_hands_a_taps_address_to_a_member_and_refuses_it_twice():
    lan = net.Network(subnet="198.18.0.8/29")
    lan.taps.append(net.TapPort("labkit-t-x", lan._next_address()))      # what plug_tap reserves (.10)
    assert str(lan._next_address()) == "198.18.0.11/29"
    with pytest.raises(Conflict, match="198.18.0.10"):
        lan._check_free("198.18.0.10/29")
    with pytest.raises(InvalidValue, match="subnet"):
        lan._check_free("198.18.1.10/24")


PROC_NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0:     336       4    0    1    0     0          0         0      436       5    0    2    0     0       0          0
"""


def test_proc_net_dev_is_read_as_receive_then_transmit_fields():
    counters = devices.parse_net_dev(PROC_NET_DEV)
    assert set(counters) == {"lo", "eth0"}
    assert counters["eth0"] == devices.Counters(rx_bytes=336, rx_packets=4, rx_dropped=1,
                                                tx_bytes=436, tx_packets=5, tx_dropped=2)


def test_ethtool_info_is_read_as_key_value_pairs():
    info = devices.parse_ethtool_info("driver: tun\nversion: 1.6\nfirmware-version: \nbus-info: tap\n")
    assert info == {"driver": "tun", "version": "1.6", "firmware-version": "", "bus-info": "tap"}
