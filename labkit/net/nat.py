"""A way out, built entirely inside lab namespaces: a default route, ip_forward, MASQUERADE and a
published port (DNAT) - what Docker's default bridge network adds to the bridge of chapter 3.

The real host namespace is never touched. Two lab namespaces play its part and the internet's:

    container                "host" (labkit-host-...)                          "outside" (labkit-out-...)
    eth0 198.18.N.2/24 --- port -- bridge 198.18.N.1/24 (Docker's docker0)
    default via .1                 uplink 198.19.M.1/30 ====== veth ====== wan 198.19.M.2/30
                                   default via 198.19.M.2                   lo 198.19.250.1/32: "a server
                                   net.ipv4.ip_forward = 1                   on the internet"
                                   iptables -t nat: MASQUERADE, DNAT        (no route back to 198.18.N.0/24)

The "outside" namespace has no route to the containers' subnet, like the internet has none to
172.17.0.0/16: a reply can only come back if the "host" rewrote the source address to its own
uplink address (MASQUERADE), and conntrack remembers the rewrite to undo it on the replies. A
published port is the same table read the other way: a packet for the host's port is rewritten to
the container's address before routing (DNAT).

Every address is in the lab range and every link is a veth between two lab namespaces: a default
route here can only lead to another lab namespace. The rules are Docker's own (moby's
libnetwork/iptables for the default bridge), written with the iptables command Docker runs - on
Debian and Ubuntu it is iptables-nft, so they live in nftables tables of the "host" namespace
(`ruleset()` shows them as `nft list ruleset` does).
"""
from __future__ import annotations

import ipaddress
import re
import shutil
from dataclasses import dataclass

from .. import cleanup
from ..errors import InvalidValue, Unsupported
from ..interrupts import holding
from .addresses import HOST_LINK_RANGE, check_lab_address, check_subnet, lab_ip
from .links import add_address, create_veth, move_link, refuse_host, set_up
from .netlink import off_loop, rtnl
from . import netns
from .netns import Namespace, as_namespace, create_namespace, remove_namespace
from .network import Endpoint, Network

SERVER = ipaddress.IPv4Address("198.19.250.1")   # the "internet" server's address, on outside's lo
UPLINK = "198.19.250.4/30"                        # host 198.19.250.5 <-> outside 198.19.250.6
TOOLS = ("nsenter", "iptables", "conntrack")


def in_namespace(ns: Namespace, argv: list[str], check: bool = True) -> str:
    """Run a command inside a lab namespace (nsenter --net=PATH), never the host's; its stdout."""
    refuse_host(ns, "run commands in")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise Unsupported(f"{', '.join(missing)} missing: install iptables, conntrack and util-linux "
                          "(vagrant/packages.txt)")
    return netns.in_namespace(ns, argv, check=check)


@off_loop
def add_default_route(ns: Namespace, gateway) -> None:
    """`ip route add default via GATEWAY` inside a lab namespace; the gateway must be a lab address."""
    refuse_host(ns, "add a default route in")
    with rtnl(ns) as ipr:
        ipr.route("add", dst="0.0.0.0/0", gateway=lab_ip(gateway))


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: the connection as it left its sender, and as the replies come back."""
    protocol: str
    state: str
    original: tuple[str, int, str, int]     # src, sport, dst, dport as the first packet had them
    reply: tuple[str, int, str, int]        # src, sport, dst, dport the replies carry

    @property
    def source_nat(self) -> bool:
        """The replies go to another address than the sender's: its source was rewritten (SNAT/MASQUERADE)."""
        return self.reply[2] != self.original[0]

    @property
    def destination_nat(self) -> bool:
        """The replies come from another address than the one dialled: the destination was rewritten (DNAT)."""
        return self.reply[0] != self.original[2]


