"""linux.resources.devices on cgroup v2: an eBPF program, written instruction by instruction.

cgroup v1 has a `devices` controller: rules written to devices.allow and devices.deny. cgroup v2 has
none. Instead, each time a process of the cgroup opens a device node or makes one (mknod), the kernel
runs the BPF_PROG_TYPE_CGROUP_DEVICE programs attached to the cgroup, and lets the access through only
if they return 1. runc builds such a program from config.json's device rules, and so does this module:
no compiler, no library - the instructions are packed here and loaded with the bpf(2) system call.

The program's input is struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }, where
access_type's low 16 bits are the device type (1 block, 2 char) and its high 16 bits the access asked
for (1 mknod, 2 read, 4 write). For a rule list

    deny a *:* rwm,   allow c 1:3 rwm,   allow c 136:* rw

the program is, in eBPF assembly (r1 points at the context, r0 is the answer):

    r2 = *(u32 *)(r1 + 0);  r2 &= 0xffff        the type
    r3 = *(u32 *)(r1 + 0);  r3 >>= 16           the access
    r4 = *(u32 *)(r1 + 4);  r5 = *(u32 *)(r1 + 8)   major, minor
    ; the rules from the last to the first: the first that matches answers
    if r2 != 2 goto +6;  r6 = r3;  r6 &= 1;  if r6 != 0 goto +3;  if r4 != 136 goto +2;  r0 = 1;  exit
    if r2 != 2 goto +7;  r6 = r3;  r6 &= 0;  if r6 != 0 goto +4;  if r4 != 1 goto +3;
        if r5 != 3 goto +2;  r0 = 1;  exit
    r6 = r3;  r6 &= 0;  if r6 != 0 goto +2;  r0 = 0;  exit          (deny a *:* rwm)
    r0 = 1;  exit                                 no rule matched: allowed (as in a v1 cgroup)

A rule matches when the type, major and minor match (or are wildcards) and it covers every access
asked for ("r6 = access & ~rule's access" must be 0). Checking from the last rule back gives the
later rule the last word, as when the rules are written one after the other to v1's devices.allow
and devices.deny. Docker's list starts with "deny a": what no later rule allows is denied.
"""
from __future__ import annotations

import ctypes
import os
import struct

from ..errors import KernelError, Unsupported

# The eBPF opcodes used (linux/bpf.h: class | operation | source)
LDX_W = 0x61        # BPF_LDX | BPF_MEM | BPF_W:    dst = *(u32 *)(src + off)
AND32_K = 0x54      # BPF_ALU | BPF_AND | BPF_K:    dst &= imm
RSH32_K = 0x74      # BPF_ALU | BPF_RSH | BPF_K:    dst >>= imm
MOV32_X = 0xbc      # BPF_ALU | BPF_MOV | BPF_X:    dst = src
JNE_K = 0x55        # BPF_JMP | BPF_JNE | BPF_K:    if dst != imm: skip `off` instructions
MOV64_K = 0xb7      # BPF_ALU64 | BPF_MOV | BPF_K:  dst = imm
EXIT = 0x95         # BPF_JMP | BPF_EXIT:           return r0

