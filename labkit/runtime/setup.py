"""The container's own process, step by step: config.json turned into setup steps for namespaces.spawn.

spawn forks, unshares, places the process in its cgroup, makes / private and sets the hostname; then
it runs these steps in the new process, in this order, and execs:

    mounts      every entry of config.json's `mounts`, under the rootfs, in order (bind, proc, tmpfs,
                devpts, sysfs, mqueue, cgroup ...), then the default device nodes in /dev
    pivot_root  into the rootfs; the old root detached (labkit.pivot.pivot)
    sysctl      linux.sysctl, written to /proc/sys of the container's own namespaces
    paths       linux.maskedPaths, linux.readonlyPaths, root.readonly (labkit.pivot)
    console     with process.terminal: a pty from the container's own devpts; its master travels to
                the caller over --console-socket (SCM_RIGHTS), its slave becomes stdin/out/err
    process     oomScoreAdj, umask, rlimits, AppArmor profile, noNewPrivileges, the capability
                bounding set (labkit.capabilities), seccomp (labkit.runtime.seccomp), then the user
    check       the program must exist, or create fails now (as `runc create` does), not after start

Each step runs in a forked copy of the runtime: syscalls only, nothing imported there.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from functools import partial

from .. import capabilities, mountinfo, pivot, syscalls
from ..errors import InvalidValue, NotFound, Unsupported
from ..syscalls import PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_SET_NO_NEW_PRIVS

# mount(8) options that are flags: name -> (flag, set?)
FLAGS = {"ro": (syscalls.MS_RDONLY, True), "rw": (syscalls.MS_RDONLY, False),
         "nosuid": (syscalls.MS_NOSUID, True), "suid": (syscalls.MS_NOSUID, False),
         "nodev": (syscalls.MS_NODEV, True), "dev": (syscalls.MS_NODEV, False),
         "noexec": (syscalls.MS_NOEXEC, True), "exec": (syscalls.MS_NOEXEC, False),
         "sync": (16, True), "async": (16, False), "mand": (64, True), "nomand": (64, False),
         "dirsync": (128, True), "noatime": (1024, True), "atime": (1024, False),
         "nodiratime": (2048, True), "diratime": (2048, False), "relatime": (1 << 21, True),
         "norelatime": (1 << 21, False), "strictatime": (1 << 24, True), "nostrictatime": (1 << 24, False),
         "bind": (syscalls.MS_BIND, True), "rbind": (syscalls.MS_BIND | syscalls.MS_REC, True)}
PROPAGATION = {"private": syscalls.MS_PRIVATE, "shared": syscalls.MS_SHARED, "slave": syscalls.MS_SLAVE,
               "unbindable": syscalls.MS_UNBINDABLE}
PROPAGATION.update({"r" + k: v | syscalls.MS_REC for k, v in list(PROPAGATION.items())})
_REMOUNTABLE = syscalls.MS_RDONLY | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC | 1024 | 2048

TIOCSPTLCK, TIOCGPTN, TIOCSCTTY, TIOCSWINSZ = 0x40045431, 0x80045430, 0x540E, 0x5414


def explained(steps: list) -> list:
    """The same steps, each naming itself when it fails ("_mount_fs_inside /dev/mqueue: Operation not
    permitted"), so that a refusal from the kernel says which part of config.json caused it."""
    def wrap(step):
        func = getattr(step, "func", step)
        args = [a for a in getattr(step, "args", ()) if isinstance(a, (str, int))][1:3]
        label = " ".join([getattr(func, "__name__", "step").strip("_"), *map(str, args)])

        def run():
            try:
                step()
            except OSError as exc:
                raise OSError(exc.errno, f"{label}: {exc.strerror or exc}") from None
        return run
    return [wrap(s) for s in steps]


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """mount options -> (flags, propagation flags, data string for the filesystem)."""
    flags, propagation, data = 0, 0, []
    for option in options:
        if option in FLAGS:
            bit, on = FLAGS[option]
            flags = flags | bit if on else flags & ~bit
        elif option in PROPAGATION:
            propagation |= PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, ",".join(data)


def inside(root: str, path: str) -> str:
    """`path` inside `root` with symlinks resolved as the container would see them: an absolute link
    starts again at `root`, and '..' never climbs above it (what runc's securejoin does)."""
    parts = [p for p in path.split("/") if p and p != "."]
    current, links = root, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = f"{current}/{part}"
        if os.path.islink(candidate):
            links += 1
            if links > 40:
                raise InvalidValue("mount destination", path, "a path without a symlink loop")
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            current = root if target.startswith("/") else current
            continue
        current = candidate
    return current


def _make_target(target: str, directory: bool) -> None:
    if directory:
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _mount_bind(source: str, target: str, flags: int, propagation: int) -> None:
    _make_target(target, os.path.isdir(source))
    syscalls.mount(source, target, None, flags & (syscalls.MS_BIND | syscalls.MS_REC))
    if flags & _REMOUNTABLE:      # a bind mount takes its flags only on a remount
        syscalls.mount(None, target, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | (flags & _REMOUNTABLE))
    if propagation:
        syscalls.mount(None, target, None, propagation)


def _mount_fs(kind: str, source: str, target: str, flags: int, propagation: int, data: str) -> None:
    _make_target(target, True)
    syscalls.mount(source, target, kind, flags, data or None)
    if propagation:
        syscalls.mount(None, target, None, propagation)


def _mount_cgroup_v1(target: str, flags: int, hierarchies: list[tuple[str, str]], relpath: str) -> None:
    """/sys/fs/cgroup as runc makes it without a cgroup namespace: a tmpfs holding, for each v1
    hierarchy, a bind mount of the container's own cgroup directory (so /sys/fs/cgroup/memory shows
    the container's limits, not the host's tree)."""
    _make_target(target, True)
    syscalls.mount("tmpfs", target, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
                   "mode=755")
    for name, mountpoint in hierarchies:
        own = f"{mountpoint}/{relpath}"
        if not os.path.isdir(own):
            continue
        os.mkdir(f"{target}/{name}")
        _mount_bind(own, f"{target}/{name}", syscalls.MS_BIND | (flags & _REMOUNTABLE), 0)
        for alias in name.split(","):        # cpu -> cpu,cpuacct as on the host
            if alias != name and not os.path.lexists(f"{target}/{alias}"):
                os.symlink(name, f"{target}/{alias}")
    if flags & syscalls.MS_RDONLY:
        syscalls.mount(None, target, None, syscalls.MS_REMOUNT | (flags & _REMOUNTABLE))


def _v1_hierarchies() -> list[tuple[str, str]]:
    """(directory name, mountpoint) of every v1 hierarchy with controllers, from mountinfo."""
    found = []
    for m in mountinfo.read():
        if m["fstype"] == "cgroup" and m["mountpoint"].startswith("/sys/fs/cgroup/"):
            found.append((os.path.basename(m["mountpoint"]), m["mountpoint"]))
    return found


def mount_steps(spec, cgroup_relpath: str, cgroup_version: str) -> list:
    """Steps that build the container's filesystem tree under its rootfs, then pivot_root into it."""
    root = str(spec.root)
    steps = [partial(pivot.bind_root, root)]
    hierarchies = _v1_hierarchies() if cgroup_version == "v1" else []
    for m in spec.mounts:
        flags, propagation, data = parse_options(m.options)
        if m.type == "bind" or flags & syscalls.MS_BIND:
            if not os.path.exists(m.source):
                raise NotFound(f"mounts: source {m.source!r} of {m.destination} does not exist")
            steps.append(partial(_mount_bind_inside, root, m.destination, m.source, flags | syscalls.MS_BIND,
                                 propagation))
        elif m.type == "cgroup":
            if cgroup_version == "v1":
                steps.append(partial(_inside_then, root, m.destination, _mount_cgroup_v1, flags,
                                     hierarchies, cgroup_relpath))
            elif "cgroup" in spec.namespaces:
                steps.append(partial(_mount_fs_inside, root, m.destination, "cgroup2", "cgroup2", flags,
                                     propagation, ""))
            else:
                steps.append(partial(_mount_bind_inside, root, m.destination,
                                     f"/sys/fs/cgroup/{cgroup_relpath}", flags | syscalls.MS_BIND, 0))
        else:
            steps.append(partial(_mount_fs_inside, root, m.destination, m.type, m.source, flags,
                                 propagation, data))
    if any(m.destination == "/dev" for m in spec.mounts):
        steps.append(partial(pivot.populate_dev, f"{root}/dev"))
    steps.append(partial(pivot.pivot, root))
    return steps


def _mount_bind_inside(root, destination, source, flags, propagation):
    _mount_bind(source, inside(root, destination), flags, propagation)


def _mount_fs_inside(root, destination, kind, source, flags, propagation, data):
    _mount_fs(kind, source, inside(root, destination), flags, propagation, data)


def _inside_then(root, destination, function, *args):
    function(inside(root, destination), *args)


def _write_sysctls(values: dict) -> None:
    for key, value in values.items():
        syscalls.write_file("/proc/sys/" + key.replace(".", "/"), value)


def path_steps(spec) -> list:
    """After pivot_root: sysctls, masked and read-only paths, a read-only root."""
    steps = []
    if spec.sysctl:
        steps.append(partial(_write_sysctls, dict(spec.sysctl)))
    if spec.masked_paths:
        steps.append(partial(pivot.mask_paths, list(spec.masked_paths)))
    if spec.readonly_paths:
        steps.append(partial(pivot.make_paths_readonly, list(spec.readonly_paths)))
    if spec.readonly:
        steps.append(pivot.remount_readonly)
    return steps


def console_step(console_socket: int, size: tuple[int, int] | None):
    """A pty made from the container's own /dev/ptmx (so `tty` inside names /dev/pts/0); the master
    goes to whoever listens on --console-socket, the slave becomes the controlling terminal."""

    import socket                       # here, in the caller: the step itself imports nothing

    def step() -> None:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))               # unlockpt
        number = struct.unpack("i", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        name = f"/dev/pts/{number}"
        slave = os.open(name, os.O_RDWR | os.O_NOCTTY)
        if size:
            fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        with socket.socket(fileno=console_socket) as sock:
            socket.send_fds(sock, [name.encode()], [master])
        os.close(master)
        os.setsid()
        fcntl.ioctl(slave, TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        if slave > 2:
            os.close(slave)
    return step


def connect_console(path: str) -> int:
    """Connect to the caller's --console-socket; the fd is handed to the container's process."""
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise NotFound(f"--console-socket {path}: {exc.strerror}") from None
    return sock.detach()


def process_steps(proc, *, seccomp=None) -> list:
    """Setup steps from process.*: the last ones before the program runs."""
    steps = []
    if proc.oom_score_adj is not None:
        steps.append(partial(syscalls.write_file, "/proc/self/oom_score_adj", str(proc.oom_score_adj)))
    if proc.umask is not None:
        steps.append(partial(os.umask, proc.umask))
    if proc.rlimits:
        import resource
        steps.append(lambda: [resource.setrlimit(k, v) for k, v in proc.rlimits.items()])
    if proc.apparmor:
        steps.append(partial(_apparmor, proc.apparmor))
    if proc.no_new_privileges:
        steps.append(partial(syscalls.prctl, PR_SET_NO_NEW_PRIVS, 1))
    keep = capabilities.DOCKER_DEFAULT if proc.capabilities is None else proc.capabilities
    steps.append(capabilities.drop_step(keep))          # needs CAP_SETPCAP: before the user switch
    if proc.inheritable or proc.ambient:
        steps.append(partial(_inheritable_and_ambient, [capabilities.NAMES.index(c) for c in proc.inheritable],
                             [capabilities.NAMES.index(c) for c in proc.ambient]))
    if seccomp is not None:
        steps.append(seccomp.load)                       # needs CAP_SYS_ADMIN: before the user switch
    steps.append(partial(_switch_user, proc.uid, proc.gid, list(proc.groups)))
    steps.append(partial(_check_program, proc.args[0], proc.env.get("PATH", "")))
    return steps


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _inheritable_and_ambient(inheritable: list[int], ambient: list[int]) -> None:
    """capset(2) with the inheritable set given, then each ambient capability raised (it must be
    permitted and inheritable): what /proc/PID/status shows as CapInh and CapAmb."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()      # _LINUX_CAPABILITY_VERSION_3
    if _libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    mask = sum(1 << n for n in inheritable)
    data[0].inheritable, data[1].inheritable = mask & 0xFFFFFFFF, mask >> 32
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset (inheritable)")
    for number in ambient:
        if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, ctypes.c_ulong(number), 0, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"raise ambient capability {capabilities.NAMES[number]}: {os.strerror(code)}")


def _apparmor(profile: str) -> None:
    """Like runc: ask AppArmor to confine the process from its next exec on."""
    for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
        if os.path.exists(path):
            syscalls.write_file(path, f"exec {profile}")
            return
    raise Unsupported(f"process.apparmorProfile={profile!r}: AppArmor is not enabled on this kernel")


def _switch_user(uid: int, gid: int, groups: list[int]) -> None:
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _check_program(program: str, path: str) -> None:
    candidates = [program] if "/" in program else [f"{d or '.'}/{program}" for d in path.split(":")]
    if not any(os.path.isfile(c) and os.access(c, os.X_OK) for c in candidates):
        where = "" if "/" in program else " in $PATH"
        raise NotFound(f'exec: "{program}": executable file not found{where}')
