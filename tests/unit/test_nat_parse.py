"""labkit.net.nat without root: conntrack lines parsed into flows, Docker's rules refused on bad input."""
from __future__ import annotations

import pytest

from labkit.errors import InvalidValue
from labkit.net import nat

MASQUERADED = ("tcp      6 118 TIME_WAIT src=198.18.40.2 dst=198.19.250.1 sport=41234 dport=8080 "
               "src=198.19.250.1 dst=198.19.250.5 sport=8080 dport=41234 [ASSURED] mark=0 use=1")
DNATED = ("tcp      6 431999 ESTABLISHED src=198.19.250.1 dst=198.19.250.5 sport=5000 dport=8080 "
          "src=198.18.40.3 dst=198.19.250.1 sport=80 dport=5000 [ASSURED] mark=0 use=1")
UNREPLIED = ("tcp      6 118 SYN_SENT src=198.18.40.2 dst=198.19.250.1 sport=1 dport=8080 [UNREPLIED] "
             "src=198.19.250.1 dst=198.18.40.2 sport=8080 dport=1 mark=0 use=1")


def test_a_masqueraded_flow_shows_its_source_rewrite():
    (flow,) = nat.parse_conntrack(MASQUERADED)
    assert flow.state == "TIME_WAIT" and flow.original == ("198.18.40.2", 41234, "198.19.250.1", 8080)
    assert flow.source_nat and not flow.destination_nat


def test_a_published_port_shows_its_destination_rewrite():
    (flow,) = nat.parse_conntrack(DNATED)
    assert flow.destination_nat and not flow.source_nat and flow.reply[:2] == ("198.18.40.3", 80)


def test_an_untranslated_flow_is_neither_and_icmp_lines_are_skipped():
    flows = nat.parse_conntrack(UNREPLIED + "\nicmp     1 29 src=198.18.40.2 dst=198.19.250.1 type=8 code=0 id=3\n")
    assert len(flows) == 1 and not flows[0].source_nat and not flows[0].destination_nat


@pytest.mark.parametrize("host_port, ip, port", [(0, "198.18.40.2", 80), (8080, "198.18.40.2", 70000),
                                                 (8080, "8.8.8.8", 80), (8080, "198.18.41.2", 80),
                                                 (True, "198.18.40.2", 80)])
def test_publish_refuses_bad_ports_and_addresses_before_touching_the_kernel(host_port, ip, port):
    lab = nat.NatLab()          # not created: a refusal must come before any namespace is needed
    with pytest.raises(InvalidValue):
        lab.publish(host_port, ip, port)


def test_a_subnet_outside_the_lab_range_is_refused():
    with pytest.raises(InvalidValue):
        nat.NatLab(subnet="10.0.0.0/24")
