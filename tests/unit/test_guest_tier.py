"""The guest tier's host-side pieces (tests/guest): the image key, the kernel command line, the
stored-output scan and write-back, and the JUnit counting. The tier itself runs in `make test-guest`."""
from __future__ import annotations

import nbformat
import pytest

from tests import junit_counts
from tests.guest import boot, image, outputs


def test_image_key_follows_the_package_list_and_pyproject(tmp_path, monkeypatch):
    for name in ("vagrant/packages.txt", "pyproject.toml", "vagrant/provision.sh", "tests/guest/image.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    monkeypatch.setattr(image, "PROJECT", tmp_path)
    first = image.image_key()
    assert image.image_key() == first
    for name in ("vagrant/packages.txt", "pyproject.toml"):
        (tmp_path / name).write_text("two\n")
        assert image.image_key() != first, f"{name} changed but the image key did not"
        first = image.image_key()
    (tmp_path / "constraints.txt").write_text("pinned==1\n")     # the lock file appears
    assert image.image_key() != first
    first = image.image_key()
    (tmp_path / "README.md").write_text("prose\n")               # not a key file
    assert image.image_key() == first


def test_cached_image_is_refused_when_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(image, "image_key", lambda: "new")
    for name in ("disk.raw", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_text("x")
    meta = dict(disk=str(tmp_path / "disk.raw"), kernel=str(tmp_path / "vmlinuz"),
                initrd=str(tmp_path / "initrd.img"), kernel_version="6.12", built_at="t",
                build_seconds=1.0, steps={})
    (tmp_path / "image.json").write_text(__import__("json").dumps({**meta, "key": "old"}))
    assert image.cached(tmp_path) is None
    (tmp_path / "image.json").write_text(__import__("json").dumps({**meta, "key": "new"}))
    img = image.cached(tmp_path)
    assert img is not None and img.reused
    (tmp_path / "vmlinuz").unlink()
    assert image.cached(tmp_path) is None


def test_ca_bundle_option_overrides_and_can_be_emptied(monkeypatch):
    monkeypatch.setenv("LABKIT_GUEST_CA_BUNDLE", "/some/bundle.crt")
    assert image.ca_bundle() == "/some/bundle.crt"
    monkeypatch.setenv("LABKIT_GUEST_CA_BUNDLE", "")
    assert image.ca_bundle() == ""


def test_kernel_cmdline_boots_multi_user_with_the_command_unit():
    line = boot.kernel_cmdline("test")
    assert "root=/dev/vda" in line and "console=ttyS0" in line
    assert 'systemd.run="/bin/bash /vagrant/tests/guest/inside.sh test"' in line
    # systemd.run= alone boots kernel-command-line.target, where the lab's service never starts
    assert "systemd.unit=multi-user.target" in line and "systemd.wants=kernel-command-line.service" in line
    assert "systemd.mask=serial-getty@ttyS0.service" in line


def test_test_boots_keep_the_image_pristine(tmp_path):
    spec = boot.BootSpec(disk=tmp_path / "d.raw", kernel=tmp_path / "k", initrd=tmp_path / "i")
    argv = boot.qemu_argv(spec, "labkit-guest-x", tmp_path, tmp_path / "out", "tcg")
    drive = argv[argv.index("-drive") + 1]
    assert "snapshot=on" in drive
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert any("mount_tag=vagrant" in s and "readonly=on" in s for s in shares)
    assert "-cpu" in argv and argv[argv.index("-cpu") + 1] == "max"   # numpy needs more than qemu64


def _notebook(path, outputs_text):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('x')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in outputs_text]
    nb.cells = [cell]
    nbformat.write(nb, path)


@pytest.mark.parametrize("text", ["pid 1 is process_api\n", "/.dockerenv exists\n",
                                  "cgroup: /../labkit-cg-1\n", "9:name=systemd:/\n"])
def test_scan_finds_each_build_machine_trace(tmp_path, text):
    _notebook(tmp_path / "a.ipynb", [text])
    assert len(outputs.scan(tmp_path)) == 1


def test_scan_passes_learner_outputs(tmp_path):
    _notebook(tmp_path / "a.ipynb", ["0::/system.slice/deep-dive-lab.service/labkit/x\n",
                                     "pid 1 is systemd\n", "memory.max = 33554432\n", "../data\n"])
    assert outputs.scan(tmp_path) == []


def test_write_back_moves_outputs_only_when_cells_are_unchanged(tmp_path):
    executed, stored = tmp_path / "executed", tmp_path / "notebooks"
    executed.mkdir()
    stored.mkdir()
    _notebook(executed / "a.ipynb", ["from the guest\n"])
    _notebook(stored / "a.ipynb", ["from the build machine\n"])
    _notebook(executed / "b.ipynb", ["guest\n"])
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('edited meanwhile')")]
    nbformat.write(nb, stored / "b.ipynb")
    refused = outputs.write_back(executed, stored)
    assert nbformat.read(stored / "a.ipynb", 4).cells[0].outputs[0].text == "from the guest\n"
    assert len(refused) == 1 and refused[0].startswith("b.ipynb")
    assert nbformat.read(stored / "b.ipynb", 4).cells[0].outputs == []


def test_junit_counts(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text('<testsuites><testsuite tests="10" failures="1" errors="1" skipped="2"/></testsuites>')
    assert junit_counts.junit_counts(report) == (6, 2, 2)
