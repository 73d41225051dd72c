"""Links, addresses, routes: one netlink request each (`ip link`, `ip addr`, `ip route`)."""
from __future__ import annotations

import ipaddress
import os

from .. import cleanup
from ..errors import InvalidValue, LabkitError, NotFound
from ..interrupts import holding
from .addresses import IFNAMSIZ, check_ifname, check_lab_address, check_route
from .netlink import link_index, netlink_error, off_loop, rtnl
from .netns import Namespace


@off_loop
def set_up(ns: Namespace, ifname: str = "lo") -> None:
    """`ip link set IFNAME up` inside ns (default: the loopback, which starts down in a new namespace)."""
    refuse_host(ns, "change links in")
    with rtnl(ns) as ipr:
        ipr.link("set", index=link_index(ipr, ifname, ns.label), state="up")


@off_loop
@holding
def create_bridge(ns: Namespace, name: str | None = None) -> str:
    """`ip link add NAME type bridge; ip link set NAME up` inside ns; no address (nothing routes out)."""
    refuse_host(ns, "create a bridge in")
    name = check_ifname(name or cleanup.unique_name("b", IFNAMSIZ - 1))
    cleanup.claim("link", name)
    with rtnl(ns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except Exception as exc:
            cleanup.release("link", name)
            raise netlink_error(exc, "create bridge", name) from None
        ipr.link("set", index=link_index(ipr, name, ns.label), state="up")
    return name


@off_loop
@holding
def create_veth(ns: Namespace, name: str | None = None, peer: str | None = None) -> tuple[str, str]:
    """`ip link add NAME type veth peer name PEER` inside ns: two ends of one virtual cable."""
    name = check_ifname(name or cleanup.unique_name("v", IFNAMSIZ - 1))
    peer = check_ifname(peer or cleanup.unique_name("p", IFNAMSIZ - 1))
    cleanup.claim("link", name)
    cleanup.claim("link", peer)
    with rtnl(ns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="veth", peer=peer)
        except Exception as exc:
            cleanup.release("link", name)
            cleanup.release("link", peer)
            raise netlink_error(exc, "create veth", f"{name}/{peer}") from None
    return name, peer


@off_loop
@holding
def create_tap(ns: Namespace, name: str | None = None) -> str:
    """`ip tuntap add NAME mode tap vnet_hdr` inside ns: a NIC whose other end is a file descriptor.

    A veth's two ends are both kernel devices. A tap's other end is /dev/net/tun, opened by a program
    (qemu): every frame the kernel sends out of the tap is read() by that program, and every frame it
    write()s arrives as if received. The tap is made persistent so that it exists, and can be plugged
    into a bridge, before qemu opens it; deleting it (or its namespace) removes it.
    """
    refuse_host(ns, "create a tap in")
    name = check_ifname(name or cleanup.unique_name("t", IFNAMSIZ - 1))
    cleanup.claim("link", name)
    flags = {"no_pi": True, "vnet_hdr": True, "one_queue": False, "multi_queue": False}
    with rtnl(ns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="tuntap", mode="tap", ifr=flags)
        except Exception as exc:
            cleanup.release("link", name)
            raise netlink_error(exc, "create tap", name) from None
    return name


@off_loop
@holding
def move_link(src: Namespace, ifname: str, dst: Namespace, new_name: str | None = None) -> str:
    """Move a link into another namespace (`ip link set IFNAME netns DST`), optionally renaming it there.

    The request carries IFLA_NET_NS_FD: an open file descriptor of the target's namespace file.
    """
    refuse_host(dst, "move a link into")
    if new_name:
        check_ifname(new_name)
    fd = os.open(dst.path, os.O_RDONLY)
    try:
        with rtnl(src) as ipr:
            ipr.link("set", index=link_index(ipr, ifname, src.label), net_ns_fd=fd)
    finally:
        os.close(fd)
    if new_name and new_name != ifname:
        with rtnl(dst) as ipr:
            try:
                ipr.link("set", index=link_index(ipr, ifname, dst.label), ifname=new_name)
            except NotFound:
                raise
            except Exception as exc:
                raise netlink_error(exc, "rename", f"{ifname} to {new_name}") from None
        return new_name
    return ifname


@off_loop
@holding
def attach_to_bridge(ns: Namespace, ifname: str, bridge: str) -> None:
    """`ip link set IFNAME master BRIDGE up` inside ns: plug a veth end into a bridge (it becomes a port)."""
    refuse_host(ns, "change links in")
    with rtnl(ns) as ipr:
        ipr.link("set", index=link_index(ipr, ifname, ns.label), master=link_index(ipr, bridge, ns.label), state="up")


@off_loop
def add_address(ns: Namespace, ifname: str, address) -> ipaddress.IPv4Interface:
    """`ip addr add ADDRESS dev IFNAME` inside ns; only lab-range addresses are accepted.

    The kernel adds the connected route for the subnet by itself (proto kernel scope link).
    """
    refuse_host(ns, "add an address in")
    iface = check_lab_address(address)
    with rtnl(ns) as ipr:
        try:
            ipr.addr("add", index=link_index(ipr, ifname, ns.label), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except LabkitError:
            raise
        except Exception as exc:
            raise netlink_error(exc, "add address", f"{iface} on {ifname}") from None
    return iface


@off_loop
def add_route(ns: Namespace, destination, ifname: str) -> ipaddress.IPv4Network:
    """`ip route add DESTINATION dev IFNAME` inside ns. Lab destinations only; never a default route."""
    refuse_host(ns, "add a route in")
    net = check_route(destination)
    with rtnl(ns) as ipr:
        try:
            ipr.route("add", dst=str(net.network_address), dst_len=net.prefixlen, oif=link_index(ipr, ifname, ns.label))
        except LabkitError:
            raise
        except Exception as exc:
            raise netlink_error(exc, "add route", f"{net} dev {ifname}") from None
    return net


@off_loop
def free_ifname(ns: Namespace, stem: str = "eth") -> str:
    """The first name stem0, stem1, ... not used in ns (Docker calls a container's first NIC eth0)."""
    with rtnl(ns) as ipr:
        used = {link.get("ifname") for link in ipr.get_links()}
    n = 0
    while f"{stem}{n}" in used:
        n += 1
    return check_ifname(f"{stem}{n}")


def refuse_host(ns: Namespace, action: str) -> None:
    if ns.is_host:
        raise InvalidValue("namespace", "host", f"a lab namespace: labkit does not {action} the host namespace")
