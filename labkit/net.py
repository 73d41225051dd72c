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
  192.168/16 - and this machine's own uplink sits in 192.0.2.0/24). Bridges get subnets from
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

Notebook safety: pyroute2 0.9's synchronous `IPRoute` refuses to run inside a running asyncio event
loop (a notebook cell). Every public function here is wrapped by `_off_loop`, which runs it in a
short-lived worker thread when the caller's thread has a running loop. The worker never changes its
namespace: pyroute2 opens a netlink socket inside a namespace by forking a child that setns-es and
hands the socket back, so neither the notebook kernel nor any of its threads ever leaves the host
namespace. Sockets for ping and throughput are made the same way (`pyroute2.netns.create_socket`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from . import cleanup
from .errors import Conflict, InvalidValue, KernelError, LabkitError, NotFound, from_oserror

# --- constants -----------------------------------------------------------------------------------

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")        # RFC 2544 benchmarking block
BRIDGE_RANGE = ipaddress.ip_network("198.18.0.0/16")     # subnets for Network (bridges)
HOST_LINK_RANGE = ipaddress.ip_network("198.19.0.0/16")  # /30s for veth_to_host
DEFAULT_SUBNET = "198.18.0.0/24"
FIRST_HOST = 2          # .1 stays free: it is where Docker would put the bridge's gateway address
IFNAMSIZ = 16           # linux/if.h; a name holds at most IFNAMSIZ - 1 = 15 characters
NETNS_DIR = Path("/run/netns")
IFF_UP = 0x1


# --- names and addresses (pure functions; unit-tested without root) ----------------------------

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


# --- running netlink without upsetting a notebook's event loop -------------------------------

def _off_loop(fn):
    """Run `fn` in a worker thread if the calling thread is running an asyncio loop.

    A Ctrl-C (KeyboardInterrupt) that arrives while waiting lets the worker finish its step first,
    so the caller's cleanup sees the kernel in a settled state rather than racing a half-made link.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labkit-net") as pool:
            future = pool.submit(fn, *args, **kwargs)
            try:
                return future.result()
            except BaseException:
                concurrent.futures.wait([future])
                raise
    return wrapper


_held: list | None = None     # SIGINTs caught while a kernel change was being made (main thread only)


@contextmanager
def _hold_interrupts():
    """Hold Ctrl-C until the block has finished, then raise KeyboardInterrupt.

    Making a kernel object and recording it must not be split by an interrupt: pyroute2 creates a
    netns in a forked child that carries on even if we are interrupted, and an object made but not
    yet recorded could not be torn down. Nested blocks share the outermost hold. Signals are only
    delivered to the main thread; in a notebook the work runs in _off_loop's worker and the main
    thread waits for it to finish before it raises.
    """
    global _held
    if _held is not None or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    _held = []
    previous = signal.signal(signal.SIGINT, lambda *_: _held.append(1))
    try:
        yield
    finally:
        caught, _held = _held, None
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _holding(method):
    """Decorator form of _hold_interrupts, for the methods that change the kernel."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _hold_interrupts():
            return method(*args, **kwargs)
    return wrapper


# --- namespaces --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Namespace:
    """A network namespace labkit may touch: a named lab netns, a process's netns, or the host (read-only)."""

    label: str                      # what drawings and tables show
    path: str | None                # /run/netns/NAME or /proc/PID/ns/net; None = the host (this process's)
    name: str | None = None         # labkit-... when it lives in /run/netns
    pid: int | None = None

    @property
    def is_host(self) -> bool:
        return self.path is None

    def inode(self) -> int:
        return os.stat(self.path or "/proc/self/ns/net").st_ino

    def __str__(self) -> str:
        return self.label


HOST = Namespace("host", None)


def _host_inodes() -> set[int]:
    inodes = {os.stat("/proc/self/ns/net").st_ino}
    try:
        inodes.add(os.stat("/proc/1/ns/net").st_ino)
    except OSError:
        pass
    return inodes


def namespace_of(pid, label: str | None = None) -> Namespace:
    """The network namespace of process `pid` (an int or anything with `.pid`, e.g. a labkit Process)."""
    pid = getattr(pid, "pid", pid)
    if not isinstance(pid, int) or pid <= 0:
        raise InvalidValue("pid", pid, "a positive process id, or an object with .pid")
    path = f"/proc/{pid}/ns/net"
    try:
        inode = os.stat(path).st_ino
    except OSError as exc:
        raise from_oserror(exc, "open", path) from None
    if inode in _host_inodes():
        raise InvalidValue("pid", pid, "a process in its own network namespace (this one shares the host's; "
                                       "spawn it with the 'net' namespace)")
    return Namespace(label or f"pid {pid}", path, pid=pid)


def named(name: str) -> Namespace:
    """An existing lab namespace by name: 'labkit-ns-1a2b3c' (or 'ns-1a2b3c')."""
    name = cleanup.checked_name(name)
    path = NETNS_DIR / name
    if not path.exists():
        raise NotFound(f"network namespace {name}: not in {NETNS_DIR}")
    return Namespace(name, str(path), name=name)


def as_namespace(member) -> Namespace:
    """Accept a Namespace, a pid, an object with .pid, or a lab namespace name."""
    if isinstance(member, Namespace):
        return member
    if isinstance(member, str):
        return named(member)
    return namespace_of(member)


@_off_loop
def create_namespace(hint: str = "ns", label: str | None = None) -> Namespace:
    """A new, empty named network namespace (like `ip netns add`): /run/netns/labkit-<hint>-XXXXXX.

    pyroute2 forks a child that unshare(CLONE_NEWNET)s and bind-mounts its /proc/self/ns/net onto the
    name, so the namespace outlives the child. Inside there is nothing but a loopback that is down.
    """
    from .host import require_lab_host

    require_lab_host("create a network namespace")
    from pyroute2 import netns

    name = cleanup.unique_name(hint)
    try:
        with _hold_interrupts():               # an interrupt waits until the child has finished ...
            cleanup.claim("netns", name)
            netns.create(name)
    except BaseException:
        _remove_named(name)                    # ... so that nothing half-made survives it
        raise
    return Namespace(label or name, str(NETNS_DIR / name), name=name)


def _remove_named(name: str) -> None:
    from pyroute2 import netns

    path = NETNS_DIR / name
    if path.exists():
        try:
            netns.remove(name)          # umount2(MNT_DETACH) + unlink, as `ip netns del` does
        except FileNotFoundError:
            pass
    cleanup.release("netns", name)


@_off_loop
@_holding
def remove_namespace(ns: Namespace) -> None:
    """Remove a named lab namespace. Its veths are deleted first, so their peers vanish now, not later."""
    if not ns.name or not ns.name.startswith(cleanup.PREFIX):
        raise InvalidValue("namespace", ns.label, "a named labkit- namespace (process namespaces die with the process)")
    try:
        with _rtnl(ns) as ipr:
            for link in ipr.get_links():
                if _kind(link) == "veth":
                    _delete_link(ipr, link["index"])
    except Exception:                    # noqa: BLE001 - already gone (or going): nothing inside to delete
        pass
    _remove_named(ns.name)


@contextmanager
def _rtnl(ns: Namespace) -> Iterator:
    """A netlink (rtnetlink) socket inside `ns`; flags=0 so a missing namespace is an error, not created."""
    from pyroute2 import IPRoute

    try:
        ipr = IPRoute() if ns.is_host else IPRoute(netns=ns.path, flags=0)
    except OSError as exc:
        raise from_oserror(exc, "open netlink in", ns.label) from None
    try:
        yield ipr
    finally:
        ipr.close()


def _kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def _index(ipr, ifname: str, ns_label: str = "") -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NotFound(f"interface {ifname} in namespace {ns_label}")
    return found[0]


def _delete_link(ipr, index: int) -> None:
    from pyroute2 import NetlinkError

    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise


def _netlink_error(exc, operation: str, target: str) -> LabkitError:
    code = getattr(exc, "code", None) or errno.EIO
    if code == errno.EEXIST:
        return Conflict(f"{operation} {target}: already exists")
    return KernelError(operation, target, code)


# --- links, addresses, routes: one netlink request each --------------------------------------

@_off_loop
def set_up(ns: Namespace, ifname: str = "lo") -> None:
    """`ip link set IFNAME up` inside ns (default: the loopback, which starts down in a new namespace)."""
    _refuse_host(ns, "change links in")
    with _rtnl(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname, ns.label), state="up")


