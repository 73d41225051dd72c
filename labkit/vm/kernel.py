"""The guest's kernel: the distribution's own, from an extracted cache or /boot."""
from __future__ import annotations

import glob
import os
import pwd
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFound
from .qemu import arch_info


KERNEL_CACHE = Path(os.environ.get("LABKIT_KERNEL_DIR", "/var/cache/labkit/kernel"))


@dataclass
class Kernel:
    image: Path              # vmlinuz-<version>
    version: str             # e.g. 6.1.0-56-amd64
    modules: Path | None     # lib/modules/<version>, if present
    source: str              # "cache" or "/boot"


def _version_key(version: str):
    """Sort 6.1.0-10 after 6.1.0-9 and after 6.1.0-rc1; numbers and words stay comparable."""
    return [(1, int(p), "") if p.isdigit() else (0, 0, p) for p in re.split(r"[.-]", version)]


def find_kernel(machine: str | None = None, cache: Path | None = None) -> Kernel:
    """The newest Debian kernel of this architecture: extracted cache first, then /boot.

    Debian names its kernels vmlinuz-<version>-amd64 (-arm64); Ubuntu's -generic is accepted too.
    """
    flavours = arch_info(machine)["flavours"]
    cache = KERNEL_CACHE if cache is None else cache
    for root, source in ((cache, "cache"), (Path("/"), "/boot")):
        images = [p for flavour in flavours for p in glob.glob(str(root / "boot" / f"vmlinuz-*-{flavour}"))]
        versions = sorted((Path(p).name.removeprefix("vmlinuz-") for p in images), key=_version_key)
        for version in reversed(versions):
            image = root / "boot" / f"vmlinuz-{version}"
            if not os.access(image, os.R_OK):
                continue
            modules = root / "lib" / "modules" / version
            return Kernel(image, version, modules if modules.is_dir() else None, source)
    raise NotFound(f"no Debian {flavours[0]} kernel in {KERNEL_CACHE}/boot or /boot: run "
                   f"`labkit vm fetch-kernel` (apt-get download {arch_info(machine)['package']} + dpkg -x "
                   f"into {KERNEL_CACHE}) or `apt-get install {arch_info(machine)['package']}`")


def fetch_kernel(machine: str | None = None, dest: Path = KERNEL_CACHE) -> Kernel:
    """Extract Debian's kernel package into `dest` without installing it (no initramfs generation).

    `apt-get download` fetches the .deb from the configured Debian mirror; `dpkg -x` unpacks it.
    The meta package (linux-image-amd64) only depends on the versioned one, so resolve that first.
    """
    meta = arch_info(machine)["package"]
    depends = subprocess.run(["apt-cache", "depends", "--important", meta],
                             capture_output=True, text=True, check=True).stdout
    names = re.findall(r"Depends:\s*(linux-image-\S+)", depends)
    if not names:
        raise NotFound(f"apt-cache does not know which kernel {meta} depends on; run apt-get update")
    with tempfile.TemporaryDirectory(prefix="labkit-kernel-") as tmp:
        try:  # apt downloads as the unprivileged _apt user: let it write here
            os.chown(tmp, pwd.getpwnam("_apt").pw_uid, -1)
        except (KeyError, OSError):
            pass
        subprocess.run(["apt-get", "download", names[0]], cwd=tmp, check=True)
        deb = next(Path(tmp).glob("*.deb"))
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
    return find_kernel(machine, cache=dest)
