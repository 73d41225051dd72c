"""Static executables the lab copies into roots it builds: busybox (the whole userland of the
busybox image, of `docker import`'s one-binary root and of the VM's initramfs), and tini.

A root built from scratch has no libc and no dynamic loader, so only a statically linked program
runs in it. An ELF executable is static when it has no PT_INTERP program header (the header that
names the loader, e.g. /lib64/ld-linux-x86-64.so.2). Debian's `busybox-static` installs one.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from .errors import NotFound

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")  # busybox-static installs /bin/busybox
PT_INTERP = 3             # program header type: "this program needs the loader named here"
ELF_HEADER_SIZE = 64      # of a 64-bit ELF file


def _program_header_table(data: bytes) -> tuple[str, int, int, int] | None:
    """(byte order, offset, entry size, count) of a 64-bit ELF file's program headers; None if not one."""
    if len(data) < ELF_HEADER_SIZE or data[:4] != b"\x7fELF" or data[4] != 2:   # EI_CLASS 2 = 64-bit
        return None
    order = ">" if data[5] == 2 else "<"                   # EI_DATA: 2 = big endian, 1 = little
    phoff, = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    return order, phoff, phentsize, phnum


def is_static_elf(data: bytes) -> bool:
    """True for the start of a 64-bit ELF file (header and program headers) without PT_INTERP."""
    table = _program_header_table(data)
    if table is None:
        return False
    order, phoff, phentsize, phnum = table
    if phoff + phentsize * phnum > len(data):
        return False
    types = [struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return PT_INTERP not in types


def is_static_executable(path: str | os.PathLike) -> bool:
    """Is the file at `path` a static 64-bit ELF executable? Reads only its headers."""
    try:
        with open(path, "rb") as f:
            table = _program_header_table(f.read(ELF_HEADER_SIZE))
            if table is None:
                return False
            _, phoff, phentsize, phnum = table
            f.seek(0)
            return is_static_elf(f.read(phoff + phentsize * phnum))
    except OSError:
        return False


def find_busybox() -> Path:
    """A statically linked busybox: the roots labkit builds have no libc for a dynamic one to load."""
    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path) and is_static_executable(path):
            return Path(path)
    raise NotFound("no statically linked busybox in " + " or ".join(BUSYBOX_CANDIDATES) +
                   ": `apt-get install busybox-static`")
