"""labkit.incontainer's detection, on text captured from real containers (docker 20.10 on a hybrid
host, kubernetes, a plain VM) instead of the machine the test runs on."""
from __future__ import annotations

import os

from labkit import incontainer, mountinfo

DOCKER_HOSTNAME = ("612 590 8:1 /var/lib/docker/containers/3f2a/hostname /etc/hostname rw,relatime - "
                   "ext4 /dev/sda1 rw")
K8S_HOSTS = ("701 690 8:1 /var/lib/kubelet/pods/9c1d/etc-hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw")
VM_ROOT = "21 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw"

# /proc/self/cgroup in a --cgroupns=private container on a hybrid host: v1 lines at "/", and the
# v2 line (0::) that tells the kernel also has the unified hierarchy in use.
PRIVATE_ON_HYBRID = "12:pids:/\n11:memory:/\n4:cpu,cpuacct:/\n1:name=systemd:/\n0::/\n"
HOST_NS = "11:memory:/docker/3f2a9c\n4:cpu,cpuacct:/docker/3f2a9c\n0::/system.slice/docker-3f2a.scope\n"
PURE_V1 = "12:pids:/\n11:memory:/\n"


def test_the_engine_is_named_by_the_source_of_its_bind_mounted_etc_files():
    assert incontainer.engine([mountinfo.parse_line(DOCKER_HOSTNAME)], b"") == "docker"
    assert incontainer.engine([mountinfo.parse_line(K8S_HOSTS)], b"") == "kubernetes"
    assert incontainer.engine([mountinfo.parse_line(VM_ROOT)], b"HOME=/\0") == ""
    assert incontainer.engine([mountinfo.parse_line(VM_ROOT)], b"HOME=/\0container=lxc\0") == "lxc"


def test_a_private_cgroup_namespace_shows_root_paths_a_shared_one_the_containers_cgroup():
    assert incontainer.cgroup_namespace(PRIVATE_ON_HYBRID) == "private"
    assert incontainer.cgroup_namespace(HOST_NS) == "host"


def test_a_v1_view_with_a_v2_line_is_a_hybrid_host_seen_from_a_container():
    assert "hybrid on the host" in incontainer.cgroup_view("v1", PRIVATE_ON_HYBRID)
    assert incontainer.cgroup_view("v1", PURE_V1) == "v1"
    assert incontainer.cgroup_view("hybrid", PRIVATE_ON_HYBRID) == "hybrid"


def test_overlay_listed_in_proc_filesystems():
    assert incontainer.overlay_in_kernel("nodev\tproc\nnodev\toverlay\n\text4\n")
    assert not incontainer.overlay_in_kernel("nodev\tproc\n\text4\n")


def _findings(tmp_path, monkeypatch, overlay_paths=(), loops=None, proc=PRIVATE_ON_HYBRID, engine="docker"):
    store, docker = tmp_path / "store", tmp_path / "docker"
    monkeypatch.setattr(incontainer, "on_overlay", lambda p: any(str(p).startswith(str(o)) for o in overlay_paths))
    monkeypatch.setattr(incontainer, "overlay_in_kernel", lambda: True)
    if os.geteuid() != 0:       # mknod of 0:0 needs CAP_MKNOD: the probe's answer is not under test here
        monkeypatch.setattr(incontainer, "whiteouts_work", lambda s: (not incontainer.on_overlay(s), "overlay"))
    loops = loops or {"nodes": 8, "free": 8, "control": True, "auto_nodes": False}
    return incontainer.findings(str(store), str(docker), "v1", loops, proc, engine), store, docker


def test_a_store_on_overlay_is_a_problem_with_the_volume_as_fix(tmp_path, monkeypatch):
    (problems, notes), store, docker = _findings(tmp_path, monkeypatch, overlay_paths=[tmp_path])
    assert any("whiteouts" in p and f"-v NAME:{store}" in p for p in problems)
    assert any("overlay2" in n and f"a volume at {docker}" in n for n in notes)
    (problems, notes), _, _ = _findings(tmp_path, monkeypatch)
    assert problems == [] and not any("overlay2" in n for n in notes)


def test_no_free_loop_node_on_a_tmpfs_dev_is_a_problem_but_not_on_devtmpfs(tmp_path, monkeypatch):
    full = {"nodes": 8, "free": 0, "control": True, "auto_nodes": False}
    (problems, _), _, _ = _findings(tmp_path, monkeypatch, loops=full)
    assert any("mknod /dev/loopN" in p for p in problems)
    (problems, _), _, _ = _findings(tmp_path, monkeypatch, loops={**full, "auto_nodes": True})
    assert problems == []


def test_notes_in_a_container_name_the_shared_kernel_the_cgroup_view_and_a_shared_namespace(tmp_path, monkeypatch):
    (_, notes), _, _ = _findings(tmp_path, monkeypatch, proc=HOST_NS)
    assert any("--cgroupns=private" in n for n in notes)
    assert any("kernel is shared" in n for n in notes)
    (_, notes), _, _ = _findings(tmp_path, monkeypatch)
    assert any("hybrid on the host" in n for n in notes) and not any("--cgroupns" in n for n in notes)
    (_, notes), _, _ = _findings(tmp_path, monkeypatch, engine="")
    assert notes == []