_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def parse_conntrack(text: str) -> list[Flow]:
    """`conntrack -L` lines -> Flows (TCP and UDP entries: they carry ports)."""
    flows = []
    for line in text.splitlines():
        tuples = _TUPLE.findall(line)
        if len(tuples) < 2:
            continue
        words = line.split()
        state = words[3] if words[0] == "tcp" else ""
        (s1, d1, sp1, dp1), (s2, d2, sp2, dp2) = tuples[:2]
        flows.append(Flow(words[0], state, (s1, int(sp1), d1, int(dp1)), (s2, int(sp2), d2, int(dp2))))
    return flows


class NatLab:
    """Docker's bridge network with a way out and published ports, between lab namespaces only.

        with NatLab() as lab:                     # "host" and "outside" namespaces, bridge, uplink
            lab.connect(box.pid)                  # a container on the bridge, default route via .1
            lab.masquerade()                      # iptables -t nat -A POSTROUTING ... -j MASQUERADE
            lab.publish(8080, box_ip, 80)         # docker run -p 8080:80
            lab.flows()                           # conntrack -L in the "host" namespace
    """

    def __init__(self, subnet="198.18.40.0/24"):
        self.subnet = check_subnet(subnet)
        self.gateway = ipaddress.IPv4Interface(f"{self.subnet.network_address + 1}/{self.subnet.prefixlen}")
        uplink = ipaddress.IPv4Network(UPLINK)
        if not uplink.subnet_of(HOST_LINK_RANGE):
            raise InvalidValue("uplink", UPLINK, f"a /30 of {HOST_LINK_RANGE}")
        self.host_uplink = ipaddress.IPv4Interface(f"{uplink.network_address + 1}/30")
        self.outside_wan = ipaddress.IPv4Interface(f"{uplink.network_address + 2}/30")
        self.server = SERVER
        self.lan = Network(subnet=self.subnet, label="host")
        self.host: Namespace | None = None
        self.outside: Namespace | None = None
        self.published: list[tuple[int, str, int]] = []
        self._claimed: list[str] = []

    def __enter__(self) -> "NatLab":
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @holding
    def create(self) -> "NatLab":
        """The "host" namespace (bridge with the gateway address, ip_forward on, a default route to
        "outside") and the "outside" namespace (the other end of the uplink, and the server's address)."""
        self.lan.create()
        self.host = self.lan.switch
        self.outside = create_namespace("out", label="outside")
        add_address(self.host, self.lan.bridge, self.gateway)             # docker0's 172.17.0.1
        uplink, wan = create_veth(self.host)
        self._claimed = [uplink, wan]          # the cable dies with the namespaces; close() forgets the names
        move_link(self.host, wan, self.outside, new_name="wan")
        add_address(self.host, uplink, self.host_uplink)
        set_up(self.host, uplink)
        self.uplink = uplink
        add_address(self.outside, "wan", self.outside_wan)
        set_up(self.outside, "wan")
        set_up(self.outside, "lo")
        check_lab_address(f"{self.server}/32")
        add_address(self.outside, "lo", f"{self.server}/32")
        add_default_route(self.host, self.outside_wan.ip)                  # the host's way out
        in_namespace(self.host, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        return self

    def ip_forward(self) -> int:
        """net.ipv4.ip_forward as the "host" namespace has it (each network namespace has its own)."""
        return int(in_namespace(self.host, ["cat", "/proc/sys/net/ipv4/ip_forward"]))

    def connect(self, member) -> Endpoint:
        """Plug a container (pid, Process, namespace) into the bridge; its default route goes via the gateway."""
        endpoint = self.lan.connect(member)
        add_default_route(endpoint.namespace, self.gateway.ip)
        return endpoint

    # Docker's rules ------------------------------------------------------------------------------

    def masquerade(self) -> list[str]:
        """Docker's outbound NAT for the bridge (`iptables -t nat -S` shows it like this)."""
        rule = ["-t", "nat", "-A", "POSTROUTING", "-s", str(self.subnet), "!", "-o", self.lan.bridge,
                "-j", "MASQUERADE"]
        in_namespace(self.host, ["iptables", *rule])
        return rule

    def publish(self, host_port: int, container_ip: str, container_port: int) -> list[list[str]]:
        """`docker run -p HOST_PORT:CONTAINER_PORT`: DNAT in a DOCKER chain reached from PREROUTING
        (and OUTPUT) for packets to one of the host's own addresses, as Docker writes it."""
        for name, port in (("host port", host_port), ("container port", container_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise InvalidValue(name, port, "a TCP port number, 1 to 65535")
        container_ip = lab_ip(container_ip)
        if ipaddress.IPv4Address(container_ip) not in self.subnet:
            raise InvalidValue("container address", container_ip, f"an address on this bridge's {self.subnet}")
        rules = []
        if not self._has_chain("DOCKER"):
            rules += [["-t", "nat", "-N", "DOCKER"],
                      ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
                      ["-t", "nat", "-A", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype",
                       "--dst-type", "LOCAL", "-j", "DOCKER"]]
        rules.append(["-t", "nat", "-A", "DOCKER", "!", "-i", self.lan.bridge, "-p", "tcp", "-m", "tcp",
                      "--dport", str(host_port), "-j", "DNAT", "--to-destination",
                      f"{container_ip}:{container_port}"])
        for rule in rules:
            in_namespace(self.host, ["iptables", *rule])
        self.published.append((host_port, container_ip, container_port))
        return rules

    def _has_chain(self, chain: str) -> bool:
        return f"-N {chain}" in in_namespace(self.host, ["iptables", "-t", "nat", "-S"])

    # what the kernel has -------------------------------------------------------------------------

    def rules(self) -> str:
        """`iptables -t nat -S -v`-style listing of the "host" namespace's NAT table, with counters."""
        return in_namespace(self.host, ["iptables", "-t", "nat", "-L", "-n", "-v", "-x"])

    def ruleset(self) -> str:
        """The same rules as nftables holds them (`nft list ruleset` in the "host" namespace)."""
        if shutil.which("nft") is None:
            raise Unsupported("nft is missing: install nftables (vagrant/packages.txt)")
        return in_namespace(self.host, ["nft", "list", "ruleset"])

    def flows(self) -> list[Flow]:
        """The "host" namespace's connection-tracking table (`conntrack -L`), TCP and UDP entries."""
        return parse_conntrack(in_namespace(self.host, ["conntrack", "-L"], check=False))

    def route_get(self, ns: Namespace, destination, source: str | None = None, iif: str | None = None) -> str:
        """`ip route get DESTINATION [from SOURCE iif IIF]` inside ns: the kernel's routing decision."""
        argv = ["ip", "-o", "route", "get", lab_ip(destination)]
        if source:
            argv += ["from", lab_ip(source)]
        if iif:
            argv += ["iif", iif]
        return " ".join(in_namespace(ns, argv).split()).replace("\\", "").strip()

    @holding
    def close(self) -> None:
        try:
            if self.outside is not None:
                remove_namespace(self.outside)
                self.outside = None
        finally:
            self.lan.close()
            self.host = None
            for name in self._claimed:
                cleanup.release("link", name)
            self._claimed = []


def container_namespace(pid) -> Namespace:
    """A container's network namespace, for in_namespace/route_get (never the host's)."""
    return as_namespace(pid)


class RecordingServer:
    """A TCP server inside a lab namespace that records who called and what they sent.

    Its socket is made inside `ns` (labkit.net.probes.socket_in); a thread of this process accepts,
    reads until the caller closes, closes, and appends (peer address, peer port, data) to `calls`.
    `peer address` is the kernel's getpeername(): the source address the packets arrived with.
    """

    def __init__(self, ns: Namespace, address, port: int):
        import threading
        from .probes import socket_in

        self.calls: list[tuple[str, int, bytes]] = []
        self._sock = socket_in(ns)
        self._sock.bind((lab_ip(address), port))
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"server {address}:{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            data = b""
            with conn:
                conn.settimeout(2)
                try:
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass
            self.calls.append((peer[0], peer[1], data))

    def first_call(self, timeout: float = 5) -> tuple[str, int, bytes] | None:
        """The first call recorded, waiting for it up to `timeout` seconds (None: nobody got through)."""
        import time
        deadline = time.monotonic() + timeout
        while not self.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.calls[0] if self.calls else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
