"""Names and addresses the lab may use: pure functions, unit-tested without root.

Addresses come from 198.18.0.0/15, the block RFC 2544 sets aside for benchmarking network devices:
never routed on the internet, unlikely to be on any real LAN (unlike 10/8, 172.16/12, 192.168/16).
Bridges get subnets from 198.18.0.0/16; host-to-container veths get /30s from 198.19.0.0/16.
"""
from __future__ import annotations

import ipaddress

from ..errors import InvalidValue


LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")        # RFC 2544 benchmarking block
BRIDGE_RANGE = ipaddress.ip_network("198.18.0.0/16")     # subnets for Network (bridges)
HOST_LINK_RANGE = ipaddress.ip_network("198.19.0.0/16")  # /30s for veth_to_host
DEFAULT_SUBNET = "198.18.0.0/24"
FIRST_HOST = 2          # .1 stays free: it is where Docker would put the bridge's gateway address
IFNAMSIZ = 16           # linux/if.h; a name holds at most IFNAMSIZ - 1 = 15 characters


def check_ifname(name: str) -> str:
    """An interface name the kernel will accept (dev_valid_name): 1-15 characters, no '/', ':' or space."""
    if not isinstance(name, str) or not name or len(name) > IFNAMSIZ - 1 or name in (".", "..") \
            or any(c in name for c in "/:") or any(c.isspace() for c in name) or "\0" in name:
        raise InvalidValue("interface name", name,
                           f"1 to {IFNAMSIZ - 1} characters without '/', ':' or whitespace (IFNAMSIZ is {IFNAMSIZ})")
    return name


def check_subnet(subnet, within=BRIDGE_RANGE) -> ipaddress.IPv4Network:
    """A lab subnet: inside `within` (198.18.0.0/16 by default), prefix /16 to /29."""
    try:
        net = ipaddress.IPv4Network(str(subnet), strict=True)
    except ValueError:
        raise InvalidValue("subnet", subnet, f"an IPv4 network such as {DEFAULT_SUBNET} (host bits zero)") from None
    if not net.subnet_of(within) or not 16 <= net.prefixlen <= 29:
        raise InvalidValue("subnet", subnet, f"a subnet of {within} (the lab's own range), prefix /16 to /29")
    return net


def plan_addresses(subnet, count: int, first: int = FIRST_HOST) -> list[ipaddress.IPv4Interface]:
    """`count` host addresses of `subnet` starting at host number `first`: 198.18.0.2/24, .3/24, ..."""
    net = check_subnet(subnet)
    room = net.num_addresses - 1 - first          # the broadcast address is not a host
    if not isinstance(count, int) or count < 0 or count > room:
        raise InvalidValue("number of members", count, f"0 to {room} for {net} (hosts .{first} onwards)")
    return [ipaddress.IPv4Interface(f"{net.network_address + first + i}/{net.prefixlen}") for i in range(count)]


def check_lab_address(address) -> ipaddress.IPv4Interface:
    """An address inside the lab range, with a prefix: '198.18.0.2/24'."""
    try:
        iface = ipaddress.IPv4Interface(str(address))
    except ValueError:
        raise InvalidValue("address", address, "an IPv4 address with prefix, e.g. 198.18.0.2/24") from None
    if iface.ip not in LAB_RANGE:
        raise InvalidValue("address", address, f"an address inside the lab range {LAB_RANGE}")
    if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise InvalidValue("address", address, f"a host address of {iface.network}, not its network or broadcast address")
    return iface


def check_route(destination) -> ipaddress.IPv4Network:
    """A route destination inside the lab range; a default route (0.0.0.0/0) is refused."""
    try:
        net = ipaddress.IPv4Network(str(destination), strict=True)
    except ValueError:
        raise InvalidValue("route destination", destination, "an IPv4 network such as 198.18.1.0/24") from None
    if not net.subnet_of(LAB_RANGE):
        raise InvalidValue("route destination", destination,
                           f"a network inside {LAB_RANGE}: labkit never routes anywhere else (no default route)")
    return net


def lab_ip(address) -> str:
    ip = ipaddress.IPv4Address(str(address).split("/")[0])
    if ip not in LAB_RANGE and not ip.is_loopback:
        raise InvalidValue("address", address, f"an address inside the lab range {LAB_RANGE} (or loopback)")
    return str(ip)
