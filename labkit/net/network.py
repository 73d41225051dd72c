"""A Network: N members on one bridge, in a switch namespace of its own (Docker's default network)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .. import cleanup, netview
from ..errors import Conflict, InvalidValue, NotFound
from ..interrupts import holding
from .addresses import DEFAULT_SUBNET, FIRST_HOST, check_lab_address, check_subnet, plan_addresses
from .links import (add_address, attach_to_bridge, create_bridge, create_tap, create_veth, free_ifname, move_link,
                    set_up)
from .netlink import delete_link, link_kind, off_loop, rtnl, wait_until
from .netns import NETNS_DIR, Namespace, as_namespace, create_namespace, host_inodes, remove_named
from .probes import Throughput, measure_throughput, ping
from .topology import Topology, read_topology


@dataclass
class Endpoint:
    """One member's connection: its namespace, its NIC in there, its address, the switch-side port."""

    namespace: Namespace
    ifname: str            # e.g. eth0, inside the member's namespace
    address: ipaddress.IPv4Interface
    port: str              # the veth end plugged into the bridge (inside the switch namespace)
    peer_name: str         # the name the member's end had before it was renamed (owner record)

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def label(self) -> str:
        return self.namespace.label


@dataclass
class TapPort:
    """A tap plugged into the bridge, for a NIC that lives outside the kernel (a VM's, emulated by qemu):
    the frames the bridge sends to `name` are read by whichever program holds it open."""

    name: str                          # the tap, a port of the bridge (inside the switch namespace)
    address: ipaddress.IPv4Interface   # reserved for the NIC at the other end; nothing on the host holds it

    @property
    def ip(self) -> str:
        return str(self.address.ip)


