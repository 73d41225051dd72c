"""OCI images: what `docker pull` downloads and `docker save` writes, read and written by hand.

An image is a few JSON documents and some tar files, each stored under the sha256 of its bytes
(content addressing: the name *is* the checksum, so a corrupted or tampered blob is detected by
hashing it). The OCI image layout (image-spec's image-layout.md) puts them in a directory:

    oci-layout                      {"imageLayoutVersion": "1.0.0"}
    index.json                      -> the manifest's digest (and a tag, in an annotation)
    blobs/sha256/<manifest>         -> the config's digest, and each layer's digest, bottom first
    blobs/sha256/<config>           the command, environment ... and rootfs.diff_ids: the sha256 of
                                    each layer's *uncompressed* tar
    blobs/sha256/<layer>            a tar of the files the layer adds or changes, plus deletions:

A tar cannot hold "nothing", so a deletion is an empty file named `.wh.NAME` (a whiteout: NAME is
gone), and a directory whose lower content must vanish holds `.wh..wh..opq` (opaque: only this
layer's entries count). When a layer is unpacked for overlayfs, these become what overlayfs itself
uses: a character device 0:0 at NAME, and the xattr trusted.overlay.opaque=y on the directory.

`docker save` of Docker 20.10 writes the older "docker-archive" format instead: manifest.json lists
the config file and each layer's layer.tar directly - the same config, the same layer tars, the same
whiteouts. `load` reads both, checks every digest, unpacks each layer once into labkit's image store
(named by its diff_id) and returns a labkit.rootfs.Image that Container(image=...) runs.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping

from . import rootfs
from .errors import InvalidValue, LabkitError, NotFound

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


class DigestMismatch(LabkitError):
    """A blob's content does not hash to the digest it is stored under."""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- writing: a layer tar, and an image layout ------------------------------------------------------

@dataclass
class LayerSpec:
    """What one layer holds, as a Dockerfile step would leave it (paths relative to /)."""
    files: Mapping[str, str | bytes] = field(default_factory=dict)
    delete: tuple[str, ...] = ()            # each becomes a whiteout .wh.NAME
    opaque: tuple[str, ...] = ()            # directories whose lower content vanishes (.wh..wh..opq)
    modes: Mapping[str, int] = field(default_factory=dict)


def _clean(path: str) -> str:
    parts = PurePosixPath(str(path).lstrip("/")).parts
    if not parts or ".." in parts or any(p in ("", ".") for p in parts):
        raise InvalidValue("path in layer", path, "a path inside the root without '..', e.g. etc/motd")
    return "/".join(parts)


def layer_tar(spec: LayerSpec) -> bytes:
    """The bytes of a layer tar for `spec`: parent directories, files, whiteouts, opaque markers.

    Every header field is fixed (mtime 0, root:root), so the same spec always gives the same bytes -
    and the same digest, which is what lets registries and caches share layers."""
    buf = io.BytesIO()
    dirs: set[str] = set()

    def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)

    def parents(path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                info = tarfile.TarInfo(d + "/")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                add(info)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(_clean(p) for p in spec.opaque):
            parents(d + "/x")
            add(tarfile.TarInfo(f"{d}/{OPAQUE}"))
        for path in sorted(spec.files):
            clean = _clean(path)
            parents(clean)
            content = spec.files[path]
            info = tarfile.TarInfo(clean)
            info.mode = spec.modes.get(path, 0o644)
            add(info, content.encode() if isinstance(content, str) else bytes(content))
        for path in sorted(_clean(p) for p in spec.delete):
            parents(path)
            head, _, name = path.rpartition("/")
            add(tarfile.TarInfo(f"{head}/{WHITEOUT}{name}" if head else f"{WHITEOUT}{name}"))
    return buf.getvalue()


def directory_tar(root: str | os.PathLike) -> bytes:
    """A layer tar of a whole directory tree (a base layer, like `docker import` makes one)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(Path(root).iterdir()):
            tar.add(entry, arcname=entry.name, filter=_fixed_header)
    return buf.getvalue()


def _fixed_header(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uname, info.gname = 0, "root", "root"
    return info


def write_layout(dest: str | os.PathLike, layers: list[bytes], *, cmd: list[str], tag: str = "latest",
                 env: list[str] | None = None) -> dict:
    """An OCI image layout in `dest` from layer tars (bottom first). Returns the manifest."""
    dest = Path(dest)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = sha256(data)
        (blobs / digest.split(":", 1)[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    layer_refs = [{"mediaType": MEDIA_LAYER, **put(tar)} for tar in layers]
    config = {"architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
              "os": "linux",
              "config": {"Cmd": list(cmd), "Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [ref["digest"] for ref in layer_refs]}}
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, **put(_json(config))},
                "layers": layer_refs}
    manifest_ref = put(_json(manifest))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {"schemaVersion": 2, "manifests": [{"mediaType": MEDIA_MANIFEST, **manifest_ref,
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (dest / "index.json").write_text(json.dumps(index, indent=1))
    return manifest


def _json(document: dict) -> bytes:
    return json.dumps(document, indent=1, sort_keys=True).encode()


# --- reading: a layout or a docker-save archive -----------------------------------------------------

class _Source:
    """Files of an image, in a directory or inside a tar (what `docker save -o` writes)."""

    def __init__(self, path: Path):
        self.path = path
        self._tar = None if path.is_dir() else tarfile.open(path)

    def read(self, name: str) -> bytes:
        try:
            if self._tar is None:
                return (self.path / name).read_bytes()
            member = self._tar.extractfile(name.lstrip("./"))
            if member is None:
                raise KeyError(name)
            return member.read()
        except (OSError, KeyError):
            raise NotFound(f"{name} in {self.path}") from None

    def has(self, name: str) -> bool:
        try:
            self.read(name)
            return True
        except NotFound:
            return False

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


@dataclass
class LoadedImage:
    """An image read and checked: its config, its layers' diff_ids, and labkit layers to run it."""
    name: str
    config: dict
    diff_ids: list[str]
    image: rootfs.Image                 # for Container(image=...)

    @property
    def cmd(self) -> list[str]:
        cfg = self.config.get("config") or {}
        return list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])


