"""The VM's network card: a virtio-net NIC that qemu emulates, whose host side is a tap on a lab bridge.

A container's NIC is one end of a veth pair: two kernel devices, and a frame sent into one end is
handed to the other by the kernel, with no device anywhere being imitated. A VM's NIC is a device
the guest kernel believes is hardware: here a virtio-net card on the guest's PCI bus (vendor 0x1af4),
driven by the guest's virtio_net driver. Nothing in the host kernel is that card: qemu, a user
process, emulates it. Its frames leave qemu through a tap (labkit.net.links.create_tap), a host
device whose other end is qemu's file descriptor on /dev/net/tun:

    guest eth0 (virtio_net) -- virtio queues in guest RAM -- qemu -- /dev/net/tun fd -- tap -- bridge

The tap is a port of a labkit Network's bridge, inside that network's switch namespace (never the
host's). qemu opens a tap by name in its own network namespace, so qemu is started inside the
switch namespace (`nsenter --net=/run/netns/labkit-sw-...`); it does nothing else with that namespace.
The guest's /init loads the virtio modules and gives the card an address of the network's subnet.
"""
from __future__ import annotations

import random

from ..errors import InvalidValue
from ..net.network import Network, TapPort

NETDEV_ID = "nic0"


def check_network(network) -> Network:
    """A VM may join a labkit Network that exists (`with Network(...) as lan`); anything else is refused."""
    if not isinstance(network, Network) or network.switch is None:
        raise InvalidValue("network", network, "a labkit.net.Network that is open (with Network(...) as lan: "
                                               "VM(network=lan)), or None for no NIC")
    return network


class VmNic:
    """One virtio-net NIC for one VM: the tap on the bridge, the guest's MAC and address, qemu's options."""

    def __init__(self, network):
        self.network = check_network(network)
        # 52:54:00 is qemu's own prefix for the MACs it hands out; the rest is random, locally unique
        self.mac = "52:54:00:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))
        self.port: TapPort | None = None

    @property
    def tap(self) -> str:
        return self.port.name if self.port else ""

    @property
    def address(self):
        return self.port.address if self.port else None

    @property
    def ip(self) -> str:
        return self.port.ip if self.port else ""

    def plug(self) -> None:
        """The tap, on the bridge, and an address reserved for the guest."""
        self.port = self.network.plug_tap()

    def unplug(self) -> None:
        """Delete the tap (after qemu is gone). A network closed first has taken its taps with it."""
        if self.port is not None and self.port in self.network.taps:
            self.network.unplug_tap(self.port)
        self.port = None

    def qemu_args(self) -> list[str]:
        """The NIC as qemu options: a tap backend (no helper scripts) and the virtio-net-pci card on it."""
        return ["-netdev", f"tap,id={NETDEV_ID},ifname={self.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev={NETDEV_ID},mac={self.mac}"]

    def enter(self, argv: list[str]) -> list[str]:
        """qemu's argv, started inside the switch namespace where its tap lives (nsenter execs, same pid)."""
        return ["nsenter", f"--net={self.network.switch.path}", "--", *argv]

    def guest(self) -> tuple[str, str]:
        """(MAC, address/prefix) for the guest's /init to configure."""
        return self.mac, str(self.address)
