"""Rootless: an ordinary user starts a "root" process in a user namespace of its own.

Everything else in labkit runs as real root. Here the starting point is the unprivileged user
`labkit-learner` (made by vagrant/provision.sh), and the steps are those of rootless Docker and
Podman:

    labkit (root) --fork--> helper: becomes labkit-learner (no capabilities any more)
                            fork --> child: unshare(CLONE_NEWUSER | CLONE_NEWNS) - allowed to anyone;
                                     waits until its maps are written
                            newuidmap CHILD 0 UID 1  1 SUBUID 65536     (setuid-root helpers from the
                            newgidmap CHILD 0 GID 1  1 SUBGID 65536      uidmap package: they write
                                                                          the maps after checking
                                                                          /etc/subuid and /etc/subgid)
                            "mapped" --> child: execs the command, uid 0 inside

An unprivileged process may write only a one-line map of its own id ("0 UID 1"); newuidmap, being
setuid root, may write more lines, but only ranges that /etc/subuid gives to the calling user. So
inside, root is the learner's own uid and ids 1..65536 are the learner's subordinate ids; outside,
every one of them is an ordinary uid without any privilege over the host.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import struct
import subprocess
import warnings
from dataclasses import dataclass
from typing import Sequence

from . import host, syscalls
from .errors import LabkitError, NotFound, Unsupported
from .namespaces import DEVNULL, PIPE, Process, Result, close_fds_except, finish, read_exact
from .syscalls import PR_SET_DUMPABLE

LEARNER = "labkit-learner"


@dataclass(frozen=True)
class Learner:
    name: str
    uid: int
    gid: int
    subuid: tuple[int, int]     # (first, count) from /etc/subuid
    subgid: tuple[int, int]

    @property
    def uid_map(self) -> str:
        return f"0 {self.uid} 1\n1 {self.subuid[0]} {self.subuid[1]}"

    @property
    def gid_map(self) -> str:
        return f"0 {self.gid} 1\n1 {self.subgid[0]} {self.subgid[1]}"


def subordinate_range(user: str, path: str) -> tuple[int, int]:
    """(first, count) of `user`'s line NAME:FIRST:COUNT in /etc/subuid or /etc/subgid."""
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.strip().partition(":")
                if name == user:
                    first, count = rest.split(":")
                    return int(first), int(count)
    except FileNotFoundError:
        pass
    raise NotFound(f"{user} has no subordinate id range in {path}; vagrant/provision.sh adds one")