def _blob(source: _Source, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise InvalidValue("digest", digest, "sha256:<64 hex digits>")
    data = source.read(f"blobs/sha256/{hexdigest}")
    if sha256(data) != digest:
        raise DigestMismatch(f"blob {digest[:19]}... hashes to {sha256(data)[:19]}...: corrupted or tampered")
    return data


def load(path: str | os.PathLike, name: str | None = None) -> LoadedImage:
    """Read an OCI image layout (index.json) or a `docker save` archive (manifest.json), directory or
    tar; verify every digest; unpack each layer into the image store; return the runnable image."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"image {path}")
    source = _Source(path)
    try:
        if source.has("index.json"):
            index = json.loads(source.read("index.json"))
            manifest = json.loads(_blob(source, index["manifests"][0]["digest"]))
            config = json.loads(_blob(source, manifest["config"]["digest"]))
            tars = []
            for ref in manifest["layers"]:
                data = _blob(source, ref["digest"])
                tars.append(gzip.decompress(data) if ref.get("mediaType", "").endswith("gzip") else data)
            tag = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        elif source.has("manifest.json"):
            manifest = json.loads(source.read("manifest.json"))[0]
            config = json.loads(source.read(manifest["Config"]))
            tars = [source.read(layer) for layer in manifest["Layers"]]
            tag = (manifest.get("RepoTags") or [""])[0]
        else:
            raise InvalidValue("image", str(path), "an OCI image layout (index.json) or a docker save archive "
                                                   "(manifest.json)")
    finally:
        source.close()
    diff_ids = list(config.get("rootfs", {}).get("diff_ids") or [])
    if len(diff_ids) != len(tars):
        raise InvalidValue("image config", "rootfs.diff_ids", f"one diff_id per layer ({len(tars)} layers)")
    layers = []
    for tar, diff_id in zip(tars, diff_ids):
        if sha256(tar) != diff_id:
            raise DigestMismatch(f"a layer hashes to {sha256(tar)[:19]}..., its config says {diff_id[:19]}...")
        layers.append(unpack_layer(tar, diff_id))
    label = name or tag or path.name
    return LoadedImage(label, config, diff_ids, rootfs.Image(label, tuple(layers)))


def unpack_layer(tar: bytes, diff_id: str) -> rootfs.Layer:
    """Unpack a layer tar into the image store as an overlayfs lower layer (once per diff_id):
    `.wh.NAME` becomes a whiteout device 0:0, `.wh..wh..opq` the opaque xattr on its directory."""
    name = "oci-" + diff_id.split(":", 1)[1][:16]

    def fill(root: Path) -> dict:
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            for member in archive:
                _extract(archive, member, root)
        return {}

    return rootfs.cached_layer(name, fill, {"name": name, "diff_id": diff_id})


def _extract(archive: tarfile.TarFile, member: tarfile.TarInfo, root: Path) -> None:
    rel = PurePosixPath(member.name.lstrip("/"))
    parts = [p for p in rel.parts if p != "."]
    if ".." in parts:
        raise InvalidValue("layer entry", member.name, "a path inside the layer (no '..')")
    if not parts:
        return
    if member.islnk() and ".." in PurePosixPath(member.linkname.lstrip("/")).parts:
        raise InvalidValue("layer hard link", member.linkname, "a target inside the layer")
    target = root.joinpath(*parts)
    base = parts[-1]
    if base == OPAQUE:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.setxattr(target.parent, OPAQUE_XATTR, b"y")
    elif base.startswith(WHITEOUT):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(target.parent / base[len(WHITEOUT):], stat.S_IFCHR | 0o000, os.makedev(0, 0))
    else:
        archive.extract(member, root, numeric_owner=True, filter="fully_trusted")   # checked above
