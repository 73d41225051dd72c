"""Two learners at once: nbval over a representative set of notebooks in two learner containers
concurrently, then the host must be clean - nothing of theirs left in the kernel.

What "clean" is checked against (the kernel, not labkit's bookkeeping):
- inside each learner, before it stops: `labkit cleanup --check` finds nothing;
- after both stopped: no cgroup docker/<id> of theirs in any hierarchy; none of the namespaces their
  processes were in or kept mounted just before the stop exists anywhere (with a learner's network
  namespaces go every link in them - a learner with --network none has no link on the host); no
  loop device backed by a file of theirs (their overlay root or their volumes); `labkit cleanup
  --check` on the host finds nothing of this run's and nothing orphaned.
"""
from __future__ import annotations

import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from labkit import cleanup, dockerd
from tests.classroom import learners
from tests.classroom.conftest import TIMINGS
from tests.classroom.daemon import CACHE, say

pytestmark = pytest.mark.root

NOTEBOOKS = ("01-namespaces", "11-memory", "14-io", "20-networking", "31-image-layers", "40-docker-engine")
OUT = Path(os.environ.get("TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))
NBVAL_TIMEOUT = 1200


def nbval_argv(learner: learners.Learner) -> list[str]:
    return [dockerd.DOCKER, *learner.exec_argv(
        "/opt/labkit/.venv/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no",
        "--nbval-lax", "--nbval-sanitize-with", "tests/sanitize.cfg", "--junitxml=/tmp/nbval.xml",
        *(f"notebooks/{nb}.ipynb" for nb in NOTEBOOKS))]


def junit_counts(path: Path) -> dict[str, int]:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def test_two_learners_pass_nbval_at_once_and_leave_the_host_clean(daemon, lab_image):
    host_ns = learners.host_namespaces()
    labkit_before = {(i.kind, i.name) for i in cleanup.find_all(include_in_use=True)}
    pair = [learners.Learner(daemon, lab_image), learners.Learner(daemon, lab_image)]
    try:
        for learner in pair:
            learner.start()
        say(f"learners {', '.join(f'{x.name} (pid {x.pid})' for x in pair)}: nbval over "
            f"{len(NOTEBOOKS)} notebooks in both at once ...")
        for learner in pair:
            doctor = learner.exec("labkit", "doctor", check=False)
            assert "in a container" in doctor.stdout, doctor.stdout[-2000:]
        OUT.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        logs = [open(OUT / f"classroom-{x.name}.log", "w") for x in pair]
        procs = [subprocess.Popen(nbval_argv(x), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "DOCKER_HOST": daemon.host})
                 for x, log in zip(pair, logs)]
        for proc in procs:
            proc.wait(timeout=NBVAL_TIMEOUT)
        TIMINGS["nbval both s"] = time.monotonic() - t0
        for log in logs:
            log.close()
        results = {}
        for learner, proc in zip(pair, procs):
            xml = OUT / f"classroom-{learner.name}.xml"
            daemon.docker("cp", f"{learner.name}:/tmp/nbval.xml", str(xml))
            results[learner.name] = (proc.returncode, junit_counts(xml))
            mem = learners.memory_of(learner.id)
            TIMINGS[f"{learner.name[-6:]} peak MiB"] = mem.get("peak", 0) / 2**20
        say("nbval: " + "; ".join(f"{n}: exit {rc}, {c['passed']} passed, {c['failures'] + c['errors']} failed"
                                  for n, (rc, c) in results.items()))
        for name, (rc, counts) in results.items():
            assert rc == 0 and counts["passed"] > 0, \
                f"nbval in {name} failed: {counts}; see {OUT / f'classroom-{name}.log'}"

        # what each learner left inside itself, then what the kernel holds of them, before they stop
        for learner in pair:
            check = learner.exec("labkit", "cleanup", "--check", check=False)
            assert check.returncode == 0, f"{learner.name}: {check.stdout}{check.stderr}"
        namespaces = set()
        for learner in pair:
            namespaces |= learners.namespaces_of(learners.cgroup_pids(learner.id))
        namespaces -= host_ns
        assert namespaces, "found no namespaces of the learners' processes: the check would prove nothing"
        root_devs = {x.root_dev for x in pair}
        volume_dirs = [d for x in pair for d in x.volume_dirs()]
        stopped_at = time.time()
    finally:
        for learner in pair:
            if learner.id:
                learner.stop()

    # the host, after the stop
    left_cgroups = [str(d) for x in pair for d in learners.cgroup_dirs(x.id)]
    assert not left_cgroups, f"cgroups of stopped learners remain: {left_cgroups}"
    assert not learners.namespaces_alive(namespaces, stopped_at, CACHE / "docker"), "namespaces of stopped learners remain"
    loops = learners.loops_backed_by(root_devs, learners.files_in(volume_dirs))
    for learner in pair:
        learner.remove_volumes()
    assert not loops, f"loop devices backed by the learners' files remain: {loops}"
    ours = [i.describe() for i in cleanup.find_all(include_in_use=True)
            if (i.kind, i.name) not in labkit_before and i.owner_pid in (None, os.getpid())]
    assert not ours, "labkit cleanup --check on the host:\n" + "\n".join(ours)
