"""Unit tests for labkit.emulation: when a deadline stretches, by how much, and why it says so."""
from __future__ import annotations

import pytest

from labkit import emulation
from labkit.errors import InvalidValue


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake /sys: write(vendor, clocksources) describes the machine."""
    vendor, clocks = tmp_path / "sys_vendor", tmp_path / "available_clocksource"
    monkeypatch.setattr(emulation, "DMI_VENDOR", vendor)
    monkeypatch.setattr(emulation, "CLOCKSOURCES", clocks)
    monkeypatch.delenv(emulation.ENV, raising=False)
    emulation.emulated_cpu.cache_clear()

    def write(vendor_text: str | None, clocks_text: str) -> None:
        if vendor_text is not None:
            vendor.write_text(vendor_text + "\n")
        clocks.write_text(clocks_text + "\n")
        emulation.emulated_cpu.cache_clear()

    yield write
    emulation.emulated_cpu.cache_clear()


@pytest.mark.parametrize("vendor, clocks, scale", [
    ("QEMU", "tsc acpi_pm", emulation.TCG_SCALE),      # qemu with TCG: the guest tier
    ("QEMU", "kvm-clock tsc acpi_pm", 1.0),            # qemu with KVM: hardware speed
    ("Dell Inc.", "tsc hpet acpi_pm", 1.0),            # hardware
    (None, "tsc kvm-clock", 1.0),                      # no DMI at all (a container, this CI machine)
])
def test_only_a_qemu_machine_without_kvm_clock_stretches_deadlines(machine, vendor, clocks, scale):
    machine(vendor, clocks)
    assert emulation.time_scale() == scale
    assert emulation.scaled(120) == 120 * scale
    assert ("TCG" in emulation.describe()) == (scale > 1)


def test_the_environment_overrides_detection(machine, monkeypatch):
    machine("QEMU", "tsc")
    monkeypatch.setenv(emulation.ENV, "3")
    assert emulation.scaled(60) == 180
    assert emulation.ENV in emulation.describe()
    monkeypatch.setenv(emulation.ENV, "1")
    assert emulation.scaled(60) == 60


@pytest.mark.parametrize("given", ["0.5", "fast", "-2", "nan"])
def test_a_bad_factor_is_refused_by_name(machine, monkeypatch, given):
    monkeypatch.setenv(emulation.ENV, given)
    with pytest.raises(InvalidValue, match=emulation.ENV):
        emulation.time_scale()
