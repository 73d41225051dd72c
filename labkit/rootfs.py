"""Root filesystems: a busybox image built offline, overlayfs image layers, and pivot_root done right.

A container's `/` is an ordinary directory tree that the container's mount namespace is told to treat
as its root. Three pieces make that tree, in the order Docker uses them:

1. **Image layers** (read-only). The base layer is a minimal Linux userland built once from Debian's
   `busybox-static` (one static binary, plus a symlink per applet, plus /etc/passwd, /etc/group,
   /etc/hostname) - no download at run time. More layers stack on top, each holding only what it
   adds, changes or deletes, like an image's layers. They live in an *image store*,
   ``/var/lib/labkit/images`` (``LABKIT_IMAGE_STORE``), which is a cache like Docker's
   /var/lib/docker/image: it is kept between runs, rebuilt when missing or corrupt, and is not a
   leftover (``labkit cleanup`` leaves it alone; `remove_image_store()` deletes it). A layer's
   directory is named by its content digest (``layers/sha256-<hex>``): changed content is a new
   directory, so a rebuild never replaces a layer a running overlay uses as its lowerdir, and
   `collect_layers()` removes only layers no overlay on the host references any more.
2. **A container layer** (writable): a per-container tmpfs under /run/labkit/work/labkit-NAME holding
   the overlay's ``upper`` and ``work`` directories. overlayfs merges upper + lower layers at
   ``rootfs``: reading finds the topmost copy of a file; writing copies the file up into ``upper``
   first (copy-on-write); deleting a lower file leaves a *whiteout*, a character device 0:0, in
   ``upper``. The lower layers are never written. Unmounting the tmpfs throws the container's
   changes away.
3. **pivot_root** inside the container's new mount namespace: make ``/`` private recursively (so
   nothing propagates back to the host), bind-mount the new root on itself (pivot_root needs a mount
   point), mount /proc, a minimal /dev and a read-only /sys inside it, pivot_root, then detach the old
   root. Unlike chroot, nothing of the host's tree is left reachable - `labkit.escape` shows the
   difference on the real kernel. Those steps live in labkit.pivot (here as rootfs.pivot_steps too).

Cleanup: the tmpfs and overlay mounts are named after the container's work directory
(kind "mount"); `find_leftovers` reads them from /proc/self/mountinfo, deepest first, so a sweep
unmounts them before labkit.cleanup removes the directory itself (kind "dir").
"""
from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections import namedtuple
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence

from . import cleanup, host, mountinfo, syscalls
from .binaries import find_busybox, is_static_executable
from .mountinfo import overlay_layers, read as read_mountinfo  # noqa: F401 - notebook 31 uses both
from .rootfsview import draw_stack  # noqa: F401 - the notebooks call rootfs.draw_stack
from .pivot import (bind_root, make_dev, make_paths_readonly, mask_paths, mount_proc,  # noqa: F401 - notebook 30
                    mount_sys, pivot, pivot_steps, populate_dev, remount_readonly)     # calls them as rootfs.*
from .errors import Conflict, InvalidValue, NotFound, Unsupported, from_oserror
from .interrupts import hold_interrupts

IMAGE_STORE = Path(os.environ.get("LABKIT_IMAGE_STORE", "/var/lib/labkit/images"))
LAYERS = IMAGE_STORE / "layers"
BASE = "busybox"
_LAYER_NAME = "^[a-z0-9][a-z0-9_.-]{0,63}$"
# Root filesystems this process has mounted or is mounting, by name (claims tell processes apart).
_NAMES_HERE: set[str] = set()
_NAMES_LOCK = threading.Lock()

# The files every root needs besides the binaries (what a distribution's base-files package ships).
_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "labkit\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/os-release": 'NAME="labkit busybox"\nID=labkit\nPRETTY_NAME="labkit busybox image"\n',
}
_DIRS = {"bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
         "proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777, "root": 0o700, "run": 0o755,
         "var/tmp": 0o1777, "home": 0o755}


# --- the image store: read-only layers ------------------------------------------------------------

class Layer(namedtuple("Layer", "name path")):
    """One read-only layer in the image store: a directory tree plus a manifest. `path` holds the
    layer's contents (what overlayfs gets as a lowerdir)."""
    __slots__ = ()

    @property
    def manifest(self) -> dict:
        return json.loads((self.path.parent / "layer.json").read_text())


