"""linux.seccomp: the system-call filter Docker puts in every config.json, compiled with libseccomp.

Docker's default profile allows about 300 system calls by name (some only with certain arguments)
and makes every other one fail with EPERM. libseccomp (libseccomp2, which runc uses too) turns
that list into a BPF program; seccomp_load() installs it in the calling process, and every process
it execs or forks inherits it - for good. /proc/PID/status then says `Seccomp: 2` (filtering).

Called through ctypes, like labkit.syscalls: the filter is built in the runtime (`build`), and the
container's process loads it as one of its last setup steps, before it switches user (loading
needs CAP_SYS_ADMIN unless no_new_privs is set).
"""
from __future__ import annotations

import ctypes
import errno

from ..errors import Unsupported

ACT_KILL_PROCESS, ACT_KILL_THREAD, ACT_TRAP = 0x80000000, 0x00000000, 0x00030000
ACT_LOG, ACT_ALLOW = 0x7FFC0000, 0x7FFF0000
ACTIONS = {"SCMP_ACT_KILL": ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
           "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS, "SCMP_ACT_TRAP": ACT_TRAP,
           "SCMP_ACT_LOG": ACT_LOG, "SCMP_ACT_ALLOW": ACT_ALLOW}
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
FLTATR_CTL_NNP = 3


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp: compare argument `arg` of the call with `datum_a` (and `datum_b`)."""
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _library():
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise Unsupported("linux.seccomp needs libseccomp (apt-get install libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


class Filter:
    """A compiled filter; `load()` installs it in the calling process (a setup step)."""

    def __init__(self, lib, ctx):
        self._lib, self._ctx = lib, ctx

    def load(self) -> None:
        result = self._lib.seccomp_load(self._ctx)
        if result < 0:
            raise OSError(-result, f"seccomp_load: {errno.errorcode.get(-result, result)}")


def _action(name, errno_ret, where: str) -> int:
    if name == "SCMP_ACT_ERRNO":
        return 0x00050000 | ((errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name not in ACTIONS:
        raise Unsupported(f"{where}={name!r} is not supported by labkit "
                          f"(accepted: SCMP_ACT_ERRNO, {', '.join(ACTIONS)})")
    return ACTIONS[name]


def build(profile: dict) -> Filter:
    """linux.seccomp (defaultAction, architectures, syscalls[names, action, errnoRet, args]) -> Filter."""
    lib = _library()
    default = _action(profile.get("defaultAction"), profile.get("defaultErrnoRet"),
                      "linux.seccomp.defaultAction")
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise Unsupported("seccomp_init failed: this kernel or libseccomp cannot filter system calls")
    lib.seccomp_attr_set(ctx, FLTATR_CTL_NNP, 0)   # no_new_privs only when process.noNewPrivileges says so
    for arch in profile.get("architectures") or []:
        token = lib.seccomp_arch_resolve_name(arch.replace("SCMP_ARCH_", "").lower().encode())
        if not token:
            raise Unsupported(f"linux.seccomp.architectures: {arch!r} is not known to libseccomp here")
        lib.seccomp_arch_add(ctx, token)              # -EEXIST for the native one: fine
    for i, rule in enumerate(profile.get("syscalls") or []):
        where = f"linux.seccomp.syscalls[{i}]"
        action = _action(rule.get("action"), rule.get("errnoRet"), f"{where}.action")
        if action == default:
            continue                                  # libseccomp refuses a rule that changes nothing
        args = []
        for j, a in enumerate(rule.get("args") or []):
            if a.get("op") not in OPERATORS:
                raise Unsupported(f"{where}.args[{j}].op={a.get('op')!r} is not supported")
            args.append(ArgCmp(a["index"], OPERATORS[a["op"]], a.get("value", 0), a.get("valueTwo", 0)))
        # libseccomp ANDs the comparisons of one rule; two on the same argument mean "either" in
        # Docker's profiles, so those become one rule each (as runc does)
        indexes = [a.arg for a in args]
        groups = [[a] for a in args] if len(set(indexes)) < len(indexes) else [args]
        for name in rule.get("names") or []:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue                              # a call this architecture does not have
            for group in groups:
                array = (ArgCmp * len(group))(*group) if group else None
                lib.seccomp_rule_add_array(ctx, action, number, len(group), array)
    return Filter(lib, ctx)