class Network:
    """A bridge in its own labkit switch namespace, with members plugged in by veth pairs.

        with Network(members=[c1, c2, c3]) as net:      # pids, labkit Processes, or None for a bare netns
            net.reachability()                          # {(a, b): True, ...}, by ICMP from inside each
            net.draw()                                  # drawn from netlink, not from this object

    Each member gets the Docker treatment: a veth pair is made next to the bridge, one end is moved
    into the member's namespace, renamed ethN, given an address from `subnet` (.2, .3, ...) and set
    up, together with the member's loopback; the other end is plugged into the bridge. Nothing gets a
    default route. Everything is removed on exit, error or Ctrl-C.
    """

    def __init__(self, members: Iterable = (), subnet=DEFAULT_SUBNET, label: str | None = None):
        self.subnet = check_subnet(subnet)
        self._members = list(members)
        plan_addresses(self.subnet, len(self._members))     # refuse too many members before creating anything
        self.label = label
        self.switch: Namespace | None = None
        self.bridge: str | None = None
        self.endpoints: list[Endpoint] = []
        self.taps: list[TapPort] = []
        self._owned: list[Namespace] = []                    # bare namespaces this network created
        self._claimed_links: list[str] = []

    # lifecycle

    def __enter__(self) -> "Network":
        try:
            self.create()
            for member in self._members:
                self.connect(member)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @off_loop
    @holding
    def create(self) -> "Network":
        """The switch namespace and its bridge (up, no address)."""
        if self.switch is None:
            self.switch = create_namespace("sw", label=self.label)
            self.bridge = create_bridge(self.switch)
            self._claimed_links.append(self.bridge)
        return self

    @off_loop
    @holding
    def connect(self, member=None, address=None, label: str | None = None) -> Endpoint:
        """Plug a member (pid, Process, Namespace, lab netns name, or None = a new bare namespace) in."""
        if self.switch is None:
            self.create()
        if member is None:
            ns = create_namespace("ns", label=label)
            self._owned.append(ns)
        else:
            ns = as_namespace(member)
            if label:
                ns = Namespace(label, ns.path, ns.name, ns.pid)
        if ns.is_host or ns.inode() in host_inodes():
            raise InvalidValue("member", ns.label, "a namespace of its own, never the host's")
        if any(e.namespace.inode() == ns.inode() for e in self.endpoints):
            raise Conflict(f"{ns.label} is already connected to this network")
        iface = self._check_free(address) if address else self._next_address()
        port, peer = create_veth(self.switch)
        self._claimed_links += [port, peer]
        ifname = free_ifname(ns)
        move_link(self.switch, peer, ns, new_name=ifname)    # the Docker step: one end into the container
        add_address(ns, ifname, iface)
        set_up(ns, ifname)
        set_up(ns, "lo")
        attach_to_bridge(self.switch, port, self.bridge)      # the other end: a port of the bridge
        endpoint = Endpoint(ns, ifname, iface, port, peer)
        self.endpoints.append(endpoint)
        return endpoint

    @off_loop
    def adopt(self, member, ifname: str, port: str, label: str | None = None) -> Endpoint:
        """Take over a cable made by hand (create_veth, move_link, ...), after checking it with the kernel:
        `port` must be a port of this bridge and the veth peer of `ifname` in the member's namespace,
        which must carry an address of this subnet. From then on it is torn down with the network."""
        ns = as_namespace(member)
        if label:
            ns = Namespace(label, ns.path, ns.name, ns.pid)
        topo = read_topology([self.switch, ns])
        mine, sw = topo.namespace(ns.label), topo.namespace(self.switch.label)
        inside, plug = mine.interface(ifname), sw.interface(port)
        end = topo.peer(mine, inside)
        if end is None or end[1].name != port:
            raise InvalidValue("port", port, f"the switch-side end of {ifname}'s veth pair")
        if sw.bridge_of(plug) is None or sw.bridge_of(plug).name != self.bridge:
            raise InvalidValue("port", port, f"a port of bridge {self.bridge} (attach_to_bridge first)")
        addresses = [ipaddress.IPv4Interface(a) for a in inside.addresses]
        ours = [a for a in addresses if a.network == self.subnet]
        if not ours:
            raise InvalidValue("address", inside.addresses, f"an address in {self.subnet} on {ifname}")
        endpoint = Endpoint(ns, ifname, ours[0], port, "")
        self.endpoints.append(endpoint)
        return endpoint

    @off_loop
    @holding
    def plug_tap(self, address=None) -> TapPort:
        """A tap in the switch namespace, plugged into the bridge, with an address of this subnet reserved
        for whatever NIC its holder emulates (labkit.vm gives it to a VM's virtio-net card)."""
        if self.switch is None:
            self.create()
        iface = self._check_free(address) if address else self._next_address()
        tap = create_tap(self.switch)
        self._claimed_links.append(tap)
        attach_to_bridge(self.switch, tap, self.bridge)
        port = TapPort(tap, iface)
        self.taps.append(port)
        return port

    @off_loop
    @holding
    def unplug_tap(self, port: TapPort) -> None:
        """Delete the tap (whoever holds it open keeps a descriptor to a device that is gone)."""
        with rtnl(self.switch) as ipr:
            found = ipr.link_lookup(ifname=port.name)
            if found:
                delete_link(ipr, found[0])
            wait_until(lambda: not ipr.link_lookup(ifname=port.name), what=port.name)
        cleanup.release("link", port.name)
        self.taps.remove(port)

    def _check_free(self, address) -> ipaddress.IPv4Interface:
        iface = check_lab_address(address)
        if iface.network != self.subnet:
            raise InvalidValue("address", str(iface), f"an address in this network's subnet {self.subnet}")
        if iface.ip in self._used():
            raise Conflict(f"{iface.ip} is already used on this network")
        return iface

    def _used(self) -> set:
        return {e.address.ip for e in self.endpoints} | {t.address.ip for t in self.taps}

    def _next_address(self) -> ipaddress.IPv4Interface:
        used = self._used()
        for iface in plan_addresses(self.subnet, self.subnet.num_addresses - 1 - FIRST_HOST):
            if iface.ip not in used:
                return iface
        raise InvalidValue("number of members", len(self.endpoints) + 1, f"at most {len(used)} in {self.subnet}")

    def endpoint(self, member) -> Endpoint:
        if isinstance(member, Endpoint):
            return member
        pid = getattr(member, "pid", member)
        for e in self.endpoints:
            if member in (e.label, e.ip, e.namespace) or (isinstance(pid, int) and pid == e.namespace.pid):
                return e
        raise NotFound(f"{member!r} is not connected to this network")

    @off_loop
    @holding
    def disconnect(self, member) -> None:
        """Unplug a member: deleting the switch-side veth end deletes its peer (the member's ethN) too.

        The member's namespace stays (and so does a bare one this network made, until close()).
        """
        e = self.endpoint(member)
        with rtnl(self.switch) as ipr:
            found = ipr.link_lookup(ifname=e.port)
            if found:
                delete_link(ipr, found[0])
            wait_until(lambda: not ipr.link_lookup(ifname=e.port), what=e.port)
        for name in (e.port, e.peer_name):
            if name:
                cleanup.release("link", name)
        self.endpoints.remove(e)
        # a bare namespace this network created stays until close(): it may be plugged in elsewhere

    @off_loop
    @holding
    def close(self) -> None:
        """Remove everything this network made; safe to call twice, after errors and half-finished setups."""
        errors = []
        if self.switch is not None:
            try:
                if (NETNS_DIR / self.switch.name).exists():
                    with rtnl(self.switch) as ipr:
                        # veths first (each takes its peer with it, synchronously), then taps and the bridge
                        for link in ipr.get_links():
                            if link_kind(link) == "veth":
                                delete_link(ipr, link["index"])
                        for kind in ("tun", "bridge"):
                            for link in ipr.get_links():
                                if link_kind(link) == kind:
                                    delete_link(ipr, link["index"])
                        wait_until(lambda: all(l["index"] == 1 for l in ipr.get_links()), what=f"links in {self.switch}")
            except Exception as exc:                           # keep going: remove what we can
                errors.append(exc)
            try:
                remove_named(self.switch.name)
            except Exception as exc:
                errors.append(exc)
        for ns in self._owned:
            try:
                remove_named(ns.name)
            except Exception as exc:
                errors.append(exc)
        for name in self._claimed_links:
            cleanup.release("link", name)
        self.endpoints, self.taps, self._owned, self._claimed_links = [], [], [], []
        self.switch = self.bridge = None
        if errors:
            raise errors[0]

    # looking at it

    def namespaces(self) -> list[Namespace]:
        return ([self.switch] if self.switch else []) + [e.namespace for e in self.endpoints]

    def topology(self, extra: Iterable[Namespace] = ()) -> Topology:
        return read_topology(self.namespaces() + list(extra))

    def draw(self, title: str | None = None, extra: Iterable[Namespace] = (), ax=None):
        return netview.draw(self.topology(extra), ax=ax, title=title)

    def reachability(self, timeout: float = 1.0) -> dict[tuple[str, str], bool]:
        return reachability(self.endpoints, timeout=timeout)

    def throughput(self, a=0, b=1, seconds: float = 1.0, max_bytes: int = 8 << 30) -> Throughput:
        src, dst = (self.endpoints[x] if isinstance(x, int) else self.endpoint(x) for x in (a, b))
        return measure_throughput(src.namespace, dst.namespace, dst.ip, seconds=seconds, max_bytes=max_bytes)