def learner(name: str = LEARNER) -> Learner:
    """The unprivileged lab user and its subordinate ids (refuses clearly if provisioning did not run)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise NotFound(f"no user {name!r} on this machine: vagrant/provision.sh creates it "
                       "(run `make lab` or the provisioning again)") from None
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            raise Unsupported(f"{tool} is missing: install the package uidmap (vagrant/packages.txt)")
    return Learner(name, entry.pw_uid, entry.pw_gid, subordinate_range(name, "/etc/subuid"),
                   subordinate_range(name, "/etc/subgid"))


def spawn(argv: Sequence[str], *, user: str = LEARNER, mount_ns: bool = True, cgroup=None,
          stdout=None, stderr=None) -> Process:
    """Start `argv` as `user`, in a new user namespace (and mount namespace) that `user` creates and
    maps with newuidmap/newgidmap. Returns a Process whose pid is the command's (uid 0 inside).

    cgroup  placed in it before the user switch (a cgroup is root's to hand out), like any container
    """
    who = learner(user)
    argv = [str(a) for a in argv]
    host.require_lab_host("start a rootless process")
    newuidmap, newgidmap = shutil.which("newuidmap"), shutil.which("newgidmap")
    out_r = err_r = None
    child_stdio = {}
    for target, spec in ((1, stdout), (2, stderr)):
        if spec == PIPE:
            r, w = os.pipe()
            child_stdio[target] = w
            if target == 1:
                out_r = r
            else:
                err_r = r
        elif spec == DEVNULL:
            child_stdio[target] = os.open(os.devnull, os.O_WRONLY)
    report_r, report_w = os.pipe()    # helper -> labkit: the command's pid, or why it failed
    ack_r, ack_w = os.pipe()          # labkit -> helper: "I hold a pidfd on it: release it"

    with warnings.catch_warnings():   # fork in a threaded notebook: the children only make syscalls
        warnings.simplefilter("ignore", DeprecationWarning)
        helper = os.fork()
    if helper == 0:  # ---------------------------------------------------------------- the helper
        try:
            close_fds_except({report_w, ack_r, *child_stdio.values()})   # other threads' pipes among them
            if cgroup is not None:
                cgroup.add(os.getpid())            # its children are born inside
            os.setgroups([])
            os.setresgid(who.gid, who.gid, who.gid)
            os.setresuid(who.uid, who.uid, who.uid)   # from here on: an ordinary user
            # Changing uid made us non-dumpable, which makes /proc/PID root's: newuidmap then refuses
            # to map "a process of another user". Dumpable again, as the learner's own login would be.
            syscalls.prctl(PR_SET_DUMPABLE, 1)
            _run_helper(who, argv, report_w, ack_r, child_stdio, mount_ns, newuidmap, newgidmap)
        except BaseException as exc:  # noqa: BLE001 - never return into the caller's code
            try:
                os.write(report_w, f"E{type(exc).__name__}: {exc}".encode())
            except BaseException:
                pass
            os._exit(127)
    # ------------------------------------------------------------------------------------ labkit
    os.close(report_w)
    os.close(ack_r)
    for fd in child_stdio.values():
        os.close(fd)
    try:
        report = read_exact(report_r, 5)         # raw bytes: "P" and the pid, or "E" and why
        pidfd = None
        if report[:1] == b"P" and len(report) == 5:
            pid = struct.unpack("i", report[1:5])[0]
            # the command still waits to be released, so this pidfd names it and nothing else
            pidfd = os.pidfd_open(pid)
            os.write(ack_w, b"1")
        else:
            while chunk := os.read(report_r, 4096):
                report += chunk
    finally:
        os.close(report_r)
        os.close(ack_w)
    if pidfd is None:
        os.waitpid(helper, 0)
        for fd in (out_r, err_r):
            if fd is not None:
                os.close(fd)
        raise LabkitError(f"rootless start of {argv[0]!r} as {user} failed: "
                          f"{report[1:].decode(errors='replace') or 'the helper died'}")
    return Process(argv, pid, helper, None,
                   os.fdopen(out_r, "rb", buffering=0) if out_r is not None else None,
                   os.fdopen(err_r, "rb", buffering=0) if err_r is not None else None, pidfd=pidfd)


def _run_helper(who: Learner, argv, report_w, ack_r, child_stdio, mount_ns, newuidmap, newgidmap) -> None:
    """In the helper (already the learner): fork the child, map it, report its pid, release it once
    labkit holds a pidfd on it, wait for it."""
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # ------------------------------------------------------------------ the child
        status = 127
        try:
            for fd in (go_w, ready_r, report_w, ack_r):
                os.close(fd)
            flags = syscalls.CLONE_NEWUSER | (syscalls.CLONE_NEWNS if mount_ns else 0)
            syscalls.unshare(flags)
            os.write(ready_w, b"U")
            os.close(ready_w)
            if read_exact(go_r, 1) != b"1":
                os._exit(status)
            if mount_ns:   # mounts made inside stay inside
                syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            for target, fd in child_stdio.items():
                os.dup2(fd, target)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(argv[0], argv)
        except BaseException as exc:  # noqa: BLE001
            try:
                os.write(2, f"rootless child: {exc}\n".encode())
            except BaseException:
                pass
        os._exit(status)
    os.close(ready_w)
    os.close(go_r)
    for fd in child_stdio.values():
        os.close(fd)
    try:
        if read_exact(ready_r, 1) != b"U":
            raise LabkitError("the child could not create its user namespace")
        for tool, lines in ((newuidmap, who.uid_map), (newgidmap, who.gid_map)):
            args = [tool, str(child)] + " ".join(lines.splitlines()).split()
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode:
                raise LabkitError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
        os.write(report_w, b"P" + struct.pack("i", child))
        if read_exact(ack_r, 1) != b"1":
            raise LabkitError("labkit did not take the child's pid")
        os.write(go_w, b"1")
    except BaseException:
        os.kill(child, signal.SIGKILL)
        raise
    os.close(go_w)
    os.close(report_w)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):   # die of the same signal: labkit's Process then says -SIGNAL, as spawn's
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def run(argv: Sequence[str], *, timeout: float = 30, **options) -> Result:
    """Run `argv` rootless (see `spawn`), wait for it, return its output and exit status."""
    return finish(spawn(argv, stdout=PIPE, stderr=PIPE, **options), None, timeout)


class Delegation:
    """A cgroup-v2 subtree handed to the learner, as systemd's Delegate=yes hands one to a user's
    session (Documentation/admin-guide/cgroup-v2.rst, "Delegation"):

        G/                     chown'd to the learner, with cgroup.procs, cgroup.subtree_control and
                               cgroup.threads - but NOT memory.max & co: the limits root gave G stay
        G/cgroup.subtree_control = +memory (+pids)   enabled by root while G is still empty
        G/leaf/                where the learner's first process is put (v2 allows processes only in
                               leaves of a cgroup whose controllers are handed down)

    The learner may then create cgroups under G, set their limits and move its own processes among
    them - never raise G's own limits, nor move anything out of G. cgroup v1 has no such thing: its
    files have no notion of a delegated subtree, so `Delegation` refuses v1 by name.
    """

    FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")

    def __init__(self, group, who: Learner):
        from .cgroups import backend_name

        if backend_name() != "v2":
            raise Unsupported("cgroup delegation to a user needs cgroup v2 (this host's controllers are "
                              "on v1, which has no safe delegation)")
        self.dir = group.path("memory")
        self.leaf = os.path.join(self.dir, "leaf")
        with open(os.path.join(self.dir, "cgroup.controllers")) as f:
            offered = [c for c in ("memory", "pids") if c in f.read().split()]
        syscalls.write_file(os.path.join(self.dir, "cgroup.subtree_control"),
                            " ".join(f"+{c}" for c in offered))
        os.mkdir(self.leaf)
        for path in (self.dir, *(os.path.join(self.dir, n) for n in self.FILES),
                     self.leaf, *(os.path.join(self.leaf, n) for n in self.FILES)):
            os.chown(path, who.uid, who.gid)

    def add(self, pid: int) -> None:
        """Put `pid` into the delegated subtree's leaf (what rootless.spawn(cgroup=...) calls)."""
        syscalls.write_file(os.path.join(self.leaf, "cgroup.procs"), str(pid))
