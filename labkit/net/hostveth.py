"""One veth between the host and a container (chapter 1's picture)."""
from __future__ import annotations

import ipaddress
import random
import socket

from .. import cleanup, host
from ..errors import Conflict, InvalidValue
from ..interrupts import holding
from .addresses import HOST_LINK_RANGE, IFNAMSIZ, check_ifname
from .links import add_address, free_ifname, move_link, set_up
from .netlink import delete_link, link_index, off_loop, rtnl, wait_until
from .netns import HOST, as_namespace, host_inodes
from .probes import ping
from .topology import Topology, read_topology


class HostVeth:
    """A veth pair with one end in the host namespace and the other moved into a container's.

        with veth_to_host(proc.pid) as link:     # or a lab namespace name / Namespace
            link.host_ifname, link.host_address  # labkit-h-XXXXXX, 198.19.a.b/30 (host side)
            link.ifname, link.address            # eth0, 198.19.a.c/30 (container side)

    The host end gets a /30 from 198.19.0.0/16, which adds one connected route for that /30 to the
    host's table (removed with the link). No default route, no forwarding, no NAT: the container can
    reach exactly one address, the host end of its cable.
    """

    def __init__(self, target, addresses: bool = True, ifname: str | None = None):
        self.namespace = as_namespace(target)
        if self.namespace.is_host or self.namespace.inode() in host_inodes():
            raise InvalidValue("target", self.namespace.label, "a process or lab namespace with its own netns")
        self._want_addresses = addresses
        self._want_ifname = check_ifname(ifname) if ifname else None
        self.host_ifname = self._peer_name = None
        self.ifname = None
        self.host_address = self.address = None

    def __enter__(self) -> "HostVeth":
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @off_loop
    @holding
    def create(self) -> "HostVeth":
        host.require_lab_host("create a veth pair")
        self.host_ifname = cleanup.unique_name("h", IFNAMSIZ - 1)
        self._peer_name = cleanup.unique_name("c", IFNAMSIZ - 1)
        cleanup.claim("link", self.host_ifname)
        cleanup.claim("link", self._peer_name)
        with rtnl(HOST) as ipr:
            ipr.link("add", ifname=self.host_ifname, kind="veth", peer=self._peer_name)
        self.ifname = move_link(HOST, self._peer_name, self.namespace,
                                new_name=self._want_ifname or free_ifname(self.namespace))
        if self._want_addresses:
            net = _free_host_slash30()
            self.host_address = ipaddress.IPv4Interface(f"{net.network_address + 1}/30")
            self.address = ipaddress.IPv4Interface(f"{net.network_address + 2}/30")
            add_address(self.namespace, self.ifname, self.address)
        set_up(self.namespace, self.ifname)
        set_up(self.namespace, "lo")
        with rtnl(HOST) as ipr:
            index = link_index(ipr, self.host_ifname, "host")
            if self.host_address:
                ipr.addr("add", index=index, address=str(self.host_address.ip), prefixlen=30)
            ipr.link("set", index=index, state="up")
        return self

    @off_loop
    @holding
    def close(self) -> None:
        """Delete the host end (its peer goes with it). If the container died first, the kernel is
        already removing the pair on its own: wait for that instead of racing it."""
        if not self.host_ifname:
            return
        with rtnl(HOST) as ipr:
            found = ipr.link_lookup(ifname=self.host_ifname)
            if found:
                delete_link(ipr, found[0])
            wait_until(lambda: not ipr.link_lookup(ifname=self.host_ifname), what=self.host_ifname)
        cleanup.release("link", self.host_ifname)
        cleanup.release("link", self._peer_name)
        self.host_ifname = None

    def ping(self, timeout: float = 1.0) -> bool:
        """From inside the container to the host end of the cable."""
        if self.host_address is None:
            raise InvalidValue("addresses", False, "a HostVeth made with addresses=True to ping across it")
        return ping(self.namespace, str(self.host_address.ip), timeout=timeout)[str(self.host_address.ip)]

    def topology(self) -> Topology:
        """The container's namespace and the host's end of the cable (the rest of the host left out)."""
        topo = read_topology([HOST, self.namespace])
        host = topo.namespace("host")
        host.interfaces = [i for i in host.interfaces if i.name == self.host_ifname]
        return topo


def veth_to_host(target, addresses: bool = True, ifname: str | None = None) -> HostVeth:
    """One veth between the host and a container: `with veth_to_host(pid) as link: ...` (see HostVeth)."""
    return HostVeth(target, addresses=addresses, ifname=ifname)


def _free_host_slash30() -> ipaddress.IPv4Network:
    """A /30 of 198.19.0.0/16 that no address in the host namespace already uses."""
    with rtnl(HOST) as ipr:
        used = [ipaddress.IPv4Interface(f"{m.get('address')}/{m['prefixlen']}").network
                for m in ipr.get_addr(family=socket.AF_INET)]
    candidates = list(HOST_LINK_RANGE.subnets(new_prefix=30))
    random.shuffle(candidates)
    for net in candidates[:512]:
        if not any(net.overlaps(u) for u in used):
            return net
    raise Conflict(f"no free /30 in {HOST_LINK_RANGE} on this host")