class Attachment:
    """A container's place on a Network; close() unplugs it (what labkit.container calls on delete)."""

    def __init__(self, network: "Network", endpoint: Endpoint):
        self.network, self.endpoint = network, endpoint

    def close(self) -> None:
        if self.endpoint in self.network.endpoints:
            self.network.disconnect(self.endpoint)


def attach_container(network: "Network", pid: int, name: str | None = None) -> Attachment:
    """Plug the process `pid` (a container's init) into `network`, labelled `name`; returns an Attachment."""
    if not isinstance(network, Network):
        raise InvalidValue("network", network, "a labkit.net.Network (or None for no network)")
    return Attachment(network, network.connect(pid, label=name))


def reachability(endpoints: Iterable[Endpoint], timeout: float = 1.0) -> dict[tuple[str, str], bool]:
    """Ping every endpoint from every other one; {(from label, to label): answered}."""
    endpoints = list(endpoints)
    result = {}
    for src in endpoints:
        targets = [e for e in endpoints if e is not src]
        answers = ping(src.namespace, [e.ip for e in targets], timeout=timeout) if targets else {}
        for dst in targets:
            result[(src.label, dst.label)] = answers[dst.ip]
    return result


def format_matrix(result: dict[tuple[str, str], bool]) -> str:
    """A reachability dict as a small table: rows = from, columns = to."""
    labels = sorted({a for a, _ in result} | {b for _, b in result})
    first = max([len(x) for x in labels] + [len("from \\ to")]) + 2
    width = max([len(x) for x in labels] + [3]) + 2
    lines = ["from \\ to".ljust(first) + "".join(x.ljust(width) for x in labels).rstrip()]
    for a in labels:
        cells = ["-" if a == b else ("yes" if result.get((a, b)) else "NO") for b in labels]
        lines.append((a.ljust(first) + "".join(c.ljust(width) for c in cells)).rstrip())
    return "\n".join(lines)