DEVICE_TYPES = {"b": 1, "c": 2}                 # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
ACCESS_BITS = {"m": 1, "r": 2, "w": 4}          # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8           # bpf(2) commands
BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE = 15, 6
BPF_F_ALLOW_MULTI = 2                          # as runc: programs of the parent cgroups still run too
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "i686": 357, "armv7l": 386}


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One instruction, struct bpf_insn: 8-bit opcode, 4-bit registers dst and src, 16-bit offset,
    32-bit immediate."""
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def parse_rule(rule: str) -> tuple[bool, str, int | None, int | None, int]:
    """"allow c 1:3 rwm" -> (True, "c", 1, 3, 7): allow?, type (a = any), major, minor (None = *),
    access bits."""
    verb, kind, numbers, access = rule.split()
    major, minor = (None if n == "*" else int(n) for n in numbers.split(":"))
    return verb == "allow", kind, major, minor, sum(ACCESS_BITS[c] for c in set(access))


def program(rules: list[str]) -> bytes:
    """The device filter for `rules` (strings as labkit.runtime.spec writes them), as instructions."""
    code = [insn(LDX_W, 2, 1, 0), insn(AND32_K, 2, imm=0xFFFF),        # r2 = type
            insn(LDX_W, 3, 1, 0), insn(RSH32_K, 3, imm=16),            # r3 = access
            insn(LDX_W, 4, 1, 4), insn(LDX_W, 5, 1, 8)]               # r4 = major, r5 = minor
    for allow, kind, major, minor, access in map(parse_rule, reversed(rules)):
        block = []        # (opcode, dst, src, imm, jumps to the next rule?)
        if kind != "a":
            block.append((JNE_K, 2, 0, DEVICE_TYPES[kind], True))
        block += [(MOV32_X, 6, 3, 0, False), (AND32_K, 6, 0, ~access & 7, False), (JNE_K, 6, 0, 0, True)]
        if major is not None:
            block.append((JNE_K, 4, 0, major, True))
        if minor is not None:
            block.append((JNE_K, 5, 0, minor, True))
        block += [(MOV64_K, 0, 0, int(allow), False), (EXIT, 0, 0, 0, False)]
        for i, (op, dst, src, imm, jump) in enumerate(block):
            code.append(insn(op, dst, src, len(block) - i - 1 if jump else 0, imm))
    code += [insn(MOV64_K, 0, imm=1), insn(EXIT)]                      # no rule matched
    return b"".join(code)


class _ProgLoad(ctypes.Structure):      # union bpf_attr, as BPF_PROG_LOAD reads it
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32), ("log_buf", ctypes.c_uint64),
                ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32)]


class _ProgAttach(ctypes.Structure):    # union bpf_attr, as BPF_PROG_ATTACH reads it
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32)]


def _bpf(command: int, attr: ctypes.Structure) -> int:
    machine = os.uname().machine
    if machine not in _SYS_BPF:
        raise Unsupported(f"bpf(2): labkit does not know its syscall number on {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(ctypes.c_long(_SYS_BPF[machine]), ctypes.c_int(command), ctypes.byref(attr),
                        ctypes.c_uint(ctypes.sizeof(attr)))


def load(rules: list[str]) -> int:
    """The program loaded into the kernel (its verifier checks it first); returns its fd."""
    code = program(rules)
    text = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"MIT")       # no GPL-only helper is called
    attr = _ProgLoad(prog_type=BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=len(code) // 8,
                     insns=ctypes.addressof(text), license=ctypes.addressof(license),
                     prog_name=b"labkit_devices", expected_attach_type=BPF_CGROUP_DEVICE)
    fd = _bpf(BPF_PROG_LOAD, attr)
    if fd < 0:
        err = ctypes.get_errno()
        log = ctypes.create_string_buffer(1 << 16)      # ask again, with the verifier's reasons
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        _bpf(BPF_PROG_LOAD, attr)
        why = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise KernelError("bpf(BPF_PROG_LOAD) of", f"a device filter of {len(rules)} rules", err,
                          " / ".join(why))
    return fd


def attach(program_fd: int, cgroup_dir: str) -> None:
    """Attach the program to the cgroup: from now on it judges every device access of its processes
    (the cgroup holds the program; it goes when the cgroup is removed)."""
    target = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        attr = _ProgAttach(target_fd=target, attach_bpf_fd=program_fd, attach_type=BPF_CGROUP_DEVICE,
                           attach_flags=BPF_F_ALLOW_MULTI)
        if _bpf(BPF_PROG_ATTACH, attr) != 0:
            raise KernelError("bpf(BPF_PROG_ATTACH) of the device filter to", cgroup_dir, ctypes.get_errno())
    finally:
        os.close(target)


def restrict(cgroup_dir: str, rules: list[str]) -> None:
    """What RuntimeCgroup does on v2: load the filter for `rules` and attach it to `cgroup_dir`."""
    fd = load(rules)
    try:
        attach(fd, cgroup_dir)
    finally:
        os.close(fd)
