"""Chapter 3's exercise, asked of the kernel: is one member cut off while the others still meet?"""
from __future__ import annotations

import ipaddress
from typing import Iterable

from .addresses import LAB_RANGE
from .netlink import off_loop
from .netns import Namespace, as_namespace, own_lab_namespaces
from .network import Endpoint, reachability
from .probes import ping
from .topology import read_namespace, read_topology


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


@off_loop
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
        state = read_namespace(ns, [])
        for iface in state.interfaces:
            lab = [a for a in iface.addresses if ipaddress.IPv4Interface(a).ip in LAB_RANGE]
            if lab:
                found.append(Endpoint(ns, iface.name, ipaddress.IPv4Interface(lab[0]), "", ""))
                break
    return found


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
