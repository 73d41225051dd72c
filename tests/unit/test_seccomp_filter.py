"""seccomp.Filter builds the BPF program it says it builds (no root: nothing is loaded here)."""
from __future__ import annotations

import errno
import os

import pytest

from labkit import seccomp
from labkit.errors import InvalidValue


def _run(program, arch, nr):
    """A tiny interpreter for the three instructions the filter uses: the verdict for one call."""
    data = {seccomp.ARCH: arch, seccomp.NR: nr}
    pc, acc = 0, 0
    while True:
        i = program[pc]
        if i.code == seccomp.BPF_LD_W_ABS:
            acc, pc = data[i.k], pc + 1
        elif i.code == seccomp.BPF_JEQ_K:
            pc += 1 + (i.jt if acc == i.k else i.jf)
        elif i.code == seccomp.BPF_JGE_K:
            pc += 1 + (i.jt if acc >= i.k else i.jf)
        else:
            return i.k


@pytest.fixture
def machine():
    machine = os.uname().machine
    if machine not in seccomp.AUDIT_ARCH:
        pytest.skip(f"filters are built for {list(seccomp.AUDIT_ARCH)}")
    return seccomp.AUDIT_ARCH[machine]


def test_denied_calls_get_the_errno_and_others_are_allowed(machine):
    f = seccomp.Filter(["mkdirat", "unshare"], errno=errno.EACCES)
    for name in ("mkdirat", "unshare"):
        assert _run(f.program, machine, f.numbers[name]) == seccomp.RET_ERRNO | errno.EACCES
    assert _run(f.program, machine, seccomp.syscall_number("getpid")) == seccomp.RET_ALLOW


def test_another_architecture_is_killed(machine):
    f = seccomp.Filter(["mkdirat"])
    assert _run(f.program, 0x40000003, f.numbers["mkdirat"]) == seccomp.RET_KILL_PROCESS   # i386


def test_the_listing_shows_every_instruction(machine):
    f = seccomp.Filter(["unshare"])
    lines = f.listing().splitlines()
    assert len(lines) == len(f.program) and "unshare" in f.listing() and "EPERM" in lines[-1]


@pytest.mark.parametrize("deny", [[], [""], ["no_such_call"], "  "])
def test_bad_deny_lists_are_refused_by_name(deny):
    with pytest.raises(InvalidValue):
        seccomp.Filter(deny)


def test_an_errno_out_of_range_is_refused():
    with pytest.raises(InvalidValue):
        seccomp.Filter(["mkdirat"], errno=0)
