"""labkit.ociimage without root: layer tars, digests, the layout's documents, refusals."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from labkit import ociimage
from labkit.errors import InvalidValue


def _names(data: bytes) -> list[str]:
    return tarfile.open(fileobj=io.BytesIO(data)).getnames()


def test_a_layer_holds_files_whiteouts_and_opaque_markers():
    tar = ociimage.layer_tar(ociimage.LayerSpec(files={"/a/b/c": "x"}, delete=("etc/motd", "top"),
                                                opaque=("var/cache",)))
    names = _names(tar)
    assert {"a", "a/b", "a/b/c", "etc/.wh.motd", ".wh.top", "var/cache/.wh..wh..opq"} <= set(names)


def test_the_same_spec_gives_the_same_bytes():
    spec = ociimage.LayerSpec(files={"x": b"\0\1"}, delete=("y",))
    assert ociimage.layer_tar(spec) == ociimage.layer_tar(spec)


@pytest.mark.parametrize("path", ["../escape", "a/../../b", "", "/"])
def test_paths_outside_the_root_are_refused(path):
    with pytest.raises(InvalidValue):
        ociimage.layer_tar(ociimage.LayerSpec(files={path: "x"}))


def test_a_layout_links_index_manifest_config_and_layers(tmp_path):
    layers = [ociimage.layer_tar(ociimage.LayerSpec(files={"f": str(n)})) for n in range(2)]
    manifest = ociimage.write_layout(tmp_path, layers, cmd=["sh"], tag="t")
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "t"
    stored = (tmp_path / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_bytes()
    assert json.loads(stored) == manifest
    config = json.loads((tmp_path / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    assert config["rootfs"]["diff_ids"] == [ociimage.sha256(t) for t in layers] == \
        [ref["digest"] for ref in manifest["layers"]]
    assert json.loads((tmp_path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}


def test_a_tampered_blob_is_refused_before_anything_is_unpacked(tmp_path):
    layer = ociimage.layer_tar(ociimage.LayerSpec(files={"f": "x"}))
    manifest = ociimage.write_layout(tmp_path, [layer], cmd=["sh"])
    blob = tmp_path / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    blob.write_bytes(blob.read_bytes()[:-1] + b"\1")
    with pytest.raises(ociimage.DigestMismatch):
        ociimage.load(tmp_path)


def test_something_else_is_not_an_image(tmp_path):
    (tmp_path / "hello").write_text("x")
    with pytest.raises(InvalidValue, match="index.json"):
        ociimage.load(tmp_path)
