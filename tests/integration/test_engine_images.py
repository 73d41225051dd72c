"""Images on labkit's engine: tag, rmi, image prune, and commit - the container's overlay upper
directory becoming a read-only layer, seen in the mount table of a container of the new image."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from labkit import cleanup, dockerd, rootfs
from engine_cli import IMAGE, docker, engine  # noqa: F401 (engine: the fixture)

pytestmark = pytest.mark.root


def test_tag_and_rmi(engine):
    tag = f"{cleanup.unique_name('tagged')}:v1"
    assert docker(engine, "tag", IMAGE, tag).returncode == 0
    ids = {line.split()[0]: line.split()[1] for line in
           docker(engine, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout.decode().splitlines()}
    assert ids[tag] == ids[f"{IMAGE}:latest"]
    removed = docker(engine, "rmi", tag)
    assert (removed.returncode, removed.stdout) == (0, f"Untagged: {tag}\n".encode())
    assert tag not in docker(engine, "images").stdout.decode()
    assert docker(engine, "run", "--rm", IMAGE, "true").returncode == 0        # the image itself stays


def test_commit_makes_the_upper_directory_a_layer(engine):
    name, tag = cleanup.unique_name("committed"), f"{cleanup.unique_name('snap')}:1"
    assert docker(engine, "run", "-d", "--name", name, IMAGE, "sh", "-c",
                  "echo made > /made.txt; rm /etc/os-release; sleep 600").returncode == 0
    try:
        pid = json.loads(docker(engine, "inspect", name).stdout)[0]["State"]["Pid"]
        assert docker(engine, "exec", name, "cat", "/made.txt").stdout == b"made\n"     # written before commit
        committed = docker(engine, "commit", name, tag)
        assert committed.returncode == 0, committed.stderr
        refused = docker(engine, "rmi", tag)
        assert refused.returncode == 0                       # no container of it yet: it may go ...
        assert docker(engine, "commit", name, tag).returncode == 0              # ... and be made again
        new = cleanup.unique_name("fromsnap")
        assert docker(engine, "run", "-d", "--name", new, tag, "sleep", "600").returncode == 0
        try:
            new_pid = json.loads(docker(engine, "inspect", new).stdout)[0]["State"]["Pid"]
            root = [m for m in rootfs.read_mountinfo(new_pid) if m["mountpoint"] == "/"][-1]
            lower = rootfs.overlay_layers(root)["lower"]
            assert len(lower) == 2 and str(rootfs.base_layer().path) == lower[-1]     # the new layer on top
            assert docker(engine, "exec", new, "cat", "/made.txt").stdout == b"made\n"
            gone = docker(engine, "exec", new, "cat", "/etc/os-release")
            assert gone.returncode != 0                       # the deletion (a whiteout) came along
            busy = docker(engine, "rmi", tag)
            assert busy.returncode != 0 and b"is using its referenced image" in busy.stderr
        finally:
            docker(engine, "rm", "--force", new)
        assert docker(engine, "rmi", tag).returncode == 0
        assert pid > 0
    finally:
        docker(engine, "rm", "--force", name)


def test_image_prune_removes_only_unnamed_unused_images(engine):
    name = cleanup.unique_name("dangle")
    assert docker(engine, "run", "-d", "--name", name, IMAGE, "sleep", "600").returncode == 0
    try:
        image_id = docker(engine, "commit", name).stdout.decode().strip()            # no name: dangling
        assert image_id.startswith("sha256:")
        assert docker(engine, "image", "inspect", image_id).returncode == 0
        assert docker(engine, "image", "prune", "-f").returncode == 0
        assert docker(engine, "image", "inspect", image_id).returncode != 0
        assert docker(engine, "image", "inspect", IMAGE).returncode == 0
    finally:
        docker(engine, "rm", "--force", name)


def test_image_prune_a_removes_every_unused_image_and_other_filters_are_refused(engine):
    """-a is the filter dangling=false: a named image no container uses goes too (with the layer directory
    the engine made for it); the image a running container uses stays. until= and label= are refused."""
    name, tag = cleanup.unique_name("prunea"), f"{cleanup.unique_name('unused')}:1"
    assert docker(engine, "run", "-d", "--name", name, IMAGE, "sleep", "600").returncode == 0
    try:
        assert docker(engine, "commit", name, tag).returncode == 0
        layer = Path(json.loads(docker(engine, "image", "inspect", tag).stdout)[0]["GraphDriver"]["Data"]["LowerDir"])
        assert layer.is_dir()
        assert docker(engine, "image", "prune", "-f").returncode == 0              # named: not dangling
        assert docker(engine, "image", "inspect", tag).returncode == 0
        refused = docker(engine, "image", "prune", "-f", "--filter", "until=1h")
        assert refused.returncode != 0 and b"until" in refused.stderr
        pruned = docker(engine, "image", "prune", "-a", "-f")
        assert pruned.returncode == 0 and f"untagged: {tag}".encode() in pruned.stdout, pruned.stdout
        assert docker(engine, "image", "inspect", tag).returncode != 0 and not layer.exists()
        assert docker(engine, "image", "inspect", IMAGE).returncode == 0          # in use: it stays
    finally:
        docker(engine, "rm", "--force", name)


def test_cp_both_ways_resolves_paths_inside_the_container(engine, tmp_path):
    name = cleanup.unique_name("cp")
    assert docker(engine, "run", "-d", "--name", name, "-u", "nobody", IMAGE, "sh", "-c",
                  "ln -s / /tmp/root-link; sleep 600").returncode == 0
    try:
        assert docker(engine, "cp", f"{name}:/etc/passwd", str(tmp_path / "passwd")).returncode == 0
        assert (tmp_path / "passwd").read_text().startswith("root:x:0:0:root:/root:/bin/sh\n")
        assert docker(engine, "cp", f"{name}:/etc", str(tmp_path / "etc")).returncode == 0
        assert {"passwd", "group", "hosts"} <= set(os.listdir(tmp_path / "etc"))
        # through a symlink inside, a path stays inside: the container's files, never the host's
        assert docker(engine, "exec", name, "readlink", "/tmp/root-link").stdout == b"/\n"
        out = docker(engine, "cp", f"{name}:/tmp/root-link/etc/passwd", str(tmp_path / "via-link"))
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "via-link").read_text() == (tmp_path / "passwd").read_text()
        (tmp_path / "in.txt").write_text("into the box\n")
        assert docker(engine, "cp", str(tmp_path / "in.txt"), f"{name}:/tmp/").returncode == 0
        assert docker(engine, "exec", name, "cat", "/tmp/in.txt").stdout == b"into the box\n"
        missing = docker(engine, "cp", f"{name}:/no/such/file", str(tmp_path / "x"))
        assert missing.returncode != 0 and not (tmp_path / "x").exists()
    finally:
        docker(engine, "rm", "--force", name)


def _commit(engine, tag: str, path: str, text: str, also: str = "true") -> None:
    """An image `tag` committed from a running container that wrote `text` to `path` (and ran `also`)."""
    name = cleanup.unique_name("saver")
    assert docker(engine, "run", "-d", "--name", name, IMAGE, "sh", "-c",
                  f"echo {text} > {path}; {also}; sleep 600").returncode == 0
    try:
        assert docker(engine, "exec", name, "cat", path).stdout == f"{text}\n".encode()
        assert docker(engine, "commit", name, tag).returncode == 0
    finally:
        docker(engine, "rm", "--force", name)


def test_save_and_load_speak_dockers_image_tar_format(engine, tmp_path):
    """An image committed on labkit's engine, saved, and loaded back - and into the real dockerd,
    where a container of it (--network none) sees the same files and the same deletion."""
    repo = cleanup.unique_name("saved")
    tag = f"{repo}:1"
    _commit(engine, tag, "/s.txt", "saved", also="rm /etc/os-release")
    archive = tmp_path / "saved.tar"
    assert docker(engine, "save", "-o", str(archive), tag).returncode == 0
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == [tag] and len(manifest[0]["Layers"]) == 2
        top = tarfile.open(fileobj=tar.extractfile(manifest[0]["Layers"][-1])).getnames()
        assert "s.txt" in top and "etc/.wh.os-release" in top          # Docker's whiteout file
    assert docker(engine, "rmi", tag).returncode == 0
    loaded = docker(engine, "load", "-i", str(archive))
    assert (loaded.returncode, loaded.stdout) == (0, f"Loaded image: {tag}\n".encode())
    check = "cat /s.txt; test -e /etc/os-release && echo still-there || echo deleted"
    assert docker(engine, "run", "--rm", tag, "sh", "-c", check).stdout == b"saved\ndeleted\n"
    assert docker(engine, "rmi", tag).returncode == 0
    if not dockerd.available():
        return
    with dockerd.Dockerd() as daemon:
        cleanup.claim("docker-image", repo)
        try:
            assert daemon.docker("load", "-i", str(archive), check=False).returncode == 0
            real = daemon.docker("run", "--rm", "--network", "none", tag, "sh", "-c", check, check=False)
            assert (real.returncode, real.stdout) == (0, b"saved\ndeleted\n"), real.stderr
        finally:
            dockerd.remove_image(tag)
            cleanup.release("docker-image", repo)


def test_save_of_several_names_keeps_every_image(engine, tmp_path):
    """docker save a b: one archive with both images (the CLI asks ?names=a&names=b), each once."""
    tag = f"{cleanup.unique_name('saved')}:2"
    _commit(engine, tag, "/two.txt", "two")
    try:
        archive = tmp_path / "two.tar"
        assert docker(engine, "save", "-o", str(archive), IMAGE, tag, IMAGE).returncode == 0
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        assert len(manifest) == 2                                    # IMAGE asked twice: saved once
        saved = [entry["RepoTags"] for entry in manifest]
        assert any(f"{IMAGE}:latest" in tags for tags in saved) and any(tag in tags for tags in saved), saved
        assert [len(entry["Layers"]) for entry in manifest] in ([1, 2], [2, 1])
    finally:
        assert docker(engine, "rmi", tag).returncode == 0


def _objects_named(name: str) -> list:
    """The kernel objects of one labkit container (mounts, directories, cgroups), read from the machine."""
    return [item for item in cleanup.find_all(include_in_use=True) if name in str(item)]


def test_commit_and_cp_of_a_stopped_container_then_rm_leaves_nothing(engine, tmp_path):
    """As with dockerd, a stopped container keeps its writable layer until rm: commit and cp (both
    ways) work on it; rm removes it, and nothing of the container is left on the machine."""
    name, repo = cleanup.unique_name("stopped"), cleanup.unique_name("fromstopped")
    tag = f"{repo}:1"
    assert docker(engine, "run", "--name", name, IMAGE, "sh", "-c", "echo kept > /kept.txt").returncode == 0
    try:
        labkit_name = json.loads(docker(engine, "inspect", name).stdout)[0]["Labkit"]["LabkitName"]
        root = json.loads(docker(engine, "inspect", name).stdout)[0]["Labkit"]["RootFS"]
        assert labkit_name in Path("/proc/self/mountinfo").read_text()     # its root stays mounted
        out = docker(engine, "cp", f"{name}:/kept.txt", str(tmp_path / "kept.txt"))
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "kept.txt").read_text() == "kept\n"
        (tmp_path / "in.txt").write_text("copied in\n")
        out = docker(engine, "cp", str(tmp_path / "in.txt"), f"{name}:/")
        assert out.returncode == 0, out.stderr
        assert Path(root, "in.txt").read_text() == "copied in\n"           # in its overlay, not the host's /
        out = docker(engine, "commit", name, tag)
        assert out.returncode == 0, out.stderr
        seen = docker(engine, "run", "--rm", tag, "cat", "/kept.txt", "/in.txt")
        assert (seen.returncode, seen.stdout) == (0, b"kept\ncopied in\n"), seen.stderr
    finally:
        docker(engine, "rmi", tag)
        assert docker(engine, "rm", name).returncode == 0
    assert labkit_name not in Path("/proc/self/mountinfo").read_text()     # the overlay and its tmpfs
    assert not Path(root).exists() and _objects_named(labkit_name) == []
