"""labkit.net on the real kernel, checked from outside: /run/netns and netlink read by the test itself."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from labkit import cleanup, namespaces, net
from labkit.errors import InvalidValue

pytestmark = pytest.mark.root


# --- independent views of the kernel (not labkit's code paths) ------------------------------

def _ours(kind: str, name: str) -> bool:
    """Made by this test process, or by nobody alive: other engineers' live experiments are not ours."""
    pid, alive = cleanup.owner(kind, name)
    return pid in (None, os.getpid()) or not alive


def netns_names() -> set[str]:
    if not Path("/run/netns").is_dir():
        return set()
    return {p.name for p in Path("/run/netns").glob("labkit-*") if _ours("netns", p.name)}


def host_lab_links() -> set[str]:
    with IPRoute() as ipr:
        return {l.get("ifname") for l in ipr.get_links()
                if l.get("ifname", "").startswith("labkit-") and _ours("link", l.get("ifname"))}


def links_in(path: str) -> dict[str, dict]:
    """name -> {addresses, master name, kind} inside the namespace at `path`, read with pyroute2 directly."""
    with IPRoute(netns=path, flags=0) as ipr:
        links = {l["index"]: l for l in ipr.get_links()}
        addrs = {}
        for a in ipr.get_addr(family=socket.AF_INET):
            addrs.setdefault(a["index"], []).append(f"{a.get('address')}/{a['prefixlen']}")
        routes = [(r.get("dst"), r["dst_len"]) for r in ipr.get_routes(family=socket.AF_INET, table=254)]
    return {l.get("ifname"): {"addresses": addrs.get(i, []),
                              "master": links[l.get("master")].get("ifname") if l.get("master") else None,
                              "kind": l.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                              "up": bool(l["flags"] & 1), "routes": routes}
            for i, l in links.items()}


@pytest.fixture
def before():
    """What labkit objects existed before the test (other engineers may be running experiments)."""
    return netns_names(), host_lab_links()


def assert_nothing_new(before, names=()):
    ns_before, links_before = before
    assert netns_names() - ns_before == set(), "a labkit netns was left in /run/netns"
    assert host_lab_links() - links_before == set(), "a labkit link was left in the host namespace"
    for name in names:
        assert not Path("/run/netns", name).exists()


# --- a bridge connects; a second bridge isolates ----------------------------------------------

def test_three_namespaces_on_a_bridge_reach_each_other(before):
    with net.Network(members=[None, None, None]) as n:
        sw = links_in(n.switch.path)
        assert sw[n.bridge]["kind"] == "bridge" and sw[n.bridge]["up"]
        assert sw[n.bridge]["addresses"] == []                      # the bridge has no address: no way out
        ports = {name for name, l in sw.items() if l["master"] == n.bridge}
        assert ports == {e.port for e in n.endpoints} and len(ports) == 3
        for e, expected in zip(n.endpoints, ["198.18.0.2/24", "198.18.0.3/24", "198.18.0.4/24"]):
            inside = links_in(e.namespace.path)
            assert inside["eth0"]["addresses"] == [expected] and inside["eth0"]["up"]
            assert inside["lo"]["up"]
            assert (None, 0) not in inside["eth0"]["routes"], "no default route inside a lab namespace"
        matrix = n.reachability()
        assert len(matrix) == 6 and all(matrix.values()), net.format_matrix(matrix)
        names = [n.switch.name] + [e.namespace.name for e in n.endpoints]
    assert_nothing_new(before, names)


def test_a_namespace_on_a_second_bridge_cannot_reach_them(before):
    with net.Network(members=[None, None, None]) as first, net.Network() as second:
        # same subnet, its own address: routing would allow it, only the missing wire stops it
        lonely = second.connect(None, address="198.18.0.9/24")
        assert links_in(second.switch.path)[lonely.port]["master"] == second.bridge
        answers = net.ping(lonely.namespace, [e.ip for e in first.endpoints], timeout=0.5)
        assert answers == {e.ip: False for e in first.endpoints}
        back = net.ping(first.endpoints[0].namespace, [lonely.ip], timeout=0.5)
        assert back == {lonely.ip: False}
        assert all(first.reachability().values())
        ok, why = net.check_isolated(lonely, first.endpoints, timeout=0.5)
        assert ok, why
        # plug it into the first bridge instead: now it answers - the check above could have failed
        second.disconnect(lonely)
        moved = first.connect(lonely.namespace, address="198.18.0.9/24")
        assert net.ping(moved.namespace, [first.endpoints[0].ip])[first.endpoints[0].ip]
        ok, why = net.check_isolated(moved, first.endpoints[:3], timeout=0.5)
        assert not ok
    assert_nothing_new(before)


