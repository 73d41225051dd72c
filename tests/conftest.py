"""Shared fixtures: root tests are skipped without root, and every test is checked for leaks.

Under `make test` (tests/run_suite.sh exports LABKIT_STRICT_SKIPS=1) a test that skips because
something provisioning installs is missing - qemu, cpio, runc, dockerd, the docker CLI or SDK,
ipympl, ipywidgets: its reason says "not installed", or it is an import that failed - FAILS: a
machine that lacks them is not what `make test` promises to test. Skips for what a host may lack
by nature (cgroup v2 on a v1 host, a loop device, an architecture) stay skips.

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


STRICT_SKIPS = os.environ.get("LABKIT_STRICT_SKIPS") == "1"
# How a skip for a missing provisioned tool or package reads (skipif reasons, importorskip's message).
PROVISIONED_MISSING = ("not installed", "could not import", "No module named")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if any(words in reason for words in PROVISIONED_MISSING):
            report.outcome = "failed"
            report.longrepr = (f"skipped under make test, where provisioning installs what it needs "
                               f"(LABKIT_STRICT_SKIPS=1): {reason}")


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
