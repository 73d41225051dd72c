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

from ..errors import Conflict, InvalidValue, NotFound

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
    owned_layer: Path | None = None     # a layer this engine made (docker commit): removed with it
    comment: str = ""

    def forget(self) -> None:
        """The image is gone: remove the layer directory the engine made for it, if any."""
        if self.owned_layer is not None:
            import shutil
            shutil.rmtree(self.owned_layer.parent, ignore_errors=True)

    def labkit_image(self):
        """This image as `labkit.rootfs` stacks it: read-only layers under each container's overlay."""
        from .. import rootfs

        name = (self.tags or [self.id[7:19]])[0]
        layers = self.layers or (rootfs.Layer(name.split(":")[0], self.rootfs),)
        return rootfs.Image(name, tuple(layers))

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
        return {"Id": self.id, "ParentId": "", "RepoTags": self.tags or ["<none>:<none>"], "RepoDigests": [],
                "Created": int(self.created), "Size": self.size(), "SharedSize": -1,
                "VirtualSize": self.size(), "Labels": {}, "Containers": -1}

    def inspect(self) -> dict:
        """GET /images/NAME/json."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        config = {"Cmd": self.cmd, "Entrypoint": self.entrypoint, "Env": self.env,
                  "WorkingDir": self.working_dir, "Labels": {}, "User": "", "Tty": False}
        return {"Id": self.id, "RepoTags": self.tags, "RepoDigests": [], "Parent": "",
                "Comment": self.comment or f"root filesystem {self.rootfs}", "Created": created,
                "Container": "", "ContainerConfig": config, "Config": config,
                "DockerVersion": "", "Author": "labkit", "Architecture": _arch(), "Os": "linux",
                "Size": self.size(), "VirtualSize": self.size(),
                "GraphDriver": {"Name": "overlay", "Data": {"LowerDir": str(self.rootfs)}},
                "RootFS": {"Type": "layers", "Layers": [str(layer.path) for layer in self.layers] or [self.id]}, "Metadata": {"LastTagTime": created}}


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

    def put(self, image: Image) -> Image:
        """Add a built image (docker commit); its tags move to it from any other image."""
        with self._lock:
            for old in self._images:
                old.tags[:] = [t for t in old.tags if t not in image.tags]
            self._images.append(image)
        return image

    def tag(self, ref: str, new_tag: str) -> None:
        """docker tag: one more name for an image (taken from the image that had it)."""
        image = self.find(ref)
        new_tag = normalize(new_tag)
        if "@" in new_tag or new_tag.startswith("sha256:"):
            raise InvalidValue("tag", new_tag, "NAME[:TAG]")
        with self._lock:
            for old in self._images:
                if new_tag in old.tags and old is not image:
                    old.tags.remove(new_tag)
            if new_tag not in image.tags:
                image.tags.append(new_tag)

    def remove(self, ref: str, in_use: set[str]) -> list[dict]:
        """docker rmi: untag a name; the image goes with its last name, unless a container uses it."""
        image = self.find(ref)
        name = normalize(ref)
        with self._lock:
            if name in image.tags and len(image.tags) > 1:
                image.tags.remove(name)
                return [{"Untagged": name}]
            if image.id in in_use:
                raise Conflict(f'conflict: unable to remove repository reference "{ref}" (must force) - '
                               f"a container is using its referenced image {image.id[7:19]}")
            self._images.remove(image)
        image.forget()
        return [{"Untagged": t} for t in image.tags] + [{"Deleted": image.id}]

    def prune(self, in_use: set[str], only_dangling: bool = True) -> list[dict]:
        """docker image prune: images without a name that no container uses (-a: every unused image)."""
        with self._lock:
            unused = [i for i in self._images if i.id not in in_use and not (only_dangling and i.tags)]
            self._images = [i for i in self._images if i not in unused]
        for image in unused:
            image.forget()
        return [entry for i in unused for entry in [{"Untagged": t} for t in i.tags] + [{"Deleted": i.id}]]

    def names(self) -> list[str]:
        return [tag for image in self.list() for tag in image.tags]


def commit(upper: Path, layers_dir: Path, parent: Image, tag: str | None, comment: str,
           config: dict) -> Image:
    """docker commit: the container's overlay upper directory - everything it added, changed or
    deleted (whiteouts: 0/0 character devices) - copied as a new read-only layer on top of its
    image's layers. `cp -a` keeps owners, modes, devices and the overlay's xattrs (opaque dirs)."""
    import subprocess
    import uuid

    from .. import rootfs

    layer_dir = layers_dir / uuid.uuid4().hex[:16] / "root"
    layer_dir.mkdir(parents=True)
    result = subprocess.run(["cp", "-a", f"{upper}/.", str(layer_dir)], capture_output=True)
    if result.returncode != 0:
        import shutil
        shutil.rmtree(layer_dir.parent, ignore_errors=True)
        raise InvalidValue("container's writable layer", str(upper),
                           f"a copyable directory: {result.stderr.decode(errors='replace').strip()}")
    base = parent.layers or (rootfs.Layer("base", parent.rootfs),)
    layer = rootfs.Layer(f"commit-{layer_dir.parent.name}", layer_dir)
    digest = hashlib.sha256((parent.id + tree_digest(layer_dir)).encode()).hexdigest()
    return Image([normalize(tag)] if tag else [], layer_dir, "sha256:" + digest, time.time(),
                 cmd=config.get("Cmd", parent.cmd), env=config.get("Env", parent.env),
                 entrypoint=config.get("Entrypoint", parent.entrypoint),
                 working_dir=config.get("WorkingDir", parent.working_dir),
                 layers=(*base, layer), owned_layer=layer_dir, comment=comment)


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


# --- docker save / docker load: Docker's image tar format -------------------------------------------
#
#   manifest.json            [{"Config": "<id>.json", "RepoTags": [...], "Layers": ["<n>/layer.tar", ...]}]
#   <id>.json                the image config: Cmd, Env, ..., rootfs.diff_ids (sha256 of each layer.tar)
#   <n>/layer.tar            one layer, bottom first; a deletion is an empty file named .wh.<name>
#                            (overlayfs stores it as a 0/0 character device: converted both ways)

WHITEOUT = ".wh."


def _layer_tar(root: Path) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath, name)
                arcname = str(path.relative_to(root))
                st = path.lstat()
                if os.path.stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:      # overlay whiteout
                    info = tarfile.TarInfo(str(Path(arcname).parent / (WHITEOUT + name)))
                    tar.addfile(info)
                else:
                    tar.add(path, arcname=arcname, recursive=False)
    return buffer.getvalue()


def save(images: list[Image]) -> bytes:
    """A `docker save` archive of `images` (their layers, config and names)."""
    import io
    import json
    import tarfile

    out = io.BytesIO()
    manifest, written = [], {}
    with tarfile.open(fileobj=out, mode="w") as tar:
        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for image in {image.id: image for image in images}.values():     # each image once
            layer_names, diff_ids = [], []
            for layer in image.layers or (type("L", (), {"path": image.rootfs})(),):
                if str(layer.path) not in written:
                    data = _layer_tar(Path(layer.path))
                    digest = hashlib.sha256(data).hexdigest()
                    put(f"{digest}/layer.tar", data)
                    put(f"{digest}/VERSION", b"1.0")
                    written[str(layer.path)] = digest
                layer_names.append(f"{written[str(layer.path)]}/layer.tar")
                diff_ids.append("sha256:" + written[str(layer.path)])
            config = {"architecture": _arch(), "os": "linux",
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(image.created)),
                      "config": {"Cmd": image.cmd, "Env": image.env, "Entrypoint": image.entrypoint,
                                 "WorkingDir": image.working_dir},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}, "comment": image.comment}
            raw = json.dumps(config).encode()
            config_name = hashlib.sha256(raw).hexdigest() + ".json"
            put(config_name, raw)
            manifest.append({"Config": config_name, "RepoTags": image.tags, "Layers": layer_names})
        put("manifest.json", json.dumps(manifest).encode())
    return out.getvalue()


def load(archive: bytes, layers_dir: Path) -> list[Image]:
    """Images from a `docker save` archive, their layers unpacked under `layers_dir`."""
    import io
    import json
    import tarfile
    import uuid

    from .. import rootfs

    try:
        tar = tarfile.open(fileobj=io.BytesIO(archive))
        manifest = json.load(tar.extractfile("manifest.json"))
    except (tarfile.TarError, KeyError, ValueError, TypeError) as exc:
        raise InvalidValue("image archive", f"{len(archive)} bytes", f"a docker save archive ({exc})") from None
    loaded, unpacked = [], {}
    for entry in manifest:
        config = json.load(tar.extractfile(entry["Config"]))
        layers = []
        for name in entry["Layers"]:
            if name not in unpacked:
                root = layers_dir / uuid.uuid4().hex[:16] / "root"
                root.mkdir(parents=True)
                _unpack_layer(tarfile.open(fileobj=tar.extractfile(name)), root)
                unpacked[name] = rootfs.Layer(f"loaded-{root.parent.name}", root)
            layers.append(unpacked[name])
        settings = config.get("config") or {}
        digest = "sha256:" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        loaded.append(Image([normalize(t) for t in entry.get("RepoTags") or []], layers[-1].path, digest,
                            time.time(), cmd=settings.get("Cmd") or ["sh"], env=settings.get("Env") or [],
                            entrypoint=settings.get("Entrypoint"), working_dir=settings.get("WorkingDir") or "",
                            layers=tuple(layers), owned_layer=layers[-1].path))
    return loaded


def _unpack_layer(tar, root: Path) -> None:
    """Extract one layer.tar; .wh.<name> files become overlay whiteouts (0/0 character devices)."""
    import stat as stat_mod
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if ".." in parts or member.name.startswith("/"):
            raise InvalidValue("layer member", member.name, "a path inside the layer")
        name = Path(member.name).name
        if name.startswith(WHITEOUT) and name != WHITEOUT + WHITEOUT + ".opq":
            target = root / Path(member.name).parent / name[len(WHITEOUT):]
            target.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(target, stat_mod.S_IFCHR, os.makedev(0, 0))
        elif name != WHITEOUT + WHITEOUT + ".opq":
            tar.extract(member, root, set_attrs=True, filter="tar")
