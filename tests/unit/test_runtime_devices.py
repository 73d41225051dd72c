"""labkit.runtime.devices: the cgroup-v2 device filter, run here by a small eBPF interpreter of the
seven opcodes it uses (the v2 microVM tier loads the same programs into a real kernel:
tests/v2tier/test_v2_devices.py)."""
from __future__ import annotations

import struct

import pytest

from labkit.runtime import devices

DOCKER = ["deny a *:* rwm", "allow c 1:5 rwm", "allow c 1:3 rwm", "allow c 136:* rwm",
          "allow c 5:1 rw", "deny c 10:229 rwm"]


def run(code: bytes, kind: str, access: str, major: int, minor: int) -> int:
    """Execute the program on a bpf_cgroup_dev_ctx; return r0."""
    ctx = struct.pack("<III", devices.DEVICE_TYPES[kind] | sum(devices.ACCESS_BITS[c] for c in access) << 16,
                      major, minor)
    regs, pc, steps = [0] * 11, 0, 0
    while True:
        op, registers, off, imm = struct.unpack_from("<BBhi", code, pc * 8)
        dst, src = registers & 0xF, registers >> 4
        pc, steps = pc + 1, steps + 1
        assert steps < 10_000, "a runaway program"
        if op == devices.LDX_W:
            assert src == 1, "loads only from the context"
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif op == devices.AND32_K:
            regs[dst] = regs[dst] & (imm & 0xFFFFFFFF)
        elif op == devices.RSH32_K:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif op == devices.MOV32_X:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif op == devices.MOV64_K:
            regs[dst] = imm
        elif op == devices.JNE_K:
            pc += off if regs[dst] != imm else 0
        elif op == devices.EXIT:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {op:#x} at {pc - 1}")


@pytest.mark.parametrize("kind, access, major, minor, allowed", [
    ("c", "rw", 1, 3, 1),          # /dev/null: allowed
    ("c", "m", 1, 5, 1),           # mknod of /dev/zero: rwm covers it
    ("c", "rw", 136, 7, 1),        # a pty: minor wildcard
    ("c", "rw", 5, 1, 1),          # /dev/console read-write ...
    ("c", "m", 5, 1, 0),           # ... but no mknod: the rule does not cover m
    ("c", "rw", 10, 229, 0),       # /dev/fuse: denied by the last rule
    ("c", "r", 1, 1, 0),           # /dev/mem: nothing allows it, "deny a" answers
    ("b", "r", 8, 0, 0),           # a disk
])
def test_dockers_rules_decide_as_v1s_device_cgroup_would(kind, access, major, minor, allowed):
    assert run(devices.program(DOCKER), kind, access, major, minor) == allowed


def test_the_later_rule_wins_and_no_rule_means_allowed():
    assert run(devices.program(["deny c 1:3 rwm", "allow c 1:3 rwm"]), "c", "r", 1, 3) == 1
    assert run(devices.program(["allow c 1:3 rwm", "deny c 1:3 w"]), "c", "w", 1, 3) == 0
    assert run(devices.program(["allow c 1:3 rwm", "deny c 1:3 w"]), "c", "r", 1, 3) == 1
    assert run(devices.program([]), "b", "rwm", 8, 0) == 1


def test_a_rule_allows_only_the_access_it_names():
    code = devices.program(["deny a *:* rwm", "allow c 1:3 r"])
    assert [run(code, "c", a, 1, 3) for a in ("r", "w", "m", "rw")] == [1, 0, 0, 0]


def test_the_encoding_is_struct_bpf_insn():
    code = devices.program(["deny a *:* rwm"])
    assert len(code) % 8 == 0
    assert code[:8] == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])     # r2 = *(u32 *)(r1 + 0)
    assert code[-16:] == devices.insn(devices.MOV64_K, 0, imm=1) + devices.insn(devices.EXIT)


def test_a_rule_it_cannot_read_is_an_error():
    with pytest.raises((ValueError, KeyError)):
        devices.program(["allow x 1:3 rwm"])
