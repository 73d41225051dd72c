"""Notebook 16-pressure: each checked property broken on purpose fails its check (the exercise's
checker is tested in test_checkers.py)."""
from __future__ import annotations

import pytest

from notebook_session import assert_check_fails

pytestmark = pytest.mark.root

NOTEBOOK = "16-pressure.ipynb"

BROKEN = {
    # a hog that fits under memory.max is not killed: the "wall kills" check must notice
    "the wall kills the anon hog": (
        {"x = b'h' * (64 << 20)": "x = b'h' * (16 << 20)"},
        "assert throttled.oom_kills() == 0 and walled.oom_kills() >= 1"),
    # the probe outside the throttled group is not held back by the quota
    "throttling delays the sleeper": (
        {"inside = float(run(PROBE, namespaces=None, cgroup=busy,": "inside = float(run(PROBE, namespaces=None,"},
        "assert inside > 40, inside"),
}


@pytest.mark.parametrize("prop", BROKEN)
def test_a_broken_property_fails_its_check(prop):
    replace, check = BROKEN[prop]
    assert_check_fails(NOTEBOOK, replace, check, prop)
