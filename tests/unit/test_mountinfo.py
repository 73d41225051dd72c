"""The one /proc/PID/mountinfo parser (labkit.mountinfo), on lines as the kernel writes them."""
from __future__ import annotations

from labkit import host, mountinfo, propagation, rootfs


def test_a_line_is_split_and_its_paths_unescaped():
    m = mountinfo.parse_line("47 43 0:52 / /run/labkit/work/labkit-a\\040b/rootfs rw,relatime shared:5 master:2 "
                             "- overlay overlay rw,lowerdir=/l/app:/l/base,upperdir=/w/upper,workdir=/w/work\n")
    assert m["mountpoint"] == "/run/labkit/work/labkit-a b/rootfs"
    assert (m["id"], m["parent"], m["fstype"], m["options"]) == (47, 43, "overlay", "rw,relatime")
    assert m["propagation"] == "shared:5 master:2"
    assert mountinfo.overlay_layers(m) == {"lower": ["/l/app", "/l/base"], "upper": "/w/upper", "work": "/w/work"}


def test_a_private_mount_has_no_optional_fields_and_a_tab_and_backslash_come_back():
    m = mountinfo.parse_line("25 1 0:22 / /a\\011b\\134c rw - tmpfs tmpfs rw\n")
    assert (m["mountpoint"], m["propagation"]) == ("/a\tb\\c", "")


def test_rootfs_propagation_and_host_all_read_through_it(monkeypatch):
    lines = ["30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory\n",
             "31 25 0:27 / /mnt/a\\040b rw - tmpfs tmpfs rw\n"]
    assert rootfs.read_mountinfo is mountinfo.read is propagation.read_mountinfo    # one parser, not copies
    monkeypatch.setattr(mountinfo, "read", lambda pid="self": [mountinfo.parse_line(line) for line in lines])
    monkeypatch.setattr(propagation, "read_mountinfo", mountinfo.read)
    assert propagation.mountinfo() == {"/sys/fs/cgroup/memory": "shared:9", "/mnt/a b": "private"}
    assert [(c.name, c.version, c.mountpoint) for c in host.controllers()] == [("memory", 1, "/sys/fs/cgroup/memory")]
