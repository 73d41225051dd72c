"""The engine's local images: root filesystems on disk, known by a name:tag.

Docker keeps images as stacks of layers pulled from a registry. No registry is reachable here, so
labkit's engine knows a few root filesystems by name - by default the busybox rootfs of chapter 4
(`labkit.rootfs`) as ``labkit-busybox:latest`` - and every container gets its own copy-on-write
view of one of them (see `labkit.engine.runtime`).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidValue, NotFound

DEFAULT_IMAGE = "labkit-busybox:latest"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def normalize(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``; a reference with a tag or an id is left alone."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidValue("image", ref, "an image name such as labkit-busybox or labkit-busybox:latest")
    ref = ref.strip()
    if ref.startswith("sha256:") or "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else ref + ":latest"


def tree_digest(root: Path) -> str:
    """A content id for a root filesystem: sha256 over every entry's path, type, mode, size, link."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            st = path.lstat()
            link = os.readlink(path) if path.is_symlink() else ""
            digest.update(f"{path.relative_to(root)}\0{st.st_mode:o}\0{st.st_size}\0{link}\n".encode())
    return "sha256:" + digest.hexdigest()


@dataclass
class Image:
    tags: list[str]
    rootfs: Path
    id: str
    created: float
    cmd: list[str] = field(default_factory=lambda: ["sh"])
    env: list[str] = field(default_factory=lambda: list(DEFAULT_ENV))
    entrypoint: list[str] | None = None
    working_dir: str = ""
    layers: tuple = ()        # labkit.rootfs Layers, bottom first; () = the rootfs directory alone

    def labkit_image(self):
        """This image as `labkit.rootfs` stacks it: read-only layers under each container's overlay."""
        from .. import rootfs

        layers = self.layers or (rootfs.Layer(self.tags[0].split(":")[0], self.rootfs),)
        return rootfs.Image(self.tags[0], tuple(layers))

    def read_text(self, path: str) -> str:
        """A file of the image as a container would see it (the top-most layer that has it)."""
        roots = [layer.path for layer in reversed(self.layers)] if self.layers else [self.rootfs]
        for root in filter(None, roots):
            candidate = Path(root, path.lstrip("/"))
            if candidate.is_file() and not candidate.is_symlink():
                return candidate.read_text(errors="replace")
        return ""

    def size(self) -> int:
        return sum(p.lstat().st_size for p in self.rootfs.rglob("*"))

    def summary(self) -> dict:
        """An entry of GET /images/json."""
        return {"Id": self.id, "ParentId": "", "RepoTags": self.tags, "RepoDigests": [],
                "Created": int(self.created), "Size": self.size(), "SharedSize": -1,
                "VirtualSize": self.size(), "Labels": {}, "Containers": -1}

    def inspect(self) -> dict:
        """GET /images/NAME/json."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        config = {"Cmd": self.cmd, "Entrypoint": self.entrypoint, "Env": self.env,
                  "WorkingDir": self.working_dir, "Labels": {}, "User": "", "Tty": False}
        return {"Id": self.id, "RepoTags": self.tags, "RepoDigests": [], "Parent": "",
                "Comment": f"root filesystem {self.rootfs}", "Created": created,
                "Container": "", "ContainerConfig": config, "Config": config,
                "DockerVersion": "", "Author": "labkit", "Architecture": _arch(), "Os": "linux",
                "Size": self.size(), "VirtualSize": self.size(),
                "GraphDriver": {"Name": "overlay", "Data": {"LowerDir": str(self.rootfs)}},
                "RootFS": {"Type": "layers", "Layers": [self.id]}, "Metadata": {"LastTagTime": created}}


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


class ImageStore:
    """Name -> Image, thread-safe (the server answers requests in parallel)."""

    def __init__(self):
        self._images: list[Image] = []
        self._lock = threading.Lock()

    def add(self, tag: str, rootfs: str | os.PathLike, **config) -> Image:
        rootfs = Path(rootfs).resolve()
        if not (rootfs / "bin").is_dir():
            raise InvalidValue("rootfs", str(rootfs), "a directory with a root filesystem (it has no bin/)")
        tag = normalize(tag)
        image = Image([tag], rootfs, tree_digest(rootfs), rootfs.stat().st_mtime, **config)
        with self._lock:
            for old in self._images:
                if tag in old.tags:
                    old.tags.remove(tag)
            self._images = [i for i in self._images if i.tags] + [image]
        return image

    def find(self, ref: str) -> Image:
        """By name:tag, full id, or id prefix (as Docker resolves them)."""
        wanted = normalize(ref)
        with self._lock:
            for image in self._images:
                if wanted in image.tags or ref == image.id:
                    return image
            bare = ref.removeprefix("sha256:")
            if len(bare) >= 4 and all(c in "0123456789abcdef" for c in bare):
                matches = [i for i in self._images if i.id.removeprefix("sha256:").startswith(bare)]
                if len(matches) == 1:
                    return matches[0]
        raise NotFound(f"No such image: {ref}")

    def list(self) -> list[Image]:
        with self._lock:
            return list(self._images)

    def names(self) -> list[str]:
        return [tag for image in self.list() for tag in image.tags]


def default_store(extra: dict[str, str] | None = None) -> ImageStore:
    """The busybox rootfs of chapter 4 as labkit-busybox:latest, plus `extra` {name: rootfs dir}."""
    store = ImageStore()
    if not extra or DEFAULT_IMAGE not in {normalize(k) for k in extra}:
        base = busybox_layer()
        store.add(DEFAULT_IMAGE, base.path, layers=(base,))
    for name, path in (extra or {}).items():
        store.add(name, path)
    return store


def busybox_layer():
    """The read-only busybox base layer of chapter 4 (built offline once, then cached)."""
    from .. import rootfs

    return rootfs.base_layer()
