"""labkit.rootfs without root: parsing mountinfo and overlay options, layer order, ELF checks, names."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from labkit import binaries, escape, rootfs
from labkit.errors import InvalidValue


def test_image_lowerdir_lists_the_top_layer_first():
    base = rootfs.Layer("busybox", Path("/s/busybox/root"))
    app = rootfs.Layer("app", Path("/s/app/root"))
    assert rootfs.Image("busybox+app", (base, app)).lowerdir() == "/s/app/root:/s/busybox/root"


def _elf(tmp_path, interp: bool) -> str:
    """A minimal 64-bit ELF header with one program header: PT_INTERP (3) or PT_LOAD (1)."""
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 32, 64)          # e_phoff
    struct.pack_into("<HH", header, 54, 56, 1)      # e_phentsize, e_phnum
    phdr = bytearray(56)
    struct.pack_into("<I", phdr, 0, 3 if interp else 1)
    path = tmp_path / ("dynamic" if interp else "static")
    path.write_bytes(bytes(header + phdr))
    return str(path)


def test_static_binaries_are_told_from_dynamic_ones(tmp_path):
    assert binaries.is_static_executable(_elf(tmp_path, interp=False))
    assert not binaries.is_static_executable(_elf(tmp_path, interp=True))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not binaries.is_static_executable(str(tmp_path / "script"))


@pytest.mark.parametrize("name, files", [("Bad Name", {}), ("busybox", {}), ("", {}),
                                         ("ok", {"../x": "y"}), ("ok", {"/": "y"})])
def test_layer_input_is_checked_before_anything_is_written(name, files, tmp_path, monkeypatch):
    monkeypatch.setattr(rootfs, "LAYERS", tmp_path / "layers")
    with pytest.raises(InvalidValue):
        rootfs.layer(name, files)
    assert not (tmp_path / "layers").exists()


def test_unknown_image_and_bad_method_are_refused():
    from labkit.errors import NotFound
    with pytest.raises(NotFound, match="busybox"):
        rootfs.image("ubuntu")
    with pytest.raises(InvalidValue):
        escape.chroot_escape("unshare")


def test_pivot_steps_order():
    names = [getattr(s, "func", s).__name__ for s in rootfs.pivot_steps("/r", readonly=True, masked=["/proc/kcore"],
                                                          readonly_paths=["/proc/sys"])]
    assert names[0] == "bind_root" and names.index("pivot") > names.index("make_dev")
    # masking and read-only paths act on the container's own /proc after the pivot; the root goes
    # read-only last, once nothing needs to be created in it any more
    assert names[names.index("pivot") + 1:] == ["mask_paths", "make_paths_readonly", "remount_readonly"]
