"""Notebook 21-nat-and-ports and labkit.net.nat: each checked property broken on purpose fails its check;
the exercise's checker is tested in test_checkers.py; and traffic through the lab's
NAT never reaches the real host namespace (its interface counters are watched)."""
from __future__ import annotations

import subprocess

import pytest

from labkit.container import Container
from labkit.net import nat, probes

from notebook_session import assert_check_fails

pytestmark = pytest.mark.root

NOTEBOOK = "21-nat-and-ports.ipynb"

BROKEN = {
    "MASQUERADE lets the replies back": (
        {"rule = lab.masquerade()": "rule = ['(no MASQUERADE rule)']"},
        "assert attempt.returncode == 0 and received == \"hello-after\""),
    "the host forwards": (
        {"lab = nat.NatLab().create()":
         "lab = nat.NatLab().create()\nnat.in_namespace(lab.host, ['sh', '-c', 'echo 0 > /proc/sys/net/ipv4/ip_forward'])"},
        "assert attempt.returncode == 0 and received == \"hello-after\""),
    "the published port reaches the container": (
        {"lab.publish(8080, web_endpoint.ip, 80)": "lab.publish(8079, web_endpoint.ip, 80)"},
        'assert visit == "connected"'),
}


@pytest.mark.parametrize("prop", BROKEN)
def test_a_broken_property_fails_its_check(prop):
    replace, check = BROKEN[prop]
    assert_check_fails(NOTEBOOK, replace, check, prop)


def _host_counters() -> dict[str, tuple[int, int]]:
    """rx/tx bytes of every interface of the REAL host namespace (this test process lives there)."""
    counters = {}
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, data = line.split(":", 1)
            fields = data.split()
            counters[name.strip()] = (int(fields[0]), int(fields[8]))
    return counters


def _host_routes() -> str:
    return subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout


def test_traffic_through_the_lab_nat_never_reaches_the_real_host_namespace():
    """64 MiB cross the NAT (container -> "host" -> "outside"); the real host's interfaces must not
    carry it. Other engineers' traffic on this machine adds noise, so the bound is a quarter of it."""
    routes_before, forward_before = _host_routes(), open("/proc/sys/net/ipv4/ip_forward").read()
    sent = 64 << 20
    with nat.NatLab() as lab, Container("busybox", ["sleep", "600"]) as box:
        box.start()
        endpoint = lab.connect(box.pid)
        lab.masquerade()
        before = _host_counters()
        result = probes.measure_throughput(nat.container_namespace(box.pid), lab.outside, str(lab.server),
                                           seconds=10, max_bytes=sent)
        after = _host_counters()
        assert result.bytes >= sent, result
        flows = [f for f in lab.flows() if f.original[0] == endpoint.ip and f.source_nat]
        assert flows, "the throughput test did not go through the MASQUERADE rule"
    # lo is left out: no packet from another namespace can arrive on this namespace's loopback, and
    # other engineers' local traffic (kernels, test servers) lives there
    moved = sum(after[i][0] - before[i][0] + after[i][1] - before[i][1] for i in after if i in before and i != "lo")
    assert moved < sent // 4, f"the real host's interfaces carried {moved} bytes while {sent} crossed the lab NAT"
    assert not set(after) - set(before) or all(not n.startswith("labkit-") for n in set(after) - set(before))
    assert _host_routes() == routes_before and open("/proc/sys/net/ipv4/ip_forward").read() == forward_before