def test_topology_is_read_from_the_kernel(before):
    with net.Network(members=[None, None]) as n:
        topo = n.topology()
        assert topo.bridges() == {(n.switch.label, n.bridge): sorted(e.port for e in n.endpoints)}
        expected = sorted(tuple(sorted(((e.label, "eth0"), (n.switch.label, e.port)))) for e in n.endpoints)
        assert topo.veth_pairs() == expected
        for e in n.endpoints:
            state = topo.namespace(e.label)
            assert state.inode == os.stat(e.namespace.path).st_ino
            assert topo.bridge_reached_by(e.label) == {(n.switch.label, n.bridge)}
        # change the kernel behind labkit's back: the next read shows it
        with IPRoute(netns=n.switch.path, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=n.endpoints[0].port)[0], master=0)
        assert n.topology().bridge_reached_by(n.endpoints[0].label) == set()
        assert not net.ping(n.endpoints[0].namespace, [n.endpoints[1].ip], timeout=0.5)[n.endpoints[1].ip]
    assert_nothing_new(before)


# --- containers by pid, and the host veth ------------------------------------------------------

def test_containers_attached_by_pid_and_a_container_that_dies_first(before):
    boxes = [namespaces.spawn(["sleep", "60"], ("net", "uts"), hostname=f"c{i}") for i in range(2)]
    try:
        with net.Network(members=boxes) as n:
            assert [e.namespace.pid for e in n.endpoints] == [b.pid for b in boxes]
            inside = links_in(f"/proc/{boxes[0].pid}/ns/net")
            assert inside["eth0"]["addresses"] == ["198.18.0.2/24"]
            assert all(n.reachability().values())
            port = n.endpoints[1].port
            boxes[1].kill()
            boxes[1].wait()
            # the dying namespace takes its veth pair with it, asynchronously; close() must cope
        assert port not in links_in(f"/proc/{boxes[0].pid}/ns/net")
        assert set(links_in(f"/proc/{boxes[0].pid}/ns/net")) == {"lo"}   # eth0 went with the pair
    finally:
        for b in boxes:
            b.kill()
            b.wait()
    assert_nothing_new(before)


def test_the_host_namespace_is_never_a_member(before):
    with pytest.raises(InvalidValue):
        net.namespace_of(os.getpid())
    with subprocess.Popen(["sleep", "30"]) as same_netns:   # a child that shares our (the host's) netns
        try:
            with pytest.raises(InvalidValue):
                net.veth_to_host(same_netns.pid)
            with pytest.raises(InvalidValue):
                with net.Network(members=[same_netns.pid]):
                    pass
        finally:
            same_netns.kill()
    assert_nothing_new(before)


def test_veth_to_host_moves_one_end_into_the_container(before):
    with namespaces.spawn(["sleep", "60"], ("net",)) as box:
        with net.veth_to_host(box.pid) as link:
            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=link.host_ifname)
                assert idx, "the host end lives in the host namespace"
                addrs = [a.get("address") for a in ipr.get_addr(index=idx[0], family=socket.AF_INET)]
                defaults = [r for r in ipr.get_routes(family=socket.AF_INET, table=254) if r["dst_len"] == 0]
            assert addrs == [str(link.host_address.ip)]
            assert all(r.get("oif") != idx[0] for r in defaults), "no default route over the lab veth"
            inside = links_in(f"/proc/{box.pid}/ns/net")
            assert inside[link.ifname]["addresses"] == [str(link.address)]
            assert link.host_ifname not in inside
            assert link.ping()
            host_if = link.host_ifname
        assert host_if not in host_lab_links()
        assert set(links_in(f"/proc/{box.pid}/ns/net")) == {"lo"}
        box.kill()
    assert_nothing_new(before)


def test_veth_to_host_when_the_container_dies_first(before):
    box = namespaces.spawn(["sleep", "60"], ("net",))
    try:
        with net.veth_to_host(box.pid) as link:
            box.kill()
            box.wait()                  # the host end now disappears on the kernel's own schedule
            host_if = link.host_ifname
        assert host_if not in host_lab_links()
    finally:
        box.kill()
        box.wait()
    assert_nothing_new(before)


# --- teardown on error and interrupt -----------------------------------------------------------

@pytest.mark.parametrize("fail_at", [1, 2, 4, 6])
def test_an_interrupt_mid_setup_leaves_nothing(before, monkeypatch, fail_at):
    calls = {"n": 0}
    real = net.set_up

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(net.network, "set_up", interrupted)   # the name Network.connect calls
    with pytest.raises(KeyboardInterrupt):
        with net.Network(members=[None, None, None]):
            pytest.fail("setup should have been interrupted")
    assert calls["n"] == fail_at
    assert_nothing_new(before)


