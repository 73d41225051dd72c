"""Unit tests (no root, no qemu) for labkit.vm's initramfs: the cpio writer and what goes in it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labkit import vm
from labkit.errors import NotFound


def read_newc(archive: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """An independent reader of the newc format: {path: (mode, data, (rdev major, minor))}."""
    members, offset = {}, 0
    while True:
        header = archive[offset:offset + 110]
        assert header[:6] == b"070701", f"bad magic at {offset}"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = offset + 110
        name = archive[name_start:name_start + namesize - 1].decode()
        assert archive[name_start + namesize - 1] == 0, "name not NUL-terminated"
        data_start = (name_start + namesize + 3) & ~3
        data = archive[data_start:data_start + size]
        offset = (data_start + size + 3) & ~3
        if name == "TRAILER!!!":
            assert offset == len(archive)
            return members
        members[name] = (mode, data, (rmaj, rmin))


def test_cpio_round_trips_files_dirs_and_device_nodes():
    archive = vm.cpio_newc([
        ("bin", vm.S_IFDIR | 0o755, b"", (0, 0)),
        ("/bin/hello", vm.S_IFREG | 0o755, b"odd length!", (0, 0)),
        ("dev/console", vm.S_IFCHR | 0o600, b"", (5, 1)),
    ])
    assert len(archive) % 4 == 0
    members = read_newc(archive)
    assert members["bin/hello"] == (vm.S_IFREG | 0o755, b"odd length!", (0, 0))
    assert members["dev/console"][2] == (5, 1)
    assert members["bin"][0] & 0o170000 == vm.S_IFDIR


@pytest.mark.skipif(not shutil.which("cpio"), reason="GNU cpio not installed")
def test_gnu_cpio_reads_our_archive(tmp_path):
    archive = vm.cpio_newc([("dir", vm.S_IFDIR | 0o755, b"", (0, 0)),
                            ("dir/file", vm.S_IFREG | 0o644, b"contents\n", (0, 0))])
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["dir", "dir/file"]
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "dir" / "file").read_text() == "contents\n"


@pytest.fixture
def fake_busybox(tmp_path) -> Path:
    path = tmp_path / "busybox"
    path.write_bytes(b"\x7fELF fake busybox")
    return path


def test_plain_initramfs_has_busybox_console_init_and_the_command(fake_busybox):
    members = read_newc(vm.build_initramfs(kernel=None, command="uname -r", busybox=fake_busybox))
    assert members["bin/busybox"][1] == b"\x7fELF fake busybox"
    assert members["dev/console"][2] == (5, 1)
    assert members["labkit/cmd"][1] == b"uname -r\n"
    init = members["init"][1].decode()
    assert members["init"][0] == vm.S_IFREG | 0o755 and init.startswith("#!/bin/busybox sh\n")
    # markers the host waits for, in the order they are printed
    order = [init.index(vm.MARK + m) for m in ("INIT@@", "INFO@@", "READY@@", "CMD-BEGIN@@", "CMD-END@@")]
    assert order == sorted(order)
    assert "poweroff -f" in init and "switch_root" not in init
    assert not any(name.startswith("modules/") and name != "modules" for name in members)


def test_plain_initramfs_without_a_command_runs_nothing(fake_busybox):
    members = read_newc(vm.build_initramfs(kernel=None, busybox=fake_busybox))
    assert "labkit/cmd" not in members
    assert "CMD-BEGIN" not in members["init"][1].decode()


def test_held_guest_waits_for_a_line_before_power_off(fake_busybox):
    init = read_newc(vm.build_initramfs(kernel=None, hold=True, busybox=fake_busybox))["init"][1].decode()
    assert init.index("read line") < init.rindex("poweroff -f")  # rindex: fail() also powers off


def fake_kernel(tmp_path, compressed: bool = False) -> vm.Kernel:
    modules = tmp_path / "lib/modules/6.1.0-test-amd64"
    for name in vm.guest_modules():
        path = modules / "kernel" / f"{name}.ko"
        path.parent.mkdir(parents=True, exist_ok=True)
        if compressed:
            import lzma
            path.with_suffix(".ko.xz").write_bytes(lzma.compress(f"module {name}".encode()))
        else:
            path.write_bytes(f"module {name}".encode())
    image = tmp_path / "boot/vmlinuz-6.1.0-test-amd64"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"kernel")
    return vm.Kernel(image, "6.1.0-test-amd64", modules, "cache")


@pytest.mark.parametrize("compressed", [False, True])
def test_sharing_initramfs_loads_modules_in_order_then_switches_root(tmp_path, fake_busybox, compressed):
    kernel = fake_kernel(tmp_path, compressed)
    members = read_newc(vm.build_initramfs(kernel=kernel, command="id", share_host=True, cwd="/work dir",
                                           env={"LABKIT_ALLOW_HOST": "1"}, busybox=fake_busybox))
    for name in vm.SHARE_MODULES:  # decompressed: busybox insmod cannot read .ko.xz
        assert members[f"modules/{name}.ko"][1] == f"module {name}".encode()
    init = members["init"][1].decode()
    positions = [init.index(f"insmod /modules/{name}.ko") for name in vm.SHARE_MODULES]
    assert positions == sorted(positions)
    assert init.index("mount -t 9p") < init.index("mount -t overlay") < init.index("switch_root")
    assert "ro," in init.split("mount -t 9p", 1)[1].split("\n", 1)[0]  # read-only share
    stage2 = members["labkit/stage2"][1].decode()
    assert "mount -t cgroup2 cgroup2 /sys/fs/cgroup" in stage2
    assert "LABKIT_ALLOW_HOST=1" in stage2
    assert "cd '/work dir'" in stage2  # quoted for the shell
    assert "/run/labkit-guest/busybox poweroff -f" in stage2


def test_a_kernel_that_folds_fscache_into_netfs_loads_no_fscache(tmp_path, fake_busybox):
    """Debian 13's 6.12 has no fscache.ko (netfs holds it): the guest loads the rest, in order; any
    other module missing is still an error that names it."""
    kernel = fake_kernel(tmp_path, False)
    next(kernel.modules.rglob("fscache.ko")).unlink()
    members = read_newc(vm.build_initramfs(kernel=kernel, command="id", share_host=True, busybox=fake_busybox))
    assert "modules/fscache.ko" not in members and "insmod /modules/fscache.ko" not in members["init"][1].decode()
    assert "modules/netfs.ko" in members and "modules/9p.ko" in members
    next(kernel.modules.rglob("9p.ko")).unlink()
    with pytest.raises(NotFound, match="9p"):
        vm.build_initramfs(kernel=kernel, command="id", share_host=True, busybox=fake_busybox)


def test_sharing_needs_the_kernels_modules(fake_busybox):
    kernel = vm.Kernel(Path("/nonexistent/vmlinuz"), "x", None, "/boot")
    with pytest.raises(NotFound, match="modules"):
        vm.build_initramfs(kernel=kernel, share_host=True, busybox=fake_busybox)


def test_find_kernel_prefers_the_extracted_cache_and_its_newest_version(tmp_path, monkeypatch):
    for version in ("6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-10-amd64", "6.1.0-rc1-cloud-amd64"):
        image = tmp_path / "boot" / f"vmlinuz-{version}"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"k")
    (tmp_path / "lib/modules/6.1.0-56-amd64").mkdir(parents=True)
    monkeypatch.setattr(vm.kernel, "KERNEL_CACHE", tmp_path)
    kernel = vm.find_kernel("x86_64")
    assert (kernel.version, kernel.source) == ("6.1.0-56-amd64", "cache")
    assert kernel.modules == tmp_path / "lib/modules/6.1.0-56-amd64"


def test_static_elf_check_tells_busybox_static_from_a_dynamic_binary():
    import sys
    with open(sys.executable, "rb") as f:  # the Python interpreter: dynamically linked
        assert not vm.is_static_elf(f.read(65536))
    assert not vm.is_static_elf(b"#!/bin/sh\n")
    busybox = next((p for p in vm.BUSYBOX_CANDIDATES if Path(p).exists()), None)
    if busybox:
        with open(busybox, "rb") as f:
            assert vm.is_static_elf(f.read(65536)) == (vm.find_busybox() == Path(busybox))
