"""labkit.rootfs on the real kernel: the image store, overlay layers, copy-on-write, whiteouts, and the
mount leftovers the sweep must find - all read back from /proc/self/mountinfo and the directories.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from labkit import binaries, cleanup, rootfs
from labkit.errors import Conflict, InvalidValue

pytestmark = pytest.mark.root


def mountpoints() -> set[str]:
    return {m["mountpoint"] for m in rootfs.read_mountinfo()}


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private image store, so rebuild tests never touch the shared cache."""
    monkeypatch.setattr(rootfs, "IMAGE_STORE", tmp_path / "images")
    monkeypatch.setattr(rootfs, "LAYERS", tmp_path / "images" / "layers")
    return tmp_path / "images" / "layers"


def test_base_layer_is_a_working_busybox_root(store):
    base = rootfs.base_layer()
    manifest = base.manifest                   # the directory is named by the layer's content digest
    assert base.path == store / f"sha256-{manifest['digest']}" / "root" and manifest["name"] == "busybox"
    busybox = base.path / "bin/busybox"
    assert binaries.is_static_executable(str(busybox))
    assert os.readlink(base.path / "bin/sh") == "busybox"
    assert (base.path / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (base.path / "etc/group").exists() and (base.path / "etc/hostname").exists()
    assert stat.S_IMODE(os.stat(base.path / "tmp").st_mode) == 0o1777
    # the applets really run from that tree (chroot in a child, the host's binaries not used)
    out = subprocess.run(["chroot", str(base.path), "/bin/sh", "-c", "echo $((6*7)); cat /etc/hostname"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["42", "labkit"]


def test_base_layer_is_rebuilt_when_corrupt_or_missing(store):
    base = rootfs.base_layer()
    (base.path / "bin/busybox").write_bytes(b"truncated")
    rebuilt = rootfs.base_layer()
    assert os.path.getsize(rebuilt.path / "bin/busybox") == os.path.getsize("/bin/busybox")
    (rebuilt.path.parent / "layer.json").unlink()
    assert os.path.getsize(rootfs.base_layer().path / "bin/busybox") == os.path.getsize("/bin/busybox")
    assert not [p for p in store.iterdir() if p.name.startswith(".")]    # no temporary dirs left


def test_layers_stack_and_copy_on_write_stays_in_upper(store):
    app = rootfs.layer("test-app", {"app/run.sh": "#!/bin/sh\necho app\n", "etc/motd": "from app\n"},
                       delete=["etc/os-release"], modes={"app/run.sh": 0o755})
    assert is_whiteout(app.path / "etc/os-release")           # a layer's deletion is a whiteout too
    image = rootfs.image("busybox", [app])
    base = rootfs.base_layer().path
    with rootfs.RootFS(image) as root:
        merged, upper = root.merged, root.upper
        m = next(m for m in rootfs.read_mountinfo() if m["mountpoint"] == str(merged))
        layers = rootfs.overlay_layers(m)
        assert layers["lower"] == [str(app.path), str(base)]  # top first, as overlayfs takes them
        assert layers["upper"] == str(upper)
        tmpfs = next(m for m in rootfs.read_mountinfo() if m["mountpoint"] == str(root.dir))
        assert tmpfs["fstype"] == "tmpfs"                      # the writable layer lives in memory
        # the stack: app's file visible, its deletion hides the base file, base files shine through
        assert (merged / "app/run.sh").read_text() == "#!/bin/sh\necho app\n"
        assert not (merged / "etc/os-release").exists() and (base / "etc/os-release").exists()
        assert (merged / "bin/busybox").exists()
        assert list(upper.iterdir()) == []
        # write: copied up; delete: whiteout; neither lower layer changes
        (merged / "etc/hostname").write_text("changed\n")
        (merged / "etc/passwd").unlink()
        (merged / "app/run.sh").unlink()
        assert (upper / "etc/hostname").read_text() == "changed\n"
        assert (base / "etc/hostname").read_text() == "labkit\n"
        assert is_whiteout(upper / "etc/passwd") and (base / "etc/passwd").exists()
        assert is_whiteout(upper / "app/run.sh") and (app.path / "app/run.sh").exists()
        assert root.changes() == [("C", "/app"), ("D", "/app/run.sh"), ("C", "/etc"),
                                  ("C", "/etc/hostname"), ("D", "/etc/passwd")]


def test_readonly_rootfs_refuses_writes():
    with rootfs.RootFS("busybox", readonly=True) as root:
        with pytest.raises(OSError):
            (root.merged / "x").write_text("no")


def test_same_name_twice_conflicts_and_unmount_removes_everything():
    with rootfs.RootFS("busybox", name="rootfs-twice") as root:
        with pytest.raises(Conflict):
            rootfs.RootFS("busybox", name="rootfs-twice").mount()
        assert {str(root.dir), str(root.merged)} <= mountpoints()
        work = str(root.dir)
    assert not any(p.startswith(work) for p in mountpoints())
    assert not os.path.exists(work)


def test_find_leftovers_lists_mounts_deepest_first_and_sweep_removes_them():
    root = rootfs.RootFS("busybox").mount()
    try:
        found = [i for i in rootfs.find_leftovers() if i.name == root.name]
        assert [i.where for i in found] == [str(root.merged), str(root.dir)]
        assert all(i.kind == "mount" and i.owner_pid == os.getpid() and i.owner_alive for i in found)
        for item in found:          # what the sweep does for a dead owner: unmount, then the dir goes
            rootfs.remove_leftover(item)
        assert not any(p.startswith(str(root.dir)) for p in mountpoints())
        dirs = [i for i in cleanup.find_leftovers() if i.name == root.name]
        assert [i.kind for i in dirs] == ["dir"]
        for item in dirs:
            cleanup.remove_leftover(item)
        assert not root.dir.exists()
    finally:
        root.unmount()


def test_export_flattens_layers(tmp_path, store):
    app = rootfs.layer("test-export", {"hello.txt": "hi\n"}, delete=["etc/motd-none", "etc/os-release"])
    dest = rootfs.export(tmp_path / "flat", rootfs.image("busybox", [app]))
    assert (dest / "hello.txt").read_text() == "hi\n"
    assert not os.path.lexists(dest / "etc/os-release")
    assert not os.path.lexists(dest / "etc/motd-none")
    assert os.readlink(dest / "bin/sh") == "busybox"


def test_rebuilding_a_layer_spares_the_lowerdir_a_running_container_uses(store):
    """Issue 18 (4): a layer addressed by name was renamed away and removed on a rebuild, while a
    container's overlay still had it as its lowerdir. Now other content is another directory, and a
    collection removes only layers no mounted overlay (as mountinfo shows it) uses."""
    from labkit.container import Container
    first = rootfs.layer("test-rebuild", {"app/version": "one\n"})
    box = Container("busybox", ["sleep", "300"], layers=[first]).start()
    try:
        root = next(m for m in rootfs.read_mountinfo(box.pid) if m["mountpoint"] == "/")
        lower = rootfs.overlay_layers(root)["lower"]      # the kernel's view: [test-rebuild, busybox]
        assert lower[0] == str(first.path)
        second = rootfs.layer("test-rebuild", {"app/version": "two\n"})
        assert Path(lower[0], "app/version").read_text() == "one\n"       # the running lowerdir intact
        assert box.exec(["cat", "/app/version"]).stdout == "one\n"
        assert (second.path / "app/version").read_text() == "two\n"
        removed = rootfs.collect_layers()
        assert removed == [second.path.parent]               # unreferenced: gone
        assert not second.path.exists() and all(Path(path, "bin" if i else "app").is_dir()
                                                for i, path in enumerate(lower))   # referenced: spared
        assert box.exec(["cat", "/app/version"]).stdout == "one\n"
    finally:
        box.delete(force=True)
    assert sorted(rootfs.collect_layers()) == sorted(Path(path).parent for path in lower)
    assert [p for p in store.iterdir()] == []


def test_bad_layer_input_is_refused():
    with pytest.raises(InvalidValue):
        rootfs.layer("Bad Name", {})
    with pytest.raises(InvalidValue):
        rootfs.layer("ok", {"../escape": "x"})
