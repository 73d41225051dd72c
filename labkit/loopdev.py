"""Loop devices: a file the kernel presents as a block device (chapter 2's I/O disk), made so that
none can outlive its owner.

Every loop device labkit attaches carries the AUTOCLEAR flag and stays open in its owner: the kernel
detaches an autoclear device when its last opener closes it, so a killed owner's device goes by
itself (a mount on it holds it until unmounted; then it goes too). The sweep below finds the rest.

Loop devices are NOT namespaced: every container on a kernel sees the same /sys/block/loop*, and a
learner in a privileged container could detach another learner's device. So a device counts as
labkit's here only if its backing file is one this machine's (or this container's) labkit made: in
its work directory, named labkit-..., and the very same file (device and inode, as the kernel holds
them) - a look-alike path in another learner's container is a different inode and is never touched.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import cleanup, mountinfo
from .errors import NotFound

SYS_BLOCK = Path("/sys/block")
LOOP_CONTROL = "/dev/loop-control"
LOOP_MAJOR = 7

# <linux/loop.h>
LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64, LOOP_GET_STATUS64 = 0x4C00, 0x4C01, 0x4C04, 0x4C05
LOOP_CONFIGURE = 0x4C0A                     # 5.8+: attach and set flags in one step
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE, LO_KEY_SIZE = 64, 32


class LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
                ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
                ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE), ("lo_init", ctypes.c_uint64 * 2)]


class LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32), ("info", LoopInfo64),
                ("reserved", ctypes.c_uint64 * 8)]


@dataclass
class LoopDevice:
    path: str          # /dev/loopN
    backing: str
    fd: int            # held open: when it closes (or its owner dies), autoclear detaches the device

    @property
    def number(self) -> str:
        """MAJOR:MINOR, as cgroup files name the device."""
        rdev = os.fstat(self.fd).st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"


def _device_fd(index: int) -> int:
    path = f"/dev/loop{index}"
    if not os.path.exists(path):
        # A container's /dev is a plain tmpfs: the kernel cannot add the node there. Make it.
        os.mknod(path, 0o660 | 0o060000, os.makedev(LOOP_MAJOR, index))
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def _attach_fd(dev_fd: int, file_fd: int) -> None:
    config = LoopConfig(fd=file_fd)
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR
    try:
        fcntl.ioctl(dev_fd, LOOP_CONFIGURE, config)
        return
    except OSError as exc:
        if exc.errno not in (25, 22):      # ENOTTY/EINVAL: a kernel before 5.8 - two steps
            raise
    fcntl.ioctl(dev_fd, LOOP_SET_FD, file_fd)
    info = LoopInfo64()
    fcntl.ioctl(dev_fd, LOOP_GET_STATUS64, info)
    info.lo_flags |= LO_FLAGS_AUTOCLEAR
    fcntl.ioctl(dev_fd, LOOP_SET_STATUS64, info)


@contextlib.contextmanager
def attached(backing: str | os.PathLike) -> Iterator[LoopDevice]:
    """A loop device over `backing` (a file named labkit-...), with AUTOCLEAR, for the `with` block."""
    backing = os.path.abspath(backing)
    name = os.path.basename(backing)
    if not name.startswith(cleanup.PREFIX):
        raise ValueError(f"backing file {backing}: its name must start with {cleanup.PREFIX!r}")
    cleanup.claim("loop", name)
    file_fd = os.open(backing, os.O_RDWR | os.O_CLOEXEC)
    dev_fd = None
    try:
        with open(LOOP_CONTROL, "rb", buffering=0) as control:
            for _ in range(8):               # another process may take the free one first: next
                index = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                dev_fd = _device_fd(index)
                try:
                    _attach_fd(dev_fd, file_fd)
                    break
                except OSError as exc:
                    os.close(dev_fd)
                    dev_fd = None
                    if exc.errno != 16:      # EBUSY: raced
                        raise
            else:
                raise OSError(16, "no free loop device after 8 tries")
        yield LoopDevice(f"/dev/loop{index}", backing, dev_fd)
    finally:
        if dev_fd is not None:
            os.close(dev_fd)                 # the last close: autoclear detaches it
        os.close(file_fd)
        cleanup.release("loop", name)


# --- what the kernel has attached ----------------------------------------------------------------

def attached_devices() -> list[dict]:
    """Every attached loop device on this kernel: name, backing file (as sysfs shows it), autoclear."""
    found = []
    for entry in sorted(SYS_BLOCK.glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
            autoclear = (entry / "loop" / "autoclear").read_text().strip() == "1"
        except OSError:
            continue                          # not attached
        found.append({"name": entry.name, "backing": backing, "autoclear": autoclear})
    return found


def node_report(dev: str = "/dev") -> dict:
    """Loop device nodes in /dev: how many, how many free (not attached), and whether the kernel
    adds nodes by itself (devtmpfs) - inside a container it does not, so the free nodes are all."""
    attached_names = {d["name"] for d in attached_devices()}
    nodes = sorted(p.name for p in Path(dev).glob("loop[0-9]*"))
    dev_fs = next((m["fstype"] for m in mountinfo.read() if m["mountpoint"] == dev), "")
    return {"nodes": len(nodes), "free": len([n for n in nodes if n not in attached_names]),
            "control": os.path.exists(os.path.join(dev, "loop-control")),
            "auto_nodes": dev_fs == "devtmpfs"}


def kernel_file(index: str) -> tuple[int, int] | None:
    """(device, inode) of the file loop device `index` reads, as the kernel holds them."""
    try:
        fd = os.open(f"/dev/{index}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = LoopInfo64()
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        return info.lo_device, info.lo_inode
    except OSError:
        return None
    finally:
        os.close(fd)


def _ours(backing: str) -> str | None:
    """The labkit name a backing file belongs to, if it lies in labkit's work directory here."""
    path = Path(backing)
    try:
        rel = path.relative_to(cleanup.WORK_DIR)
    except ValueError:
        return None
    top = rel.parts[0] if rel.parts else ""
    return top if top.startswith(cleanup.PREFIX) and path.name.startswith(cleanup.PREFIX) else None


def _same_file(backing: str, held: tuple[int, int] | None) -> bool:
    """The file at `backing` here is the one the kernel reads (lo_device uses st_dev's encoding)."""
    try:
        st = os.stat(backing)
    except OSError:
        return False
    return held is not None and (st.st_dev, st.st_ino) == held


def find_leftovers():
    for dev in attached_devices():
        name = _ours(dev["backing"])
        if name is None or not _same_file(dev["backing"], kernel_file(dev["name"])):
            continue                          # not from this labkit (another learner's, or none)
        # Its owner: whoever claimed the loop device (attached()), else the work directory's owner
        # (`mount -o loop` of a file in it, notebook 14).
        file_name = os.path.basename(dev["backing"])
        pid, alive = cleanup.owner("loop", file_name)
        if pid is None:
            pid, alive = cleanup.owner("dir", name)
        yield cleanup.Leftover("loop", file_name, f"/dev/{dev['name']}", pid, alive,
                               {"backing": dev["backing"], "autoclear": dev["autoclear"]})


def remove_leftover(item) -> None:
    try:
        fd = os.open(item.where, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{item.where} is gone") from None
    try:
        # Busy (still mounted): the kernel turns this into autoclear, and the device goes at umount.
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
    except OSError as exc:
        if exc.errno == 6:                    # ENXIO: already detached
            raise NotFound(f"{item.where} is not attached") from None
        raise
    finally:
        os.close(fd)
    cleanup.release("loop", item.name)
