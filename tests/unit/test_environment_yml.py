"""environment.yml (conda) names the same Python packages as pyproject.toml, the source of truth."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"docker": "docker-py"}


def _name(requirement: str) -> str:
    """'jupyterlab>=4' -> 'jupyterlab' (normalized as PEP 503 does)."""
    name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {CONDA_NAME.get(_name(r), _name(r)) for r in project["dependencies"]}


def _conda_names() -> set[str]:
    return {_name(d) for d in _environment()["dependencies"] if isinstance(d, str)} - {"python", "pip"}


def test_same_packages_as_pyproject():
    missing = _pyproject_names() - _conda_names()
    extra = _conda_names() - _pyproject_names()
    assert not missing, f"in pyproject.toml but not in environment.yml: {sorted(missing)}"
    assert not extra, f"in environment.yml but not in pyproject.toml: {sorted(extra)}"


def _specifiers(requirements) -> dict[str, str]:
    """{name: 'version bounds'}: 'pyroute2>=0.9,<0.10' -> {'pyroute2': '>=0.9,<0.10'}."""
    found = {}
    for r in requirements:
        r = r.split("#")[0].replace(" ", "")
        name = _name(r)
        found[CONDA_NAME.get(name, name)] = r[len(re.split(r"[<>=!~;\[]", r, maxsplit=1)[0]):]
    return found


def test_same_version_bounds_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = _specifiers(d for d in _environment()["dependencies"] if isinstance(d, str))
    for name, bounds in _specifiers(project["dependencies"]).items():
        assert conda[name] == bounds, f"{name}: pyproject.toml says {bounds!r}, environment.yml {conda[name]!r}"


def test_test_tools_stay_out_of_the_learners_environment():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert {"pytest", "nbval", "playwright", "docker-py"} <= {CONDA_NAME.get(_name(r), _name(r)) for r in extra}
    assert not {"pytest", "nbval", "playwright", "docker-py"} & _conda_names()


def test_conda_forge_python_and_editable_labkit():
    env = _environment()
    assert env["channels"][0] == "conda-forge"
    assert "defaults" not in env["channels"]
    assert "python>=3.11" in env["dependencies"]
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip == [["-e ."]], "labkit must come from this checkout through pip: `- pip: [-e .]`"


def test_name_normalization():
    assert _name("Jupyter_Server >= 2") == "jupyter-server"
    assert _name("pyroute2>=0.9") == "pyroute2"
    assert _name("docker[ssh]~=7.0") == "docker"
