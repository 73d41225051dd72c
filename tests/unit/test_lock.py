"""constraints.txt (the lock) pins every Python package provisioning installs, within pyproject's bounds."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"not an exact pin: {line!r}"
            pins[_norm(name)] = Version(version.split(";")[0].strip())
    return pins


def test_every_requirement_is_pinned_within_its_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(text)
        assert _norm(req.name) in pins, f"{req.name} is not in constraints.txt: run `make lock`"
        assert pins[_norm(req.name)] in req.specifier, \
            f"constraints.txt pins {req.name} {pins[_norm(req.name)]}, outside pyproject's {req.specifier}"
    assert "labkit" not in pins                  # built from the checkout, never downloaded


def test_provisioning_installs_from_the_lock_and_reinstalls_when_it_changes():
    script = (ROOT / "vagrant/provision.sh").read_text()
    assert re.search(r'pip install [^\n]*-c "\$LOCK"', script)
    assert re.search(r'cat "\$REPO/pyproject.toml" "\$LOCK" \| sha256sum', script), "the venv stamp must cover the lock"
    assert "${REPO}[test]" in script               # --test-tools installs the test extra
    assert "bash vagrant/lock.sh" in (ROOT / "Makefile").read_text()