@_off_loop
@_holding
def create_bridge(ns: Namespace, name: str | None = None) -> str:
    """`ip link add NAME type bridge; ip link set NAME up` inside ns; no address (nothing routes out)."""
    _refuse_host(ns, "create a bridge in")
    name = check_ifname(name or cleanup.unique_name("b", IFNAMSIZ - 1))
    cleanup.claim("link", name)
    with _rtnl(ns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except Exception as exc:
            cleanup.release("link", name)
            raise _netlink_error(exc, "create bridge", name) from None
        ipr.link("set", index=_index(ipr, name, ns.label), state="up")
    return name


@_off_loop
@_holding
def create_veth(ns: Namespace, name: str | None = None, peer: str | None = None) -> tuple[str, str]:
    """`ip link add NAME type veth peer name PEER` inside ns: two ends of one virtual cable."""
    name = check_ifname(name or cleanup.unique_name("v", IFNAMSIZ - 1))
    peer = check_ifname(peer or cleanup.unique_name("p", IFNAMSIZ - 1))
    cleanup.claim("link", name)
    cleanup.claim("link", peer)
    with _rtnl(ns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="veth", peer=peer)
        except Exception as exc:
            cleanup.release("link", name)
            cleanup.release("link", peer)
            raise _netlink_error(exc, "create veth", f"{name}/{peer}") from None
    return name, peer


@_off_loop
@_holding
def move_link(src: Namespace, ifname: str, dst: Namespace, new_name: str | None = None) -> str:
    """Move a link into another namespace (`ip link set IFNAME netns DST`), optionally renaming it there.

    The request carries IFLA_NET_NS_FD: an open file descriptor of the target's namespace file.
    """
    _refuse_host(dst, "move a link into")
    if new_name:
        check_ifname(new_name)
    fd = os.open(dst.path, os.O_RDONLY)
    try:
        with _rtnl(src) as ipr:
            ipr.link("set", index=_index(ipr, ifname, src.label), net_ns_fd=fd)
    finally:
        os.close(fd)
    if new_name and new_name != ifname:
        with _rtnl(dst) as ipr:
            try:
                ipr.link("set", index=_index(ipr, ifname, dst.label), ifname=new_name)
            except NotFound:
                raise
            except Exception as exc:
                raise _netlink_error(exc, "rename", f"{ifname} to {new_name}") from None
        return new_name
    return ifname


@_off_loop
@_holding
def attach_to_bridge(ns: Namespace, ifname: str, bridge: str) -> None:
    """`ip link set IFNAME master BRIDGE up` inside ns: plug a veth end into a bridge (it becomes a port)."""
    _refuse_host(ns, "change links in")
    with _rtnl(ns) as ipr:
        ipr.link("set", index=_index(ipr, ifname, ns.label), master=_index(ipr, bridge, ns.label), state="up")


@_off_loop
def add_address(ns: Namespace, ifname: str, address) -> ipaddress.IPv4Interface:
    """`ip addr add ADDRESS dev IFNAME` inside ns; only lab-range addresses are accepted.

    The kernel adds the connected route for the subnet by itself (proto kernel scope link).
    """
    _refuse_host(ns, "add an address in")
    iface = check_lab_address(address)
    with _rtnl(ns) as ipr:
        try:
            ipr.addr("add", index=_index(ipr, ifname, ns.label), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except LabkitError:
            raise
        except Exception as exc:
            raise _netlink_error(exc, "add address", f"{iface} on {ifname}") from None
    return iface


@_off_loop
def add_route(ns: Namespace, destination, ifname: str) -> ipaddress.IPv4Network:
    """`ip route add DESTINATION dev IFNAME` inside ns. Lab destinations only; never a default route."""
    _refuse_host(ns, "add a route in")
    net = check_route(destination)
    with _rtnl(ns) as ipr:
        try:
            ipr.route("add", dst=str(net.network_address), dst_len=net.prefixlen, oif=_index(ipr, ifname, ns.label))
        except LabkitError:
            raise
        except Exception as exc:
            raise _netlink_error(exc, "add route", f"{net} dev {ifname}") from None
    return net


@_off_loop
def free_ifname(ns: Namespace, stem: str = "eth") -> str:
    """The first name stem0, stem1, ... not used in ns (Docker calls a container's first NIC eth0)."""
    with _rtnl(ns) as ipr:
        used = {link.get("ifname") for link in ipr.get_links()}
    n = 0
    while f"{stem}{n}" in used:
        n += 1
    return check_ifname(f"{stem}{n}")


def _refuse_host(ns: Namespace, action: str) -> None:
    if ns.is_host:
        raise InvalidValue("namespace", "host", f"a lab namespace: labkit does not {action} the host namespace")


def _wait(condition, timeout: float = 5.0, what: str = "") -> None:
    """Poll until condition() is true: the kernel tears some things down asynchronously."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise KernelError("wait for", what, errno.ETIMEDOUT)
        time.sleep(0.02)


# --- reading the kernel's state back -----------------------------------------------------------

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


def _read_namespace(ns: Namespace, others: list[Namespace]) -> NamespaceState:
    addrs: dict[int, list[str]] = {}
    with _rtnl(ns) as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            addrs.setdefault(msg["index"], []).append(f"{msg.get('address')}/{msg['prefixlen']}")
        interfaces = []
        for link in ipr.get_links():
            interfaces.append(Interface(
                index=link["index"], name=link.get("ifname"), kind=_kind(link),
                up=bool(link["flags"] & IFF_UP), operstate=link.get("operstate") or "",
                addresses=addrs.get(link["index"], []), master=link.get("master"),
                peer_index=link.get("link") if _kind(link) == "veth" else None,
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


@_off_loop
def read_topology(namespaces: Iterable[Namespace]) -> Topology:
    """Ask the kernel, over netlink, what each namespace contains and how the veths connect them."""
    namespaces = list(namespaces)
    return Topology([_read_namespace(ns, namespaces) for ns in namespaces])


@_off_loop
def lab_namespaces() -> list[Namespace]:
    """Every named lab namespace on the machine, from /run/netns (the kernel's bind mounts), not bookkeeping."""
    if not NETNS_DIR.is_dir():
        return []
    return [Namespace(p.name, str(p), name=p.name) for p in sorted(NETNS_DIR.iterdir())
            if p.name.startswith(cleanup.PREFIX)]


@dataclass
class Route:
    destination: str          # "198.18.0.0/24", or "default"
    ifname: str | None
    gateway: str | None
    protocol: int             # 2 = kernel (a connected route, added with an address), 4 = static

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        return f"{self.destination}{via} dev {self.ifname}"


@_off_loop
def read_routes(ns: Namespace) -> list[Route]:
    """The main IPv4 routing table of ns, like `ip route` (reading the host's is allowed: it is read-only)."""
    with _rtnl(ns) as ipr:
        names = {l["index"]: l.get("ifname") for l in ipr.get_links()}
        return [Route(f"{r.get('dst')}/{r['dst_len']}" if r["dst_len"] else "default",
                      names.get(r.get("oif")), r.get("gateway"), r["proto"])
                for r in ipr.get_routes(family=socket.AF_INET, table=254)]


@_off_loop
def read_bridge(ns: Namespace, bridge: str) -> Topology | None:
    """One bridge and its ports as the kernel shows them in ns (read-only); None if there is no such bridge."""
    with _rtnl(ns) as ipr:
        if not ipr.link_lookup(ifname=bridge):
            return None
    state = _read_namespace(ns, [ns])
    found = state.interface(bridge)
    if found.kind != "bridge":
        raise InvalidValue("bridge", bridge, f"the name of a bridge in {ns.label} (it is a {found.kind or 'plain'} link)")
    state.interfaces = [i for i in state.interfaces if i is found or i.master == found.index]
    return Topology([state])


def read_docker0() -> Topology | None:
    """Docker's default bridge, docker0, and its ports in the host namespace; None without a running Docker."""
    return read_bridge(HOST, "docker0")


# --- drawing (matplotlib), from a Topology that was read from the kernel ----------------------

def draw(topology: Topology, ax=None, title: str | None = None):
    """Draw namespaces as boxes, interfaces inside them, bridges as bars, veth pairs as cables.

    Namespaces that hold a bridge (the "switches") and the host go in the lower row, the others in
    the upper row, ordered by the bridge port they are plugged into. Returns the matplotlib Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    port_w, port_h, line_h, head_h, gap = 1.9, 0.5, 0.26, 0.8, 0.5

    def cables(ns):
        return [i for i in ns.interfaces if i.kind == "veth"]

    def others(ns):
        return [i for i in ns.interfaces if i.kind not in ("veth", "bridge")]

    def bridges(ns):
        return [i for i in ns.interfaces if i.kind == "bridge"]

    def width(ns):
        return max(2.6, len(cables(ns)) * (port_w + 0.2) + 0.2)

    def height(ns):  # header, text lines, a row of veth ends, then the bridge bars
        return head_h + line_h * len(others(ns)) + (port_h + 0.2 if cables(ns) else 0) \
            + (0.45 * len(bridges(ns)) + 0.35 if bridges(ns) else 0) + 0.1

    lower = [n for n in topology.namespaces if n.label == "host" or bridges(n)]
    upper = [n for n in topology.namespaces if n not in lower]

    def plug_position(ns):
        for i in cables(ns):
            end = topology.peer(ns, i)
            if end and end[0] in lower:
                return (lower.index(end[0]), cables(end[0]).index(end[1]))
        return (len(lower), 0)
    upper.sort(key=lambda n: (plug_position(n), n.label))

    rows = [r for r in (upper, lower) if r]
    row_w = max([sum(width(n) for n in r) + gap * (len(r) - 1) for r in rows] or [4.0])
    up_h = max([height(n) for n in upper] or [0])
    low_h = max([height(n) for n in lower] or [0])
    total_h = low_h + (up_h + 1.3 if upper else 0)
    if ax is None:   # a bare Figure, not pyplot's: nothing is shown twice or kept alive by pyplot
        fig = Figure(figsize=(min(16.0, max(6.0, row_w * 1.1)), max(2.0, total_h * 1.05)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    fig = ax.figure
    anchors = {}   # (ns label, ifindex) -> (x, y) where a cable attaches

    def box(ns, x, top, is_lower):
        w, h = width(ns), height(ns)
        ax.add_patch(FancyBboxPatch((x, top - h), w, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    fc="#eef3fb" if is_lower else "#f4f4f4", ec="#4a6fa5", lw=1.4))
        ax.text(x + 0.12, top - 0.2, ns.label, fontsize=8.5, weight="bold", va="top")
        ax.text(x + 0.12, top - 0.5, f"netns inode {ns.inode}", fontsize=6.5, color="#555", va="top")
        y = top - head_h
        for i in others(ns):
            ax.text(x + 0.12, y, f"{i.name}  {'UP' if i.up else 'DOWN'}  {' '.join(i.addresses)}",
                    fontsize=7, va="top", color="#2a7d2a" if i.up else "#999")
            y -= line_h
        py = y - port_h - 0.05 if is_lower else top - h + 0.12     # veth ends: top (switch) or bottom row
        for k, i in enumerate(cables(ns)):
            px = x + 0.2 + k * (port_w + 0.2)
            ax.add_patch(Rectangle((px, py), port_w, port_h, fc="white", ec="#2a7d2a" if i.up else "#b33", lw=1.2))
            ax.text(px + port_w / 2, py + 0.35, i.name, fontsize=6.8, ha="center", va="center")
            ax.text(px + port_w / 2, py + 0.13, " ".join(i.addresses) or ("UP" if i.up else "DOWN"),
                    fontsize=6.3, ha="center", va="center", color="#333")
            anchors[(ns.label, i.index)] = (px + port_w / 2, py + port_h if is_lower else py)
        by = top - h + 0.15
        for b in bridges(ns):                         # a bar per bridge, a line from each of its ports
            ax.add_patch(Rectangle((x + 0.15, by), w - 0.3, 0.36, fc="#ffe7b3" if b.up else "#ddd", ec="#a66f00"))
            ax.text(x + w / 2, by + 0.18, f"bridge {b.name}  {'UP' if b.up else 'DOWN'}  {' '.join(b.addresses)}",
                    fontsize=7, ha="center", va="center")
            for k, p in enumerate(cables(ns)):
                if p.master == b.index:
                    px = x + 0.2 + k * (port_w + 0.2) + port_w / 2
                    ax.plot([px, px], [py, by + 0.36], color="#a66f00", lw=1.2)
            by += 0.45

    def layout(row, top, is_lower):
        x = (row_w - sum(width(n) for n in row) - gap * (len(row) - 1)) / 2
        for ns in row:
            box(ns, x, top, is_lower)
            x += width(ns) + gap

    layout(lower, low_h, True)
    layout(upper, total_h, False)
    for (a_ns, a_if), (b_ns, b_if) in topology.veth_pairs():
        a = anchors.get((a_ns, topology.namespace(a_ns).interface(a_if).index))
        b = anchors.get((b_ns, topology.namespace(b_ns).interface(b_if).index))
        if a and b and a_ns == b_ns:          # both ends in one namespace (a cable not yet moved): an arc
            ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-", connectionstyle="arc3,rad=-0.6",
                                         color="#2a5caa", lw=2))
        elif a and b:
            ax.plot([a[0], b[0]], [a[1], b[1]], color="#2a5caa", lw=2, solid_capstyle="round")
    ax.set_xlim(-0.3, row_w + 0.3)
    ax.set_ylim(-0.3, total_h + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- sockets made inside a namespace: ping and throughput -------------------------------------

def socket_in(ns: Namespace, kind: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace ns, returned to this process (which never leaves its own).

    pyroute2 forks a child that setns-es into ns, creates the socket and passes the descriptor back
    over a unix socket (SCM_RIGHTS). Close it: an open socket keeps its namespace alive.
    """
    from pyroute2 import netns

    if ns.is_host:
        raise InvalidValue("namespace", "host", "a lab namespace: labkit sends traffic only inside lab namespaces")
    try:
        return netns.create_socket(ns.path, socket.AF_INET, kind, proto, flags=0)
    except OSError as exc:
        raise from_oserror(exc, "create a socket in", ns.label) from None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int, payload: bytes = b"labkit-ping") -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)             # type 8 = echo request
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def _lab_ip(address) -> str:
    ip = ipaddress.IPv4Address(str(address).split("/")[0])
    if ip not in LAB_RANGE and not ip.is_loopback:
        raise InvalidValue("address", address, f"an address inside the lab range {LAB_RANGE} (or loopback)")
    return str(ip)


@_off_loop
def ping(src: Namespace, addresses, timeout: float = 1.0) -> dict[str, bool]:
    """ICMP echo from inside `src` to each address (lab range only); {address: answered within timeout}.

    One raw ICMP socket made inside src sends all the requests, then collects echo replies that carry
    our identifier. "No route" errors count as unreachable, immediately.
    """
    targets = [_lab_ip(a) for a in ([addresses] if isinstance(addresses, str) else addresses)]
    result = {t: False for t in targets}
    ident = random.randrange(1, 0xFFFF)
    sock = socket_in(src, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        pending = {}
        for seq, target in enumerate(targets, start=1):
            try:
                sock.sendto(_echo_request(ident, seq), (target, 0))
                pending[seq] = target
            except OSError as exc:
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES):
                    raise
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                packet, (sender, _) = sock.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (packet[0] & 0x0F) * 4                            # raw sockets see the IP header too
            kind, _code, _sum, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
            if kind == 0 and rid == ident and pending.get(rseq) == sender:   # type 0 = echo reply
                result[pending.pop(rseq)] = True
    finally:
        sock.close()
    return result


@dataclass
class Throughput:
    path: str             # "veth+bridge" or "loopback"
    bytes: int
    seconds: float

    @property
    def gbit_per_s(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else 0.0


def _in_child(fn, *args) -> tuple[int, int]:
    """Fork; the child runs fn(*args) and writes its JSON result to a pipe. Returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child: no threads, no event loop, just sockets
        status = 0
        try:
            os.close(r)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            out = json.dumps({"ok": fn(*args)})
        except BaseException as exc:               # noqa: BLE001 - reported to the parent
            out, status = json.dumps({"error": repr(exc)}), 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(status)
    os.close(w)
    return pid, r


def _child_result(pid: int, fd: int, timeout: float):
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        data = b""
        if ready:
            while chunk := os.read(fd, 65536):
                data += chunk
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)           # harmless if it already exited; never waits forever
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not data:
        raise KernelError("throughput measurement", f"child {pid}", errno.ETIMEDOUT)
    answer = json.loads(data)
    if "error" in answer:
        raise LabkitError(f"throughput measurement failed in child: {answer['error']}")
    return answer["ok"]


def _receive(listener: socket.socket, timeout: float):
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    conn.settimeout(timeout)
    buf = bytearray(1 << 20)
    total, first, last = 0, None, None
    while n := conn.recv_into(buf):
        if first is None:
            first = time.perf_counter()
        total += n
        last = time.perf_counter()
    conn.close()
    return [total, (last - first) if first else 0.0]


def _send(client: socket.socket, address: tuple, seconds: float, max_bytes: int, timeout: float):
    client.settimeout(timeout)
    client.connect(address)
    chunk = b"\0" * (1 << 20)
    sent, end = 0, time.perf_counter() + seconds
    while sent < max_bytes and time.perf_counter() < end:
        sent += client.send(chunk[: max_bytes - sent])
    client.shutdown(socket.SHUT_WR)
    return sent


@_off_loop
def measure_throughput(sender: Namespace, receiver: Namespace, address, seconds: float = 1.0,
                       max_bytes: int = 8 << 30, path: str | None = None) -> Throughput:
    """TCP from a socket in `sender` to a listener on `address` in `receiver`, for `seconds` or `max_bytes`.

    Both sockets are created inside their lab namespaces; sender and receiver then run in two forked
    children (so they do not share a GIL), and the receiver reports bytes and time from first to
    last byte. Bounded: at most `max_bytes`, and every wait has a timeout.
    """
    if not 0.05 <= seconds <= 10:
        raise InvalidValue("seconds", seconds, "0.05 to 10")
    if not 1 <= max_bytes <= 64 << 30:
        raise InvalidValue("max_bytes", max_bytes, "1 byte to 64 GiB")
    ip = _lab_ip(address)
    timeout = seconds + 5
    listener = socket_in(receiver)
    client = socket_in(sender)
    rx = tx = None
    try:
        listener.bind((ip, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        rx = _in_child(_receive, listener, timeout)
        tx = _in_child(_send, client, (ip, port), seconds, max_bytes, timeout)
    finally:
        listener.close()                           # the children hold their own copies
        client.close()
    try:
        if tx:
            _child_result(*tx, timeout=timeout)
    finally:
        if rx:                                     # always reaped, even if the sender failed
            total, elapsed = _child_result(*rx, timeout=timeout)
    label = path or ("loopback" if ipaddress.IPv4Address(ip).is_loopback else "veth+bridge")
    return Throughput(label, total, elapsed)


# --- a Network: N members on one bridge, in a switch namespace ------------------------------

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

    @_off_loop
    @_holding
    def create(self) -> "Network":
        """The switch namespace and its bridge (up, no address)."""
        if self.switch is None:
            self.switch = create_namespace("sw", label=self.label)
            self.bridge = create_bridge(self.switch)
            self._claimed_links.append(self.bridge)
        return self

    @_off_loop
    @_holding
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
        if ns.is_host or ns.inode() in _host_inodes():
            raise InvalidValue("member", ns.label, "a namespace of its own, never the host's")
        if any(e.namespace.inode() == ns.inode() for e in self.endpoints):
            raise Conflict(f"{ns.label} is already connected to this network")
        iface = check_lab_address(address) if address else self._next_address()
        if iface.network != self.subnet:
            raise InvalidValue("address", str(iface), f"an address in this network's subnet {self.subnet}")
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

    @_off_loop
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

    def _next_address(self) -> ipaddress.IPv4Interface:
        used = {e.address.ip for e in self.endpoints}
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

    @_off_loop
    @_holding
    def disconnect(self, member) -> None:
        """Unplug a member: deleting the switch-side veth end deletes its peer (the member's ethN) too.

        The member's namespace stays (and so does a bare one this network made, until close()).
        """
        e = self.endpoint(member)
        with _rtnl(self.switch) as ipr:
            found = ipr.link_lookup(ifname=e.port)
            if found:
                _delete_link(ipr, found[0])
            _wait(lambda: not ipr.link_lookup(ifname=e.port), what=e.port)
        for name in (e.port, e.peer_name):
            if name:
                cleanup.release("link", name)
        self.endpoints.remove(e)
        # a bare namespace this network created stays until close(): it may be plugged in elsewhere

    @_off_loop
    @_holding
    def close(self) -> None:
        """Remove everything this network made; safe to call twice, after errors and half-finished setups."""
        errors = []
        if self.switch is not None:
            try:
                if (NETNS_DIR / self.switch.name).exists():
                    with _rtnl(self.switch) as ipr:
                        # veths first (each takes its peer with it, synchronously), then the bridge
                        for link in ipr.get_links():
                            if _kind(link) == "veth":
                                _delete_link(ipr, link["index"])
                        for link in ipr.get_links():
                            if _kind(link) == "bridge":
                                _delete_link(ipr, link["index"])
                        _wait(lambda: all(l["index"] == 1 for l in ipr.get_links()), what=f"links in {self.switch}")
            except Exception as exc:                           # keep going: remove what we can
                errors.append(exc)
            try:
                _remove_named(self.switch.name)
            except Exception as exc:
                errors.append(exc)
        for ns in self._owned:
            try:
                _remove_named(ns.name)
            except Exception as exc:
                errors.append(exc)
        for name in self._claimed_links:
            cleanup.release("link", name)
        self.endpoints, self._owned, self._claimed_links = [], [], []
        self.switch = self.bridge = None
        if errors:
            raise errors[0]

    # looking at it

    def namespaces(self) -> list[Namespace]:
        return ([self.switch] if self.switch else []) + [e.namespace for e in self.endpoints]

    def topology(self, extra: Iterable[Namespace] = ()) -> Topology:
        return read_topology(self.namespaces() + list(extra))

    def draw(self, title: str | None = None, extra: Iterable[Namespace] = (), ax=None):
        return draw(self.topology(extra), ax=ax, title=title)

    def reachability(self, timeout: float = 1.0) -> dict[tuple[str, str], bool]:
        return reachability(self.endpoints, timeout=timeout)

    def throughput(self, a=0, b=1, seconds: float = 1.0, max_bytes: int = 8 << 30) -> Throughput:
        src, dst = (self.endpoints[x] if isinstance(x, int) else self.endpoint(x) for x in (a, b))
        return measure_throughput(src.namespace, dst.namespace, dst.ip, seconds=seconds, max_bytes=max_bytes)


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


def check_isolated(isolated: Endpoint, others: Iterable[Endpoint], timeout: float = 1.0) -> tuple[bool, str]:
    """Is `isolated` cut off from `others`, while they still reach each other? Asked of the kernel.

    Returns (verdict, explanation). Reachability is measured with real pings; the bridges come from
    netlink (which bridge each namespace's veth peer is a port of).
    """
    others = list(others)
    twins = [o.label for o in others if o.ip == isolated.ip]
    if twins:   # a ping to its own address would be answered by itself and prove nothing
        return False, f"{isolated.label} has the same address {isolated.ip} as {', '.join(twins)}: give it its own"
    ping_out = ping(isolated.namespace, [o.ip for o in others], timeout=timeout)
    ping_in = {o.label: ping(o.namespace, [isolated.ip], timeout=timeout)[isolated.ip] for o in others}
    among = reachability(others, timeout=timeout)
    reached = [ip for ip, ok in ping_out.items() if ok] + [label for label, ok in ping_in.items() if ok]
    if reached:
        return False, f"{isolated.label} still exchanges pings with: {', '.join(reached)}"
    if not all(among.values()):
        broken = [f"{a}->{b}" for (a, b), ok in among.items() if not ok]
        return False, f"{isolated.label} is cut off, but so are the others from each other: {', '.join(broken)}"
    return True, f"{isolated.label} reaches none of {', '.join(o.label for o in others)}, and they still reach each other"


@_off_loop
def endpoints_of(members) -> list[Endpoint]:
    """Endpoints as the kernel has them now: each member's first non-loopback IPv4 address, read over netlink.

    `members`: Namespaces, pids or labkit Processes (labels: the Namespace's, else "pid N"), or a
    dict {label: member}. Members without an address are left out. The switch side (`port`) is not
    looked up here and stays empty.
    """
    items = members.items() if isinstance(members, dict) else [(None, m) for m in members]
    found = []
    for label, member in items:
        ns = as_namespace(member)
        if label:
            ns = Namespace(label, ns.path, ns.name, ns.pid)
        state = _read_namespace(ns, [])
        for iface in state.interfaces:
            lab = [a for a in iface.addresses if ipaddress.IPv4Interface(a).ip in LAB_RANGE]
            if lab:
                found.append(Endpoint(ns, iface.name, ipaddress.IPv4Interface(lab[0]), "", ""))
                break
    return found


def own_lab_namespaces() -> list[Namespace]:
    """Named lab namespaces whose owner record says this process made them (read from /run/netns)."""
    return [ns for ns in lab_namespaces() if cleanup.owner("netns", ns.name)[0] == os.getpid()]


def check_isolation_answer(answer: str, members, timeout: float = 1.0) -> tuple[bool, str]:
    """The chapter's exercise: `answer` is the address of the member that was moved to a second bridge.

    Everything is asked of the kernel: which member has that address now (netlink), which bridge its
    veth is a port of (netlink, across this process's lab namespaces), and whether it still exchanges
    pings with the others - who must still reach each other.
    """
    endpoints = endpoints_of(members)
    chosen = [e for e in endpoints if e.ip == answer.strip()]
    if not chosen:
        have = ", ".join(f"{e.label}={e.ip}" for e in endpoints) or "none"
        return False, f"no container has the address {answer.strip()!r} now; the kernel shows {have}"
    isolated = chosen[0]
    others = [e for e in endpoints if e is not isolated]
    topo = read_topology(own_lab_namespaces() + [e.namespace for e in endpoints])
    mine = topo.bridge_reached_by(isolated.label)
    theirs = set().union(*(topo.bridge_reached_by(o.label) for o in others)) if others else set()
    if not mine:
        return False, f"{isolated.label} is not plugged into any bridge: put it on a second one"
    if mine & theirs:
        shared = ", ".join(b for _, b in sorted(mine & theirs))
        return False, f"{isolated.label} still shares bridge {shared} with the others"
    ok, why = check_isolated(isolated, others, timeout=timeout)
    where = ", ".join(f"{b} in {n}" for n, b in sorted(mine))
    return ok, f"{why} (its bridge: {where})" if ok else why


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


# --- one veth between the host and a container (chapter 1's picture) ------------------------

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
        if self.namespace.is_host or self.namespace.inode() in _host_inodes():
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

    @_off_loop
    @_holding
    def create(self) -> "HostVeth":
        from .host import require_lab_host

        require_lab_host("create a veth pair")
        self.host_ifname = cleanup.unique_name("h", IFNAMSIZ - 1)
        self._peer_name = cleanup.unique_name("c", IFNAMSIZ - 1)
        cleanup.claim("link", self.host_ifname)
        cleanup.claim("link", self._peer_name)
        with _rtnl(HOST) as ipr:
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
        with _rtnl(HOST) as ipr:
            index = _index(ipr, self.host_ifname, "host")
            if self.host_address:
                ipr.addr("add", index=index, address=str(self.host_address.ip), prefixlen=30)
            ipr.link("set", index=index, state="up")
        return self

    @_off_loop
    @_holding
    def close(self) -> None:
        """Delete the host end (its peer goes with it). If the container died first, the kernel is
        already removing the pair on its own: wait for that instead of racing it."""
        if not self.host_ifname:
            return
        with _rtnl(HOST) as ipr:
            found = ipr.link_lookup(ifname=self.host_ifname)
            if found:
                _delete_link(ipr, found[0])
            _wait(lambda: not ipr.link_lookup(ifname=self.host_ifname), what=self.host_ifname)
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
    with _rtnl(HOST) as ipr:
        used = [ipaddress.IPv4Interface(f"{m.get('address')}/{m['prefixlen']}").network
                for m in ipr.get_addr(family=socket.AF_INET)]
    candidates = list(HOST_LINK_RANGE.subnets(new_prefix=30))
    random.shuffle(candidates)
    for net in candidates[:512]:
        if not any(net.overlaps(u) for u in used):
            return net
    raise Conflict(f"no free /30 in {HOST_LINK_RANGE} on this host")


# --- cleanup hooks (see labkit.cleanup) -------------------------------------------------------

@_off_loop
def find_leftovers():
    """Named lab namespaces in /run/netns, and labkit- links in the host namespace (read over netlink)."""
    found = []
    if NETNS_DIR.is_dir():
        for path in sorted(NETNS_DIR.iterdir()):
            if path.name.startswith(cleanup.PREFIX):
                found.append(cleanup.leftover("netns", path.name, str(path)))
    with _rtnl(HOST) as ipr:
        for link in ipr.get_links():
            name = link.get("ifname") or ""
            if name.startswith(cleanup.PREFIX):
                found.append(cleanup.leftover("link", name, f"host namespace, {_kind(link) or 'link'}",
                                              index=link["index"]))
    return found


@_off_loop
def remove_leftover(item) -> None:
    if item.kind == "netns" and item.name.startswith(cleanup.PREFIX):
        remove_namespace(Namespace(item.name, str(NETNS_DIR / item.name), name=item.name))
    elif item.kind == "link" and item.name.startswith(cleanup.PREFIX):
        with _rtnl(HOST) as ipr:
            found = ipr.link_lookup(ifname=item.name)
            if found:
                _delete_link(ipr, found[0])
            _wait(lambda: not ipr.link_lookup(ifname=item.name), what=item.name)
        cleanup.release("link", item.name)
