"""The classroom stage's shared pieces: its own dockerd, the hub's install, the lab image.

Each is made once per run (session scope) and released at the end; a run killed halfway leaves
nothing the next run does not remove first (its dockerd is stopped, its containers, volumes and
networks go: nothing but this stage uses that daemon).
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.classroom import image
from tests.classroom.daemon import CACHE, OwnDockerd, say

PROJECT = image.PROJECT
HUB_VENV = CACHE / "hub-venv"
HUB_NODE = CACHE / "hub-node"
TIMINGS: dict[str, float] = {}        # what the stage measured, printed at the end


def hub_env() -> dict:
    return {**os.environ, "LABKIT_HUB_VENV": str(HUB_VENV), "LABKIT_HUB_NODE": str(HUB_NODE)}


def _remove_everything_in(d: OwnDockerd) -> None:
    """A killed earlier run's containers, volumes and networks (this daemon is the stage's alone)."""
    ids = d.docker("ps", "-aq").stdout.split()
    if ids:
        say(f"removing {len(ids)} container(s) an earlier run left")
        d.docker("rm", "-f", *ids, check=False, timeout=120)
    volumes = d.docker("volume", "ls", "-q").stdout.split()
    if volumes:
        d.docker("volume", "rm", "-f", *volumes, check=False)
    d.docker("network", "prune", "-f", check=False)


@pytest.fixture(scope="session")
def daemon():
    with OwnDockerd() as d:
        _remove_everything_in(d)
        yield d
        _remove_everything_in(d)


@pytest.fixture(scope="session")
def hub_version() -> str:
    """JupyterHub, DockerSpawner (PyPI) and configurable-http-proxy (npm), installed once and cached."""
    t0 = time.monotonic()
    subprocess.run(["bash", str(PROJECT / "deploy/start-hub.sh"), "--install-only"], env=hub_env(), check=True)
    TIMINGS["hub install s"] = time.monotonic() - t0
    return subprocess.run([str(HUB_VENV / "bin/jupyterhub"), "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="session")
def lab_image(daemon, hub_version):
    base, seconds = image.ensure_base(daemon, hub_version)
    if seconds is not None:
        TIMINGS["image build s"] = seconds
    size = int(daemon.docker("image", "inspect", "-f", "{{.Size}}", base).stdout)
    TIMINGS["image MiB"] = size / 2**20
    t0 = time.monotonic()
    tag = image.with_checkout(daemon, base)
    TIMINGS["checkout layer s"] = time.monotonic() - t0
    say(f"learners run {tag} ({size / 2**20:.0f} MiB; this checkout on {base})")
    yield tag
    daemon.docker("rmi", tag, check=False)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("classroom measurements: " +
                                    ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()))
