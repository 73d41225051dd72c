"""labkit.net without root: names, address planning, validation, the pure parts of ping and topology."""
from __future__ import annotations

import asyncio
import ipaddress
import struct
import threading

import pytest

from labkit import cleanup, net
from labkit.errors import InvalidValue


# --- interface names (IFNAMSIZ) ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["eth0", "lo", "a", "x" * 15, "labkit-b-1a2b3c", "veth.10", "br_0"])
def test_valid_interface_names_pass(name):
    assert net.check_ifname(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a:b", "a b", "tab\tx", ".", "..", "nul\0x", None, 7])
def test_invalid_interface_names_are_refused_with_the_limit(name):
    with pytest.raises(InvalidValue) as err:
        net.check_ifname(name)
    assert "15 characters" in str(err.value)


def test_generated_link_names_fit_in_ifnamsiz():
    for hint in ("b", "v", "p", "h", "c", "bridge", "a-much-too-long-hint"):
        name = cleanup.unique_name(hint, net.IFNAMSIZ - 1)
        assert name.startswith("labkit-")
        assert net.check_ifname(name) == name


# --- subnets and addresses -----------------------------------------------------------------------

def test_default_subnet_is_in_the_benchmarking_range():
    subnet = net.check_subnet(net.DEFAULT_SUBNET)
    assert subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15"))


@pytest.mark.parametrize("subnet", ["10.0.0.0/24", "192.168.1.0/24", "172.17.0.0/16", "192.0.2.0/24",
                                    "198.19.0.0/24",        # reserved for host veths
                                    "198.20.0.0/24", "0.0.0.0/0", "198.18.0.0/30", "198.18.0.0/15",
                                    "198.18.0.1/24",        # host bits set
                                    "not-a-subnet", "fd00::/64"])
def test_subnets_outside_the_lab_range_are_refused(subnet):
    with pytest.raises(InvalidValue) as err:
        net.check_subnet(subnet)
    assert repr(subnet) in str(err.value)


def test_addresses_are_planned_from_dot_two_like_docker():
    planned = net.plan_addresses("198.18.5.0/24", 3)
    assert [str(a) for a in planned] == ["198.18.5.2/24", "198.18.5.3/24", "198.18.5.4/24"]


def test_a_small_subnet_holds_only_what_fits():
    # /29: hosts .1-.6; .1 is left free, so .2-.6 = 5 members
    assert len(net.plan_addresses("198.18.0.8/29", 5)) == 5
    with pytest.raises(InvalidValue) as err:
        net.plan_addresses("198.18.0.8/29", 6)
    assert "0 to 5" in str(err.value)


def test_too_many_members_are_refused_before_anything_is_created():
    with pytest.raises(InvalidValue):
        net.Network(members=[None] * 6, subnet="198.18.0.8/29")


def test_a_network_outside_the_lab_range_is_refused_before_anything_is_created():
    with pytest.raises(InvalidValue):
        net.Network(subnet="10.1.2.0/24")


@pytest.mark.parametrize("address", ["8.8.8.8/24", "10.0.0.2/24", "192.0.2.2/24", "junk",
                                     "198.18.0.0/24", "198.18.0.255/24"])     # network / broadcast
def test_addresses_outside_the_lab_range_are_refused(address):
    with pytest.raises(InvalidValue):
        net.check_lab_address(address)


@pytest.mark.parametrize("route", ["0.0.0.0/0", "8.8.8.0/24", "192.0.2.0/24", "198.0.0.0/8"])
def test_routes_leaving_the_lab_range_and_default_routes_are_refused(route):
    with pytest.raises(InvalidValue):
        net.check_route(route)


def test_lab_routes_are_accepted():
    assert str(net.check_route("198.18.1.0/24")) == "198.18.1.0/24"


@pytest.mark.parametrize("target", ["8.8.8.8", "192.0.2.1", "10.0.0.1"])
def test_ping_and_throughput_refuse_addresses_outside_the_lab(target):
    with pytest.raises(InvalidValue):
        net.lab_ip(target)


def test_ping_of_the_host_namespace_is_refused():
    with pytest.raises(InvalidValue):
        net.socket_in(net.HOST)


def test_throughput_bounds_are_checked_before_anything_runs():
    ns = net.Namespace("x", "/nonexistent")
    with pytest.raises(InvalidValue):
        net.measure_throughput(ns, ns, "198.18.0.2", seconds=60)
    with pytest.raises(InvalidValue):
        net.measure_throughput(ns, ns, "198.18.0.2", max_bytes=0)


# --- ICMP by hand ----------------------------------------------------------------------------------

def test_internet_checksum_matches_rfc1071_example():
    # RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2, checksum is its complement
    assert net.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_echo_request_is_well_formed():
    packet = net.echo_request(0x1234, 7, b"abc")
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    assert (kind, code, ident, seq) == (8, 0, 0x1234, 7)
    assert net.checksum(packet) == 0          # a correct checksum makes the whole packet sum to zero


# --- topology logic on a hand-built kernel answer -----------------------------------------------

def _two_switches_same_indexes():
    """Two containers whose eth0 are both ifindex 2, plugged into port ifindex 5 of two switches:
    only the netns ids tell the cables apart."""
    def iface(index, name, kind=None, master=None, peer=None, nsid=None):
        return net.Interface(index, name, kind, True, "UP", [], master, peer, nsid)
    sw1 = net.NamespaceState("sw1", 1, [iface(1, "lo"), iface(3, "br1", "bridge"),
                                        iface(5, "p1", "veth", master=3, peer=2, nsid=0)], {0: "c1", 1: "c2"})
    sw2 = net.NamespaceState("sw2", 2, [iface(1, "lo"), iface(3, "br2", "bridge"),
                                        iface(5, "p2", "veth", master=3, peer=2, nsid=4)], {4: "c2", 9: "c1"})
    c1 = net.NamespaceState("c1", 3, [iface(1, "lo"), iface(2, "eth0", "veth", peer=5, nsid=7)], {7: "sw1", 8: "sw2"})
    c2 = net.NamespaceState("c2", 4, [iface(1, "lo"), iface(2, "eth0", "veth", peer=5, nsid=8)], {6: "sw1", 8: "sw2"})
    return net.Topology([sw1, sw2, c1, c2])


def test_veth_pairs_are_matched_by_netns_id_not_just_index():
    topo = _two_switches_same_indexes()
    assert topo.veth_pairs() == [(("c1", "eth0"), ("sw1", "p1")), (("c2", "eth0"), ("sw2", "p2"))]
    assert topo.bridge_reached_by("c1") == {("sw1", "br1")}
    assert topo.bridge_reached_by("c2") == {("sw2", "br2")}
    assert topo.bridges() == {("sw1", "br1"): ["p1"], ("sw2", "br2"): ["p2"]}


def test_describe_and_draw_work_on_a_topology():
    topo = _two_switches_same_indexes()
    text = topo.describe()
    assert "port of br1" in text and "peer eth0@c2" in text
    fig = net.draw(topo, title="t")           # a bare Figure: no pyplot state, no backend switched
    assert len(fig.axes[0].lines) == 4        # two cables and two port-to-bridge lines


def test_format_matrix():
    table = net.format_matrix({("a", "b"): True, ("b", "a"): False})
    assert table.splitlines()[1].split() == ["a", "-", "yes"]
    assert table.splitlines()[2].split() == ["b", "NO", "-"]


# --- notebook safety --------------------------------------------------------------------------------

def test_off_loop_runs_in_a_worker_thread_inside_a_running_event_loop():
    seen = []

    @net.off_loop
    def where():
        try:
            asyncio.get_running_loop()
            seen.append("loop")
        except RuntimeError:
            seen.append("no loop")
        return threading.current_thread() is threading.main_thread()

    assert where() is True                    # no loop: runs right here
    async def main():
        return where()
    assert asyncio.run(main()) is False       # a loop is running: runs in a worker without one
    assert seen == ["no loop", "no loop"]


def test_off_loop_passes_exceptions_through():
    @net.off_loop
    def boom():
        raise InvalidValue("x", 1, "2")

    async def main():
        boom()
    with pytest.raises(InvalidValue):
        asyncio.run(main())


def test_a_network_hands_out_every_host_address_once():
    lan = net.Network(subnet="198.18.0.8/29")
    seen = []
    for _ in range(5):                           # .10 to .14; what connect() would assign, no kernel needed
        address = lan._next_address()
        seen.append(str(address))
        lan.endpoints.append(net.Endpoint(net.Namespace("x", "/x"), "eth0", address, "", ""))
    assert seen == [f"198.18.0.{n}/29" for n in range(10, 15)]
    with pytest.raises(InvalidValue):
        lan._next_address()
