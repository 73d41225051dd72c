"""Notebook 50's VM NIC section: its checked cell fails when the property is broken on purpose (the VM
is put on a second, separate lab bridge, so it and the container cannot reach each other)."""
from __future__ import annotations

import pytest

from labkit import vm

from notebook_session import assert_check_fails

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(vm.qemu_binary() is None, reason="qemu-system is not installed")]

NOTEBOOK = "50-containers-vs-hypervisors.ipynb"


def test_a_vm_on_another_bridge_fails_the_reachability_check():
    assert_check_fails(NOTEBOOK, {
        "with net.Network(members=[box]) as lan:":
            'with net.Network(members=[box]) as lan, net.Network(subnet="198.18.7.0/24") as elsewhere:',
        "network=lan,": "network=elsewhere,",
    }, 'assert vm_to_box and box_to_vm', "the VM on a bridge of its own")
