"""The provisioning files agree with each other: packages.txt tags, cloud-init, the Vagrantfile."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KNOWN_TAGS = {"amd64", "arm64", "debian", "ubuntu", "test", "kernel", "if-shipped"}


def _packages() -> list[tuple[str, set[str]]]:
    rows = []
    for line in (ROOT / "vagrant/packages.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, *tags = line.split()
            rows.append((name, set(tags)))
    return rows


def test_package_tags_are_known():
    for name, tags in _packages():
        assert tags <= KNOWN_TAGS, f"{name}: unknown tags {tags - KNOWN_TAGS}"


def test_lab_essentials_are_listed_for_every_architecture():
    names = {name for name, tags in _packages() if not tags & {"test"}}
    for needed in ("busybox-static", "iproute2", "util-linux", "docker.io", "runc", "python3-venv",
                   "qemu-system-x86", "qemu-system-arm"):
        assert needed in names
    for arch in ("amd64", "arm64"):
        kernels = [n for n, t in _packages() if "kernel" in t and "debian" in t and arch in t]
        assert kernels, f"no guest kernel for Debian {arch}"


def test_cloud_init_runs_the_same_provisioning():
    text = (ROOT / "vagrant/cloud-init.yaml").read_text()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    scripts = "\n".join(f["content"] for f in config["write_files"])
    assert "vagrant/provision.sh\" --lab" in scripts
    assert any("deep-dive-lab-provision" in " ".join(map(str, c)) for c in config["runcmd"])


def test_vagrantfile_forwards_jupyter_to_host_loopback_only():
    text = (ROOT / "Vagrantfile").read_text()
    forwards = [line for line in text.splitlines() if '"forwarded_port"' in line]
    assert forwards
    for line in forwards:
        i = text.splitlines().index(line)
        block = " ".join(text.splitlines()[i:i + 2])
        assert 'host_ip: "127.0.0.1"' in block and "auto_correct: true" in block
    assert 'path: "vagrant/provision.sh"' in text
