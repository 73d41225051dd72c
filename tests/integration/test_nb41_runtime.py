"""Notebook 41-swap-the-runtime: each checked property broken on purpose fails its check (the
exercise's checker, observe.check_pid_one, is tested in test_runtime.py)."""
from __future__ import annotations

import shutil

import pytest

from notebook_session import assert_check_fails

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (shutil.which("runc") and shutil.which("strace") and shutil.which("dockerd")),
                                 reason="runc, strace and docker.io are provisioned (vagrant/packages.txt)")]

NOTEBOOK = "41-swap-the-runtime.ipynb"

BROKEN = {
    "the bundle's hostname is what the container sees": (
        {'config["hostname"] = "box"': 'config["hostname"] = "crate"'},
        'assert runc_out == "box"'),
    "both runtimes give Docker's container the same kernel facts": (
        {'start_box("labkit", "--memory", "64m")': 'start_box("labkit", "--memory", "32m")'},
        'assert facts["runc"] == facts["labkit"]'),
}


@pytest.mark.parametrize("prop", BROKEN)
def test_a_broken_property_fails_its_check(prop):
    replace, check = BROKEN[prop]
    assert_check_fails(NOTEBOOK, replace, check, prop)