@pytest.mark.parametrize("delay", [0.002, 0.01, 0.03, 0.06, 0.1, 0.2])
def test_a_real_sigint_at_any_moment_leaves_nothing(before, delay):
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with net.Network(members=[None, None, None]) as n:
            n.reachability(timeout=0.5)
            timer.join()
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    assert_nothing_new(before)


def test_an_error_inside_the_block_tears_everything_down(before):
    with pytest.raises(RuntimeError):
        with net.Network(members=[None, None]) as n:
            names = [n.switch.name] + [e.namespace.name for e in n.endpoints]
            raise RuntimeError("learner's mistake")
    assert_nothing_new(before, names)


# --- notebook safety ---------------------------------------------------------------------------

def test_the_api_works_inside_a_running_event_loop(before):
    async def cell():
        assert asyncio.get_running_loop().is_running()
        with net.Network(members=[None, None]) as n:
            matrix = n.reachability()
            topo = n.topology()
            speed = n.throughput(0, 1, seconds=0.2, max_bytes=1 << 20)
            await asyncio.sleep(0)
            return matrix, topo, speed

    matrix, topo, speed = asyncio.run(cell())
    assert all(matrix.values()) and len(topo.namespaces) == 3
    assert speed.bytes == 1 << 20
    assert_nothing_new(before)


# --- measurement bounds, and the cleanup hooks -----------------------------------------------------

def test_throughput_is_bounded_in_bytes(before):
    with net.Network(members=[None, None]) as n:
        result = n.throughput(0, 1, seconds=5, max_bytes=3 << 20)
        assert result.bytes == 3 << 20 and result.path == "veth+bridge"
        lo = net.measure_throughput(n.endpoints[0].namespace, n.endpoints[0].namespace, "127.0.0.1",
                                    seconds=5, max_bytes=1 << 20)
        assert lo.bytes == 1 << 20 and lo.path == "loopback"
    assert_nothing_new(before)


def test_find_leftovers_sees_the_kernel_and_remove_leftover_removes(before):
    ns = net.create_namespace("left")
    host_veth = net.veth_to_host(ns).create()
    found = {(i.kind, i.name): i for i in net.find_leftovers()}
    assert ("netns", ns.name) in found and found[("netns", ns.name)].owner_pid == os.getpid()
    assert ("link", host_veth.host_ifname) in found
    net.remove_leftover(found[("link", host_veth.host_ifname)])
    net.remove_leftover(found[("netns", ns.name)])
    assert host_veth.host_ifname not in host_lab_links()
    assert ns.name not in netns_names()
    assert_nothing_new(before)


def test_route_inside_a_lab_namespace_and_refusals(before):
    with net.Network(members=[None]) as n:
        e = n.endpoints[0]
        net.add_route(e.namespace, "198.18.7.0/24", e.ifname)
        assert ("198.18.7.0", 24) in links_in(e.namespace.path)["eth0"]["routes"]
        with pytest.raises(InvalidValue):
            net.add_route(e.namespace, "0.0.0.0/0", e.ifname)
        with pytest.raises(InvalidValue):
            net.add_address(e.namespace, e.ifname, "10.0.0.5/24")
        with pytest.raises(InvalidValue):
            net.set_up(net.HOST, "lo")
    assert_nothing_new(before)


# --- the notebook's exercise checker ---------------------------------------------------------------

def test_the_exercise_checker_needs_a_real_second_bridge(before):
    boxes = {f"c{i}": namespaces.spawn(["sleep", "60"], ("net", "uts"), hostname=f"c{i}") for i in (1, 2, 3)}
    try:
        with net.Network() as first:
            for label, box in boxes.items():
                first.connect(box, label=label)
            c3 = first.endpoint("c3")
            ok, why = net.check_isolation_answer(c3.ip, boxes, timeout=0.5)
            assert not ok and "shares bridge" in why
            assert not net.check_isolation_answer("198.18.0.77", boxes, timeout=0.5)[0]
            first.disconnect(c3)                    # unplugged but on no bridge: not what was asked
            ok, why = net.check_isolation_answer(c3.ip, boxes, timeout=0.5)
            assert not ok
            with net.Network() as second:           # the solution: a second bridge, an address of its own
                moved = second.connect(boxes["c3"], address="198.18.0.9/24", label="c3")
                ok, why = net.check_isolation_answer(moved.ip, boxes, timeout=0.5)
                assert ok, why
                assert second.bridge in why
    finally:
        for box in boxes.values():
            box.kill()
            box.wait()
    assert_nothing_new(before)


