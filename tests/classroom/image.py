"""The classroom's lab image for the test stage: deploy/build-image.sh, cached on its inputs.

Built the way an instructor builds it (debootstrap of Debian 12, vagrant/provision.sh --container in
a chroot, `docker import`; no registry), plus `--test-tools` (pytest and nbval: the learners run
with --network none, so nbval must be in the image). The build takes minutes, so the result is kept
in the stage's own dockerd (daemon.py) as `labkit-classroom-base:KEY`, KEY a hash of what the build
reads (KEY_FILES, its flags, the hub's jupyterhub version); a change in any makes a new build,
and all but the newest few go.

Every run then adds this checkout on top (`docker build`: FROM the base, COPY the tracked files to
/opt/labkit; labkit is installed editable there), so a change to labkit or a notebook is tested
without rebuilding the Debian underneath: `labkit-classroom-run:KEY`, removed when the stage ends.
"""
from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import time
from pathlib import Path

from labkit import dockerd
from tests.classroom.daemon import CACHE, OwnDockerd, say
from tests.guest.image import ca_bundle, pip_conf

PROJECT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
KEY_FILES = ("vagrant/packages.txt", "pyproject.toml", "constraints.txt", "vagrant/provision.sh",
             "vagrant/jupyterlab-settings/overrides.json", "deploy/build-image.sh")
BUILD_FLAGS = ("--suite", SUITE, "--test-tools")      # part of the key too
BASE = "labkit-classroom-base"
RUN = "labkit-classroom-run"
KEEP = 3                      # cached base images kept, the newest


def key(hub_version: str) -> str:
    h = hashlib.sha256("\0".join((*BUILD_FLAGS, hub_version, "")).encode())
    for name in KEY_FILES:
        h.update(name.encode() + b"\0" + (PROJECT / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _tags(d: OwnDockerd, repo: str) -> list[str]:
    out = d.docker("images", "--format", "{{.Repository}}:{{.Tag}}", repo, check=False).stdout
    return [t for t in out.split() if t.startswith(repo + ":")]


def ensure_base(d: OwnDockerd, hub_version: str) -> tuple[str, float | None]:
    """(tag, build seconds or None when the cached image was used)."""
    tag = f"{BASE}:{key(hub_version)}"
    if tag in _tags(d, BASE):
        say(f"lab image {tag}: cached (its inputs have not changed)")
        return tag, None
    # keep the newest few: two checkouts of different inputs on one machine (a CI clone beside a
    # working tree) would otherwise remove each other's image at every run
    for stale in _tags(d, BASE)[KEEP - 1:]:
        d.docker("rmi", stale, check=False)
    argv = ["bash", str(PROJECT / "deploy/build-image.sh"), *BUILD_FLAGS, "--tag", tag,
            "--jupyterhub-version", hub_version]
    if ca_bundle():
        argv += ["--ca-bundle", ca_bundle()]
    if pip_conf():
        argv += ["--pip-conf", pip_conf()]
    say(f"building the lab image {tag} (deploy/build-image.sh; minutes from nothing) ...")
    t0 = time.monotonic()
    # its progress lines go straight to the terminal; pip's and apt's chatter stays in the log
    log = CACHE / "build.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=d.env(),
                                text=True, cwd=PROJECT)
        for line in proc.stdout:
            f.write(line)
            if line.startswith(("[build-image]", "[provision]")) and "WARNING" not in line:
                print(f"  {time.monotonic() - t0:5.0f}s {line.rstrip()}", flush=True)
    if proc.wait() != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"deploy/build-image.sh failed (exit {proc.returncode}); see {log}:\n{tail}")
    return tag, time.monotonic() - t0


def _checkout_context(base: str) -> bytes:
    """A docker build context: this checkout's tracked files and a two-line Dockerfile."""
    files = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dockerfile = f"FROM {base}\nCOPY . /opt/labkit/\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for name in filter(None, files):
            path = PROJECT / name
            if path.is_file() or path.is_symlink():
                tar.add(path, arcname=name, recursive=False)
    return buf.getvalue()


def with_checkout(d: OwnDockerd, base: str) -> str:
    """The base image with this checkout at /opt/labkit: the image the learners run."""
    tag = f"{RUN}:{base.split(':')[1]}"
    build = subprocess.run([dockerd.DOCKER, "build", "-q", "-t", tag, "-"], input=_checkout_context(base),
                           env={**d.env(), "DOCKER_BUILDKIT": "0"}, capture_output=True, timeout=300)
    if build.returncode != 0:
        raise RuntimeError(f"docker build of {tag} failed: {build.stderr.decode(errors='replace')[-2000:]}")
    return tag
