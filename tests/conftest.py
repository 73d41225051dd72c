"""Shared fixtures: root tests are skipped without root, and every test is checked for leaks.

A test leaks when, after it ends, a labkit object exists that was not there before and that this
test process owns (or that nobody owns). Objects owned by *other* processes - another notebook
running at the same time, or one that died and whose watchdog is cleaning up - are not this test's.
(Tests whose objects belong to a child process they start check those themselves.)
"""
from __future__ import annotations

import os

import pytest

from labkit import cleanup


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: creates real kernel objects")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def _ours_or_orphaned(item: cleanup.Leftover) -> bool:
    return item.owner_pid in (None, os.getpid())


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fail any root test that leaves a labkit object behind."""
    if "root" not in request.keywords or os.geteuid() != 0:
        yield
        return
    os.environ.setdefault("LABKIT_ALLOW_HOST", "1")
    before = {(i.kind, i.name) for i in cleanup.find_all(include_in_use=True)}
    yield
    after = [i for i in cleanup.find_all(include_in_use=True)
             if (i.kind, i.name) not in before and _ours_or_orphaned(i)]
    if after:
        cleanup.sweep(include_in_use=False)
        pytest.fail("test left kernel objects behind:\n" + "\n".join(i.describe() for i in after))
