"""Unit tests (no root, no qemu) for choosing the accelerator: the KVM probe and its cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import host, vm


@pytest.fixture
def probe_env(tmp_path, monkeypatch):
    """A fake /dev/kvm, qemu and kernel; the cache in tmp; every probe VM boot counted."""
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(vm.accel, "KVM_DEVICE", str(device))
    monkeypatch.setattr(vm.accel, "KVM_PROBE_FILE", tmp_path / "kvm-probe")
    monkeypatch.setattr(vm.accel, "qemu_binary", lambda machine=None: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(vm.accel, "find_kernel", lambda machine=None, cache=None:
                        vm.Kernel(Path("/boot/vmlinuz-6.1.0-56-amd64"), "6.1.0-56-amd64", None, "/boot"))
    monkeypatch.setattr(host, "is_root", lambda: True)
    monkeypatch.setattr(host, "is_lab_host", lambda: True)
    boots = []

    class ProbeVM:  # stands in for a VM whose guest never speaks (KVM spinning, as on this host)
        def __init__(self, **kw):
            boots.append(kw)

        def __enter__(self):
            raise vm.VMError("no READY from the guest within 10s")

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(vm.lifecycle, "VM", ProbeVM)
    return boots


def test_a_hanging_probe_means_tcg_and_is_cached(probe_env):
    assert vm.kvm_usable(timeout=3) is False
    assert probe_env == [{"accel": "kvm", "memory": "128M", "timeout": 3}]
    cached = json.loads(vm.accel.KVM_PROBE_FILE.read_text())
    assert cached["usable"] is False and "READY" in cached["reason"]
    assert vm.kvm_usable() is False and len(probe_env) == 1  # answered from the cache: no second boot
    assert vm.choose_accel("auto")[0] == "tcg"
    assert vm.kvm_usable(refresh=True) is False and len(probe_env) == 2


def test_a_cache_from_another_boot_or_kernel_is_not_trusted(probe_env):
    vm.accel.KVM_PROBE_FILE.write_text(json.dumps({"key": "another boot", "usable": True}))
    assert vm.kvm_usable() is False and len(probe_env) == 1


def test_a_cached_yes_is_used(probe_env):
    vm.kvm_usable()
    record = json.loads(vm.accel.KVM_PROBE_FILE.read_text())
    vm.accel.KVM_PROBE_FILE.write_text(json.dumps(dict(record, usable=True)))
    assert vm.choose_accel("auto") == ("kvm", "KVM probe booted") and len(probe_env) == 1


def test_no_device_means_tcg_without_probing(probe_env, monkeypatch):
    monkeypatch.setattr(vm.accel, "KVM_DEVICE", "/nonexistent/kvm")
    assert vm.choose_accel("auto")[0] == "tcg" and probe_env == []


def test_without_root_nothing_is_probed_or_cached(probe_env, monkeypatch):
    monkeypatch.setattr(host, "is_root", lambda: False)
    assert vm.kvm_usable() is False and probe_env == [] and not vm.accel.KVM_PROBE_FILE.exists()