def test_attach_container_plugs_a_pid_in_and_close_unplugs(before):
    with namespaces.spawn(["sleep", "60"], ("net",)) as box, net.Network(members=[None]) as n:
        attachment = net.attach_container(n, box.pid, name="web")
        assert links_in(f"/proc/{box.pid}/ns/net")["eth0"]["addresses"] == ["198.18.0.3/24"]
        assert n.reachability()[("web", n.endpoints[0].label)]
        attachment.close()
        assert set(links_in(f"/proc/{box.pid}/ns/net")) == {"lo"}
        attachment.close()                       # twice is fine (delete after a failed start)
        box.kill()
    with pytest.raises(InvalidValue):
        net.attach_container("bridge", 1)
    assert_nothing_new(before)


def test_cli_net_demo_builds_pings_and_removes(before):
    import sys
    labkit = str(Path(sys.executable).with_name("labkit"))
    env = dict(os.environ, LABKIT_ALLOW_HOST="1")
    done = subprocess.run([labkit, "net", "demo", "--members", "2"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "198.18.0.3/24" in done.stdout and "yes" in done.stdout and "NO" not in done.stdout
    refused = subprocess.run([labkit, "net", "demo", "--subnet", "10.0.0.0/24"], capture_output=True,
                             text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "198.18.0.0/16" in refused.stderr
    assert_nothing_new(before)


def _open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def test_every_socket_is_closed(before):
    """An open socket (netlink, ICMP, TCP) inside a removed namespace would keep it alive, invisibly."""
    with net.Network(members=[None, None]) as warmup:       # first use imports and caches things
        warmup.reachability()
    fds = _open_fds()
    with net.Network(members=[None, None]) as n:
        n.reachability()
        n.topology()
        n.throughput(0, 1, seconds=0.1, max_bytes=1 << 20)
        net.ping(n.endpoints[0].namespace, "127.0.0.1")
    with namespaces.spawn(["sleep", "60"], ("net",)) as box:
        with net.veth_to_host(box) as link:
            link.ping()
        box.kill()
    assert _open_fds() == fds, "a file descriptor (socket) was left open"
    assert_nothing_new(before)


def test_nothing_reaches_stderr_inside_an_event_loop(before, capfd):
    async def cell():
        with net.Network(members=[None, None]) as n:
            return n.reachability()
    assert all(asyncio.run(cell()).values())
    out, err = capfd.readouterr()
    assert err == "", err
    assert_nothing_new(before)


KILLED_SCRIPT = """
import sys, time
from labkit import net
lan = net.Network(members=[None, None]).__enter__()
link = net.veth_to_host(lan.endpoints[0].namespace).__enter__()
print(lan.switch.name, *[e.namespace.name for e in lan.endpoints], link.host_ifname, flush=True)
time.sleep(60)
"""


def test_a_killed_owners_network_is_found_and_swept(before):
    import sys
    # no watchdog for the victim: we want to see its leftovers ourselves (another process's watchdog
    # starting right now may still sweep them first - then they must be gone all the same)
    env = dict(os.environ, LABKIT_ALLOW_HOST="1", LABKIT_NO_WATCHDOG="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        names = proc.stdout.readline().split()
    finally:
        proc.kill()                                   # no teardown runs: like a notebook kernel killed outright
        proc.wait()
        proc.stdout.close()
    assert len(names) == 4, names
    *netns, host_link = names
    expected = {("netns", n) for n in netns} | {("link", host_link)}
    found = [i for i in net.find_leftovers() if (i.kind, i.name) in expected]
    assert all(i.owner_pid == proc.pid and not i.owner_alive for i in found)
    still_there = {("netns", n) for n in netns if Path("/run/netns", n).exists()} | \
        ({("link", host_link)} if host_link in host_lab_links() else set())
    assert still_there <= {(i.kind, i.name) for i in found}, "an object of the dead owner was not found"
    for item in found:
        net.remove_leftover(item)
    assert not set(netns) & netns_names() and host_link not in host_lab_links()
    assert_nothing_new(before)


@pytest.mark.parametrize("delay", [0.005, 0.03, 0.08, 0.15])
def test_a_sigint_inside_a_running_event_loop_leaves_nothing(before, delay):
    """What a notebook's interrupt button does: SIGINT while the netlink work runs in the worker thread."""
    async def cell():
        with net.Network(members=[None, None, None]) as n:
            n.reachability(timeout=0.3)
            await asyncio.sleep(0.5)

    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        asyncio.run(cell())
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    assert_nothing_new(before)


def test_read_bridge_shows_one_bridge_and_its_ports(before):
    with net.Network(members=[None, None]) as n:
        topo = net.read_bridge(n.switch, n.bridge)
        (state,) = topo.namespaces
        assert sorted(i.name for i in state.interfaces) == sorted([n.bridge] + [e.port for e in n.endpoints])
        assert net.read_bridge(n.switch, "docker0") is None
        with pytest.raises(InvalidValue):
            net.read_bridge(n.switch, "lo")
    assert_nothing_new(before)
