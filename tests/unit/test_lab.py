"""labkit.lab without starting anything: settings validation, token file, URL."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from labkit import lab
from labkit.errors import InvalidValue


def _settings(tmp_path, **kw):
    return lab.LabSettings(notebook_dir=str(tmp_path), config_dir=str(tmp_path / "etc"),
                           run_dir=str(tmp_path / "run"), **kw)


@pytest.mark.parametrize("port", [0, 65536, "http", -1])
def test_bad_port_is_refused_with_the_accepted_range(tmp_path, port):
    with pytest.raises(InvalidValue) as err:
        _settings(tmp_path, port=port).validate()
    assert str(port) in str(err.value) and "1..65535" in str(err.value)


def test_bad_ip_and_missing_notebook_dir_are_refused(tmp_path):
    with pytest.raises(InvalidValue, match="localhost"):
        _settings(tmp_path, ip="localhost").validate()
    with pytest.raises(InvalidValue, match="nowhere"):
        lab.LabSettings(notebook_dir=str(tmp_path / "nowhere")).validate()


def test_token_is_made_once_and_private(tmp_path):
    settings = _settings(tmp_path)
    with pytest.raises(lab.NotFound):
        lab.token(settings)
    first = lab.token(settings, create=True)
    assert lab.token(settings, create=True) == first and len(first) == 48
    assert settings.token_file.stat().st_mode & 0o077 == 0


def test_url_names_the_host_side_address(tmp_path):
    settings = _settings(tmp_path, ip="0.0.0.0", port=8890)
    token = lab.token(settings, create=True)
    assert lab.url(settings) == f"http://127.0.0.1:8890/lab?token={token}"


def test_settings_are_saved_and_overridden(tmp_path):
    settings = _settings(tmp_path, port=9999).validate()
    settings.save()
    again = lab.load_settings(settings.config_dir, settings.run_dir)
    assert again.port == 9999 and again.notebook_dir == settings.notebook_dir
    assert lab.load_settings(settings.config_dir, settings.run_dir, port=8000).port == 8000


def test_delegated_layout_puts_jupyter_in_a_leaf_and_labkit_beside_it(tmp_path):
    """On a fake cgroupfs (plain files): what `labkit lab serve` does under systemd's Delegate=yes."""
    base = tmp_path / "system.slice" / "deep-dive-lab.service"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    parent = lab.delegated_layout(tmp_path, "/system.slice/deep-dive-lab.service")
    assert parent == "system.slice/deep-dive-lab.service/labkit"
    assert (base / "jupyter" / "cgroup.procs").read_text() == "0"
    assert (base / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +memory +pids"
    assert (base / "labkit" / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +memory +pids"
    # A restart of the service that finds itself already in the leaf lays out the same tree.
    assert lab.delegated_layout(tmp_path, "/system.slice/deep-dive-lab.service/jupyter") == parent


def test_a_unit_systemd_did_not_delegate_is_left_as_it_is(tmp_path, monkeypatch):
    """`labkit lab start --mode direct` run from another systemd unit (a test runner, a plain service):
    INVOCATION_ID is set, but the unit's cgroup is systemd's (no trusted.delegate mark) and holds other
    processes; laying it out would move us into a jupyter/ there and then fail with EBUSY (seen in the
    Debian 13 guest). No jupyter/ is made and no parent is returned."""
    unit = tmp_path / "system.slice" / "kernel-command-line.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setattr(lab.host, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(lab.host, "cgroup_mode", lambda *a: "v2")
    monkeypatch.setattr(lab, "_own_v2_cgroup", lambda: "/system.slice/kernel-command-line.service")
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert lab._enter_leaf_cgroup() is None
    assert not (unit / "jupyter").exists() and not (unit / "cgroup.subtree_control").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_unit_is_valid_and_delegates(tmp_path):
    """systemd's own parser reads the unit `labkit lab start` writes (a typo would print a warning)."""
    settings = lab.LabSettings(notebook_dir=str(tmp_path), config_dir="/etc/labkit").validate()
    unit = lab.render_unit(settings)
    assert "\nDelegate=yes\n" in unit and "lab serve" in unit
    path = tmp_path / lab.SERVICE
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_lab_options_after_the_action_are_parsed_not_swallowed():
    """`lab serve --config-dir D --run-dir R` (what the direct mode's child runs) and `lab start --port N`
    keep their options; `lab leaf -- CMD --its-options` passes CMD's options through untouched."""
    from labkit import cli

    args = cli.build_parser("lab").parse_args(["lab", "serve", "--config-dir", "/d", "--run-dir", "/r"])
    assert (args.config_dir, args.run_dir, args.command) == ("/d", "/r", [])
    assert cli.build_parser("lab").parse_args(["lab", "start", "--port", "9000"]).port == "9000"
    leaf = cli.build_parser("lab").parse_args(["lab", "leaf", "--", "jupyterhub-singleuser", "--port=1"])
    assert leaf.command == ["jupyterhub-singleuser", "--port=1"] and leaf.port is None


def test_a_command_given_to_another_lab_action_is_refused_by_name(capsys):
    from labkit import cli

    assert cli.main(["lab", "status", "stray"]) == 2
    assert "command" in capsys.readouterr().err
