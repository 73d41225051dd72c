"""Container networking from kernel primitives: network namespaces, veth pairs, a bridge.

Everything here speaks netlink through pyroute2 - the same messages `ip link`, `ip addr` and
`ip route` send - and never shells out. What Docker's default network does, step by step:

    docker0 (a bridge)  <->  vethXXXX (host end)  ==veth==  eth0 (moved into the container)

labkit does the same with two deliberate differences, both for safety on a shared machine:

* The bridge lives in its own network namespace (a "switch" namespace, ``labkit-sw-...``), not in
  the host's. The host's links, addresses and routing table are never touched, so nothing a
  learner builds can leak traffic out. Docker puts docker0 in the host namespace because it
  routes and NATs (MASQUERADE) containers to the outside; we do neither.
* Addresses come from 198.18.0.0/15, the block RFC 2544 sets aside for benchmarking network
  devices: never routed on the internet, unlikely to be on any real LAN (unlike 10/8, 172.16/12,
  192.168/16, which home and campus networks use). Bridges get subnets from
  198.18.0.0/16; host-to-container veths get /30s from 198.19.0.0/16. Since every bridge is in its
  own namespace, two experiments may use the same subnet without meeting. No bridge gets an
  address and nobody gets a default route: there is no way out, by construction.

The API at a glance (every call is one or a few netlink requests; all of them notebook-safe):

    ns = create_namespace("demo")            # ip netns add labkit-demo-XXXXXX   (remove_namespace(ns))
    ns = namespace_of(pid)                   # a container's netns, via /proc/PID/ns/net
    set_up(ns, "lo")                         # ip link set lo up
    a, b = create_veth(ns)                   # ip link add A type veth peer name B
    move_link(ns, b, other, new_name="eth0") # ip link set B netns OTHER; ip link set B name eth0
    add_address(other, "eth0", "198.18.0.2/24"); add_route(other, "198.18.1.0/24", "eth0")
    br = create_bridge(ns); attach_to_bridge(ns, a, br)      # ip link set A master BR up
    read_topology([ns, other]) -> Topology   # what the kernel says; .describe(), draw(topology)
    ping(ns, ["198.18.0.3"]) -> {addr: bool}; measure_throughput(ns_a, ns_b, "198.18.0.3")

    with Network(members=[pid1, pid2, None]) as lan: ...     # N members on one bridge (see Network)
    with veth_to_host(pid) as link: ...                      # one cable host <-> container (HostVeth)

Notebook safety: every public function runs its netlink requests off a notebook's event loop and
holds Ctrl-C until a kernel object is made and recorded (see labkit.net.netlink).

The package, one concern per module (lowest first):

    addresses   names and lab addresses (pure)       netlink    sockets in a namespace, off_loop
    netns       namespaces: create, find, remove, run links      veths, taps, bridges, addresses, routes
    topology    the kernel's state read back          probes     ping and TCP throughput
    devices     drivers, tap flags, /proc/net/dev
    network     Network, Endpoint, reachability       isolation  chapter 3's exercise checker
    hostveth    one cable host <-> container          sweep      cleanup hooks
The drawing is in labkit.netview (a view, like the other pictures), exported here as `draw`.
"""
from __future__ import annotations

from ..netview import draw
from .addresses import (BRIDGE_RANGE, DEFAULT_SUBNET, FIRST_HOST, HOST_LINK_RANGE, IFNAMSIZ, LAB_RANGE,
                        check_ifname, check_lab_address, check_route, check_subnet, lab_ip, plan_addresses)
from .hostveth import HostVeth, veth_to_host
from .isolation import check_isolated, check_isolation_answer, endpoints_of
from .devices import Counters, driver_info, net_dev, tun_flags, tun_holders
from .links import (add_address, add_route, attach_to_bridge, create_bridge, create_tap, create_veth, free_ifname,
                    move_link, set_up)
from ..interrupts import hold_interrupts
from .netlink import off_loop
from .netns import (HOST, NETNS_DIR, Namespace, as_namespace, create_namespace, in_namespace, lab_namespaces,
                    named, namespace_of, own_lab_namespaces, remove_namespace)
from .network import Attachment, Endpoint, Network, TapPort, attach_container, format_matrix, reachability
from .probes import Throughput, checksum, echo_request, measure_throughput, ping, socket_in
from .sweep import find_leftovers, remove_leftover
from .topology import (Interface, NamespaceState, Route, Topology, read_bridge, read_docker0, read_routes,
                       read_topology)

__all__ = [
    "BRIDGE_RANGE", "DEFAULT_SUBNET", "FIRST_HOST", "HOST", "HOST_LINK_RANGE", "IFNAMSIZ", "LAB_RANGE",
    "NETNS_DIR", "Attachment", "Counters", "Endpoint", "HostVeth", "Interface", "Namespace", "NamespaceState",
    "Network", "Route", "TapPort", "Throughput", "Topology", "add_address", "add_route", "as_namespace",
    "attach_container", "attach_to_bridge", "check_ifname", "check_isolated", "check_isolation_answer",
    "check_lab_address", "check_route", "check_subnet", "checksum", "create_bridge", "create_namespace",
    "create_tap", "create_veth", "draw", "driver_info", "echo_request", "endpoints_of", "find_leftovers",
    "format_matrix", "free_ifname", "hold_interrupts", "in_namespace", "lab_ip", "lab_namespaces",
    "measure_throughput", "move_link", "named", "namespace_of", "net_dev", "off_loop", "own_lab_namespaces",
    "ping", "plan_addresses", "reachability",
    "read_bridge", "read_docker0", "read_routes", "read_topology", "remove_leftover", "remove_namespace",
    "set_up", "socket_in", "tun_flags", "tun_holders", "veth_to_host",
]
