"""Reading the kernel's network state back over netlink: interfaces, bridge ports, veth pairs, routes."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import InvalidValue, NotFound
from .netlink import link_kind, off_loop, rtnl
from .netns import HOST, Namespace


IFF_UP = 0x1


@dataclass
class Interface:
    index: int
    name: str
    kind: str | None              # "veth", "bridge", None for lo / physical
    up: bool                      # administratively up (IFF_UP)
    operstate: str                # UP, DOWN, LOWERLAYERDOWN, UNKNOWN (lo)
    addresses: list[str] = field(default_factory=list)   # IPv4, "198.18.0.2/24"
    master: int | None = None     # ifindex of the bridge it is a port of
    peer_index: int | None = None  # a veth's other end (IFLA_LINK) ...
    peer_nsid: int | None = None   # ... in the namespace with this id (IFLA_LINK_NETNSID), None = same ns


@dataclass
class NamespaceState:
    label: str
    inode: int
    interfaces: list[Interface]
    nsids: dict[int, str] = field(default_factory=dict)   # nsid (as this namespace numbers others) -> label

    def interface(self, name: str) -> Interface:
        for iface in self.interfaces:
            if iface.name == name:
                return iface
        raise NotFound(f"interface {name} in {self.label}")

    def by_index(self, index: int) -> Interface | None:
        return next((i for i in self.interfaces if i.index == index), None)

    def bridge_of(self, iface: Interface) -> Interface | None:
        return self.by_index(iface.master) if iface.master else None


@dataclass
class Topology:
    """What the kernel says, read over netlink: namespaces, interfaces, addresses, bridge ports, veth pairs."""

    namespaces: list[NamespaceState]

    def namespace(self, label: str) -> NamespaceState:
        for ns in self.namespaces:
            if ns.label == label:
                return ns
        raise NotFound(f"namespace {label} in this topology")

    def peer(self, ns: NamespaceState, iface: Interface) -> tuple[NamespaceState, Interface] | None:
        """The other end of a veth, if its namespace is part of this topology."""
        if iface.kind != "veth" or iface.peer_index is None:
            return None
        other = ns if iface.peer_nsid is None else self._by_label(ns.nsids.get(iface.peer_nsid))
        if other is None:
            return None
        end = other.by_index(iface.peer_index)
        return (other, end) if end else None

    def _by_label(self, label):
        return next((n for n in self.namespaces if n.label == label), None)

    def veth_pairs(self) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        pairs = set()
        for ns in self.namespaces:
            for iface in ns.interfaces:
                found = self.peer(ns, iface)
                if found:
                    a, b = (ns.label, iface.name), (found[0].label, found[1].name)
                    pairs.add(tuple(sorted((a, b))))
        return sorted(pairs)

    def bridges(self) -> dict[tuple[str, str], list[str]]:
        """(namespace, bridge) -> names of its ports."""
        result = {}
        for ns in self.namespaces:
            for iface in ns.interfaces:
                if iface.kind == "bridge":
                    result[(ns.label, iface.name)] = sorted(p.name for p in ns.interfaces if p.master == iface.index)
        return result

    def bridge_reached_by(self, label: str) -> set[tuple[str, str]]:
        """The bridges (namespace, bridge) that namespace `label`'s veths are plugged into."""
        ns = self.namespace(label)
        found = set()
        for iface in ns.interfaces:
            end = self.peer(ns, iface)
            if end:
                bridge = end[0].bridge_of(end[1])
                if bridge:
                    found.add((end[0].label, bridge.name))
        return found

    def describe(self) -> str:
        """A plain-text listing, like `ip -br addr` in every namespace plus the cables between them."""
        lines = []
        for ns in self.namespaces:
            lines.append(f"[{ns.label}]")
            for i in ns.interfaces:
                extra = []
                if i.kind:
                    extra.append(i.kind)
                bridge = ns.bridge_of(i)
                if bridge:
                    extra.append(f"port of {bridge.name}")
                end = self.peer(ns, i)
                if end:
                    extra.append(f"peer {end[1].name}@{end[0].label}")
                state = "UP" if i.up else "DOWN"
                addrs = " ".join(i.addresses) or "-"
                lines.append(f"  {i.name:<16}{state:<5} {addrs:<18} {', '.join(extra)}".rstrip())
        return "\n".join(lines)


def read_namespace(ns: Namespace, others: list[Namespace]) -> NamespaceState:
    addrs: dict[int, list[str]] = {}
    with rtnl(ns) as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            addrs.setdefault(msg["index"], []).append(f"{msg.get('address')}/{msg['prefixlen']}")
        interfaces = []
        for link in ipr.get_links():
            interfaces.append(Interface(
                index=link["index"], name=link.get("ifname"), kind=link_kind(link),
                up=bool(link["flags"] & IFF_UP), operstate=link.get("operstate") or "",
                addresses=addrs.get(link["index"], []), master=link.get("master"),
                peer_index=link.get("link") if link_kind(link) == "veth" else None,
                peer_nsid=link.get("IFLA_LINK_NETNSID")))
        nsids = {}
        for other in others:
            if other is ns:
                continue
            fd = os.open(other.path or "/proc/self/ns/net", os.O_RDONLY)
            try:
                answer = ipr.get_netnsid(fd=fd)  # RTM_GETNSID: how ns numbers `other`
            finally:
                os.close(fd)
            nsid = answer.get("nsid") if answer else None
            if nsid is not None and nsid >= 0:
                nsids[nsid] = other.label
    return NamespaceState(ns.label, ns.inode(), interfaces, nsids)


@off_loop
def read_topology(namespaces: Iterable[Namespace]) -> Topology:
    """Ask the kernel, over netlink, what each namespace contains and how the veths connect them."""
    namespaces = list(namespaces)
    return Topology([read_namespace(ns, namespaces) for ns in namespaces])


@dataclass
class Route:
    destination: str          # "198.18.0.0/24", or "default"
    ifname: str | None
    gateway: str | None
    protocol: int             # 2 = kernel (a connected route, added with an address), 4 = static

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.destination}{via} dev {self.ifname}"


@off_loop
def read_routes(ns: Namespace) -> list[Route]:
    """The main IPv4 routing table of ns, like `ip route` (reading the host's is allowed: it is read-only)."""
    with rtnl(ns) as ipr:
        names = {l["index"]: l.get("ifname") for l in ipr.get_links()}
        return [Route(f"{r.get('dst')}/{r['dst_len']}" if r["dst_len"] else "default",
                      names.get(r.get("oif")), r.get("gateway"), r["proto"])
                for r in ipr.get_routes(family=socket.AF_INET, table=254)]


@off_loop
def read_bridge(ns: Namespace, bridge: str) -> Topology | None:
    """One bridge and its ports as the kernel shows them in ns (read-only); None if there is no such bridge."""
    with rtnl(ns) as ipr:
        if not ipr.link_lookup(ifname=bridge):
            return None
    state = read_namespace(ns, [ns])
    found = state.interface(bridge)
    if found.kind != "bridge":
        raise InvalidValue("bridge", bridge, f"the name of a bridge in {ns.label} (it is a {found.kind or 'plain'} link)")
    state.interfaces = [i for i in state.interfaces if i is found or i.master == found.index]
    return Topology([state])


def read_docker0() -> Topology | None:
    """Docker's default bridge, docker0, and its ports in the host namespace; None without a running Docker."""
    return read_bridge(HOST, "docker0")
