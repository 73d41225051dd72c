"""What the kernel says a network device is: its driver (`ethtool -i`), a tap's flags, who holds a tap
open, and the packet counters of /proc/net/dev.

All of it is read, never written, and only in lab namespaces (or a given process's /proc):

- `driver_info(ns, "eth0")`: the ETHTOOL_GDRVINFO answer, as `ethtool -i` prints it. A veth says
  `driver: veth` with no bus; a tap says `driver: tun`, `bus-info: tap`; a NIC on a (virtual) PCI bus
  names its driver (virtio_net, e1000) and its PCI address.
- `tun_flags(ns, "labkit-t...")`: the IFLA_TUN_* attributes netlink reports for a tun/tap device, the
  flags `ip -d link` prints (`tun type tap pi off vnet_hdr on persist on`).
- `tun_holders(pid)`: which of a process's file descriptors are attached to which tap: the kernel
  writes `iff:\tNAME` into /proc/PID/fdinfo/FD of a /dev/net/tun descriptor.
- `net_dev(pid or namespace)`: /proc/net/dev, the counters of every device in a network namespace.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .netlink import link_index, link_kind, off_loop, rtnl
from .netns import Namespace, in_namespace


@dataclass(frozen=True)
class Counters:
    """One line of /proc/net/dev (the kernel's rtnl_link_stats64 of a device)."""
    rx_bytes: int
    rx_packets: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_dropped: int


def parse_net_dev(text: str) -> dict[str, Counters]:
    """/proc/net/dev -> {device: Counters}. Two header lines, then `name: 8 receive and 8 transmit fields`."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, _, data = line.partition(":")
        fields = [int(f) for f in data.split()]
        counters[name.strip()] = Counters(rx_bytes=fields[0], rx_packets=fields[1], rx_dropped=fields[3],
                                          tx_bytes=fields[8], tx_packets=fields[9], tx_dropped=fields[11])
    return counters


def net_dev(where: int | Namespace) -> dict[str, Counters]:
    """The counters of every device in a network namespace: process `where`'s (/proc/PID/net/dev), or
    a lab namespace's (/proc/net/dev read by `cat` inside it: /proc/net shows the reader's namespace)."""
    if isinstance(where, Namespace):
        return parse_net_dev(in_namespace(where, ["cat", "/proc/net/dev"]))
    with open(f"/proc/{int(where)}/net/dev") as f:
        return parse_net_dev(f.read())


def parse_ethtool_info(text: str) -> dict[str, str]:
    """`ethtool -i` output -> {"driver": "tun", "bus-info": "tap", ...}."""
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())
            if key.strip()}


def driver_info(ns: Namespace, ifname: str) -> dict[str, str]:
    """`ethtool -i IFNAME` inside a lab namespace: the driver the kernel bound to the device."""
    return parse_ethtool_info(in_namespace(ns, ["ethtool", "-i", ifname]))


TUN_TYPES = {1: "tun", 2: "tap"}


@off_loop
def tun_flags(ns: Namespace, ifname: str) -> dict:
    """The tun/tap attributes netlink reports for IFNAME: {"type": "tap", "pi": False, "vnet_hdr": True, ...}."""
    with rtnl(ns) as ipr:
        link = ipr.get_links(link_index(ipr, ifname, ns.label))[0]
    if link_kind(link) != "tun":
        return {}
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    attrs = dict(data["attrs"]) if data else {}
    flags = {"type": TUN_TYPES.get(attrs.get("IFLA_TUN_TYPE"), str(attrs.get("IFLA_TUN_TYPE")))}
    for attr in ("PI", "VNET_HDR", "PERSIST", "MULTI_QUEUE"):
        if f"IFLA_TUN_{attr}" in attrs:
            flags[attr.lower()] = bool(attrs[f"IFLA_TUN_{attr}"])
    return flags


def tun_holders(pid: int) -> dict[int, str]:
    """{fd: tap name} for each descriptor of `pid` attached to a tun/tap device (its fdinfo's `iff:` line)."""
    found = {}
    fdinfo = f"/proc/{int(pid)}/fdinfo"
    for name in os.listdir(fdinfo):
        try:
            with open(f"{fdinfo}/{name}") as f:
                for line in f:
                    if line.startswith("iff:"):
                        found[int(name)] = line.split(":", 1)[1].strip()
        except OSError:             # closed meanwhile
            continue
    return found