class Image(namedtuple("Image", "name layers")):
    """Layers stacked bottom first, like `docker image inspect`'s RootFS.Layers."""
    __slots__ = ()

    def lowerdir(self) -> str:
        """overlayfs wants the TOP layer first in lowerdir=top:...:bottom."""
        return ":".join(str(layer.path) for layer in reversed(self.layers))


def _busybox_binary() -> Path:
    return Path(os.path.realpath(find_busybox()))


def _manifest_ok(layer_dir: Path) -> bool:
    """Cheap integrity check run before every use: the manifest exists and its sentinels match."""
    try:
        manifest = json.loads((layer_dir / "layer.json").read_text())
        for rel, size in manifest["sentinels"].items():
            st = os.lstat(layer_dir / "root" / rel)
            if size is not None and st.st_size != size:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _install(layer_dir: Path, fill: Callable[[Path], dict], meta: dict) -> None:
    """Build a layer in a temporary directory and rename it into place (atomic; races are harmless)."""
    import shutil
    LAYERS.mkdir(parents=True, exist_ok=True)
    tmp = LAYERS / f".{layer_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "root").mkdir(parents=True)
    try:
        sentinels = fill(tmp / "root")
        (tmp / "layer.json").write_text(json.dumps({**meta, "sentinels": sentinels}, indent=1))
        if layer_dir.exists():                # corrupt: move aside, then remove - unless in use
            if _used(layer_dir, mountinfo.lowerdirs_in_use()):
                raise Conflict(f"layer {layer_dir} is corrupt but a mounted overlay uses it: stop the "
                               "containers standing on it before it is rebuilt")
            old = LAYERS / f".{layer_dir.name}.old-{os.getpid()}"
            os.rename(layer_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, layer_dir)
        except OSError:                       # another process installed it first: use theirs
            if not _manifest_ok(layer_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fill_busybox(root: Path) -> dict:
    import shutil
    busybox = _busybox_binary()
    for rel, mode in _DIRS.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(root / rel, mode)
    shutil.copy2(busybox, root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    applets = os.popen(f"{busybox} --list-full").read().split()   # e.g. bin/sh, usr/bin/env
    for applet in applets:
        link = root / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(link):
            # Relative targets resolve the same inside the container and from the host.
            os.symlink(os.path.relpath(root / "bin/busybox", link.parent), link)
    tini = "/usr/bin/tini-static"   # Debian's `tini` package: the reaper Docker runs for --init
    if is_static_executable(tini):
        shutil.copy2(tini, root / "sbin/tini")
    for rel, text in _ETC.items():
        (root / rel).write_text(text)
    return {"bin/busybox": os.path.getsize(busybox), "bin/sh": None, "etc/passwd": None}


def _base_spec() -> tuple[dict, str]:
    """What the base layer is made of, and its digest, which names the layer's directory.

    Hashing busybox and tini costs more CPU than the rest of a container's start (6 ms), so the
    hashes are kept: in this process, and in the image store for the next process (a `labkit run`
    is a new one each time), keyed by each file's path, size and modification time - as git's
    index keeps file hashes by their stat. A new busybox package has a new mtime: a new digest."""
    busybox, tini = _busybox_binary(), "/usr/bin/tini-static"
    key = [_stat_key(busybox), _stat_key(tini)]
    kept = IMAGE_STORE / "base-layer-digest.json"
    if _BASE_SPEC.get("key") != key:
        try:
            found = json.loads(kept.read_text())
            if found["key"] == key:
                _BASE_SPEC.update(key=key, spec=found["spec"], digest=found["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if _BASE_SPEC.get("key") != key:
        import hashlib      # here: only building or naming a layer needs it (labkit-runtime never does)
        _BASE_SPEC.update(key=key, spec={
            "name": BASE, "built_from": str(busybox), "parent": None,
            "busybox_sha256": hashlib.sha256(busybox.read_bytes()).hexdigest(),
            "tini_sha256": hashlib.sha256(Path(tini).read_bytes()).hexdigest()
            if is_static_executable(tini) else None,
            "files": hashlib.sha256(json.dumps([_ETC, _DIRS], sort_keys=True).encode()).hexdigest()})
        _BASE_SPEC["digest"] = _digest({k: v for k, v in _BASE_SPEC["spec"].items() if k != "name"})
        try:                # whole or not at all: written aside, renamed into place
            IMAGE_STORE.mkdir(parents=True, exist_ok=True)
            partial = kept.with_name(f".{kept.name}.{os.getpid()}")
            partial.write_text(json.dumps(_BASE_SPEC))
            os.replace(partial, kept)
        except OSError:
            pass            # a read-only store: hash again next time
    return _BASE_SPEC["spec"], _BASE_SPEC["digest"]


def _stat_key(path: str | Path) -> list | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [str(path), st.st_size, st.st_mtime_ns]


_BASE_SPEC: dict = {}


def base_layer(rebuild: bool = False) -> Layer:
    """The busybox base layer; built from /bin/busybox the first time, or when missing/corrupt."""
    spec, digest = _base_spec()
    layer_dir = LAYERS / f"sha256-{digest}"
    if rebuild or not _manifest_ok(layer_dir):
        _install(layer_dir, _fill_busybox, {**spec, "digest": digest})
    return Layer(BASE, layer_dir / "root")


def _digest(meta: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def layer(name: str, files: Mapping[str, str | bytes] = {}, delete: Iterable[str] = (),
          modes: Mapping[str, int] = {}) -> Layer:
    """A layer holding `files` ({path: content}) and deleting `delete` from the layers below.

    A deletion is stored the way overlayfs (and an unpacked OCI image) stores it: a whiteout,
    a character device with device number 0:0, at the deleted path. The layer is cached in the
    image store and rebuilt only when its content changes.
    """
    import re
    if not re.match(_LAYER_NAME, name or "") or name == BASE:
        raise InvalidValue("layer name", name, f"lower-case letters, digits, '_.-' (not {BASE!r})")
    paths = [*files, *delete]
    for rel in paths:
        if not isinstance(rel, str) or ".." in Path(rel).parts or rel.strip("/") == "":
            raise InvalidValue("path in layer", rel, "a path inside the root without '..'")
    spec = json.dumps([sorted((k, v if isinstance(v, str) else v.hex()) for k, v in files.items()),
                       sorted(delete), sorted(modes.items())])
    import hashlib
    digest = hashlib.sha256(spec.encode()).hexdigest()

    def fill(root: Path) -> dict:
        for rel, content in files.items():
            target = root / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            (target.write_text if isinstance(content, str) else target.write_bytes)(content)
            os.chmod(target, modes.get(rel, 0o644))
        for rel in delete:
            target = root / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return {rel.lstrip("/"): None for rel in paths}

    return cached_layer(name, fill, {"name": name, "digest": digest})


def cached_layer(name: str, fill: Callable[[Path], dict], meta: dict) -> Layer:
    """The layer `name` of the image store, built by `fill(root)` (atomically, see _install) unless
    it is there already. Its directory is named by its content digest - `meta`'s "diff_id" (an OCI
    layer's sha256) or "digest", else a hash of `meta` - so other content is another directory."""
    digest = (meta.get("diff_id") or meta.get("digest")
              or _digest({k: v for k, v in meta.items() if k != "name"}))
    layer_dir = LAYERS / ("sha256-" + digest.split(":")[-1])
    if not _manifest_ok(layer_dir):
        _install(layer_dir, fill, meta)
    return Layer(name, layer_dir / "root")


def _used(layer_dir: Path, in_use: set[str]) -> bool:
    return any(lower == str(layer_dir) or lower.startswith(f"{layer_dir}/") for lower in in_use)


def collect_layers() -> list[Path]:
    """Remove the image store's layers that no overlay mounted on the host uses as a lowerdir (in
    any mount namespace, as the kernel lists them in /proc/PID/mountinfo); returns what went.
    Like `docker image prune`: a layer a running container stands on is never touched (a Layer
    returned earlier but not mounted yet is not a user: look it up again after a collection)."""
    import shutil
    in_use = mountinfo.lowerdirs_in_use()
    removed = []
    for layer_dir in sorted(LAYERS.iterdir()) if LAYERS.is_dir() else ():
        if layer_dir.name.startswith(".") or not layer_dir.is_dir():
            continue                          # a build in progress (see _install)
        if _used(layer_dir, in_use):
            continue
        old = LAYERS / f".{layer_dir.name}.collect-{os.getpid()}"
        os.rename(layer_dir, old)             # out of sight first: a lookup now rebuilds it
        shutil.rmtree(old, ignore_errors=True)
        removed.append(layer_dir)
    return removed


def image(ref: str | Image = BASE, layers: Sequence[Layer] = ()) -> Image:
    """The image `ref`: "busybox" is the base layer; extra `layers` stack on top (bottom first)."""
    if isinstance(ref, Image):
        return ref
    if ref != BASE:
        raise NotFound(f"image {ref!r}: labkit builds only {BASE!r} offline; stack more with "
                       f"image('{BASE}', layers=[layer('app', files={{...}})])")
    return Image(BASE if not layers else f"{BASE}+" + "+".join(l.name for l in layers),
                 (base_layer(), *layers))


def export(dest: str | os.PathLike, image_ref: str | Image = BASE) -> Path:
    """Flatten an image into a plain directory (like `docker export`), e.g. an OCI bundle's rootfs.

    Layers are copied bottom first; a whiteout in a layer deletes the path copied from below.
    """
    import shutil
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for lay in image(image_ref).layers:
        for dirpath, dirnames, filenames in os.walk(lay.path):
            rel = os.path.relpath(dirpath, lay.path)
            target_dir = dest / rel
            target_dir.mkdir(exist_ok=True)
            shutil.copystat(dirpath, target_dir)
            for entry in dirnames + filenames:
                src, dst = os.path.join(dirpath, entry), target_dir / entry
                st = os.lstat(src)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:      # whiteout: delete below
                    if dst.is_dir() and not dst.is_symlink():
                        shutil.rmtree(dst)
                    elif os.path.lexists(dst):
                        dst.unlink()
                elif stat.S_ISDIR(st.st_mode):
                    continue                                         # os.walk descends into it
                else:
                    if os.path.lexists(dst):
                        dst.unlink()
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(src), dst)
                    else:
                        shutil.copy2(src, dst)
    return dest


def remove_image_store() -> None:
    """Delete the cached image store (it is rebuilt on next use)."""
    import shutil
    shutil.rmtree(IMAGE_STORE, ignore_errors=True)


# --- a container's root: overlay over the layers, writable layer on tmpfs -------------------------

class RootFS:
    """The root filesystem of one container, mounted on the host like Docker's overlay2 `merged`.

        /run/labkit/work/labkit-NAME/      tmpfs (the container's writable layer lives in memory)
            upper/    what the container changed (copy-up), added, or deleted (whiteouts)
            work/     overlayfs's scratch space
            rootfs/   the merged view: upper over the image's layers - the container's /

    With `bind=PATH` (an OCI bundle's root.path) the directory is used as it is, like runc does.
    The work directory's name doubles as the container's name lock: two at once -> Conflict.
    """

    def __init__(self, image_ref: str | Image | None = BASE, *, name: str | None = None,
                 bind: str | os.PathLike | None = None, readonly: bool = False, size: str = "64m",
                 unique: bool = False):
        self._random_name = not name or unique    # unique: the caller made `name` with unique_name
        self.name = cleanup.checked_name(name) if name else cleanup.unique_name("rootfs")
        self.image = None if bind is not None else image(image_ref or BASE)
        self.bind = Path(bind).resolve() if bind is not None else None
        if self.bind is not None and not self.bind.is_dir():
            raise InvalidValue("root path", str(bind), "an existing directory")
        self.readonly = readonly
        self.size = size
        self.dir = cleanup.WORK_DIR / self.name
        self.upper, self.work = self.dir / "upper", self.dir / "work"
        self.merged = self.dir / "rootfs"
        self.mounted = False

    @property
    def path(self) -> Path:
        """The directory that becomes the container's /."""
        return self.bind if self.bind is not None else self.merged

    def mount(self) -> "RootFS":
        """Claim, make and mount the container's root as one step: a Ctrl-C in the middle is held
        until the end, and then the mount is undone (labkit.interrupts). Unheld, one landing right
        after mkdir left a work directory that no record owned."""
        try:
            with hold_interrupts():
                self._mount()
        except KeyboardInterrupt:
            if self.mounted:            # (the Ctrl-C was held: everything was made, now taken down)
                with hold_interrupts():
                    self.unmount()
            raise
        return self

    def _mount(self) -> None:
        host.require_lab_host("mount a container root filesystem")
        cleanup.WORK_DIR.mkdir(parents=True, exist_ok=True)
        taken = Conflict(f"a container named {self.name!r} exists already ({self.dir}); "
                         "choose another name or delete it")
        with _NAMES_LOCK:               # two threads of this process: their claims would both be ours
            if self.name in _NAMES_HERE:
                raise taken
            _NAMES_HERE.add(self.name)
        # Claim first, a chosen name too: a claim is exclusive (of two processes at once with the same
        # name, one gets Conflict, and its clean-up leaves the other's records alone), and a sweep
        # running right now never sees the directory without an owner.
        try:
            cleanup.claim("dir", self.name)
            cleanup.claim("mount", self.name)
            os.mkdir(self.dir, 0o700)   # atomic: a leftover of a dead owner, or a creator that did not claim
        except (Conflict, FileExistsError):
            self._release_claims()
            raise taken from None
        except BaseException:
            self._release_claims()
            raise
        try:
            syscalls.mount("tmpfs", str(self.dir), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                           f"mode=0700,size={self.size}")
            self.mounted = True
            if self.image is not None:
                for d in (self.upper, self.work, self.merged):
                    d.mkdir()
                options = f"lowerdir={self.image.lowerdir()},upperdir={self.upper},workdir={self.work}"
                syscalls.mount("overlay", str(self.merged), "overlay",
                               syscalls.MS_RDONLY if self.readonly else 0, options)
        except OSError as exc:
            self.unmount()
            raise from_oserror(exc, "mount root filesystem", str(self.merged)) from None
        except BaseException:
            self.unmount()
            raise

    def unmount(self) -> None:
        """Unmount overlay and tmpfs (the container's changes vanish), remove the directory.

        One lazy unmount (MNT_DETACH) of the tmpfs takes the overlay below it along: it disappears
        from the mount table at once, and the kernel frees it when the last user (a container's
        mount namespace that is still being torn down) lets go. Since Linux 6.15 a lazy unmount
        also skips the RCU grace period a plain umount waits for - the slowest step of a delete.
        """
        try:
            syscalls.umount2(str(self.dir), syscalls.MNT_DETACH)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):   # EINVAL: not a mount point (any more)
                raise
        self.mounted = False
        try:
            os.rmdir(self.dir)
        except FileNotFoundError:
            pass
        except OSError:
            import shutil
            shutil.rmtree(self.dir, ignore_errors=True)
        self._release_claims()

    def _release_claims(self) -> None:
        cleanup.release("mount", self.name)
        cleanup.release("dir", self.name)
        with _NAMES_LOCK:
            _NAMES_HERE.discard(self.name)

    def __enter__(self) -> "RootFS":
        return self.mount() if not self.mounted else self

    def __exit__(self, *exc) -> None:
        self.unmount()

    def changes(self) -> list[tuple[str, str]]:
        """What the container changed, like `docker diff`: (A)dded, (C)hanged, (D)eleted paths."""
        if self.image is None:
            raise Unsupported("changes() needs an overlay root (this one is a bind mount)")
        result = []
        for dirpath, dirnames, filenames in os.walk(self.upper):
            for entry in sorted(dirnames + filenames):
                full = os.path.join(dirpath, entry)
                rel = "/" + os.path.relpath(full, self.upper)
                st = os.lstat(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    result.append(("D", rel))
                elif any(os.path.lexists(str(layer.path) + rel) for layer in self.image.layers):
                    result.append(("C", rel))
                else:
                    result.append(("A", rel))
        return sorted(result, key=lambda item: item[1])

    def mounts(self) -> list[dict]:
        """This root's mounts as the kernel lists them in /proc/self/mountinfo."""
        return [m for m in read_mountinfo() if m["mountpoint"] in (str(self.dir), str(self.merged))]

    def __repr__(self) -> str:
        what = self.image.name if self.image else str(self.bind)
        return f"<RootFS {self.name} {what} {'mounted' if self.mounted else 'unmounted'}>"


# --- cleanup hooks ------------------------------------------------------------------------------

def find_leftovers():
    """Every mount under /run/labkit/work/labkit-*, deepest first (so unmounting works in order)."""
    prefix = str(cleanup.WORK_DIR) + "/" + cleanup.PREFIX
    found = []
    try:
        mounts = read_mountinfo()
    except OSError:
        return
    for m in mounts:
        if m["mountpoint"].startswith(prefix):
            name = m["mountpoint"][len(str(cleanup.WORK_DIR)) + 1:].split("/")[0]
            found.append(cleanup.leftover("mount", name, m["mountpoint"], fstype=m["fstype"]))
    yield from sorted(found, key=lambda item: -len(item.where))


def remove_leftover(item) -> None:
    if item.kind != "mount":
        return
    try:
        syscalls.umount2(item.where, syscalls.MNT_DETACH)
    except OSError:
        pass
    if not any(m["mountpoint"].startswith(str(cleanup.WORK_DIR / item.name)) for m in read_mountinfo()):
        cleanup.release("mount", item.name)

