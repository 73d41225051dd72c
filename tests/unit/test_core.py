"""Unit tests (no root) for the foundation: names, ownership records, errors, host probe, CLI parsing."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from labkit import cleanup, cli, doctor, errors, forking, host


def test_unique_names_carry_the_prefix_fit_and_differ():
    names = {cleanup.unique_name("bridge", max_len=15) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith("labkit-") and len(name) <= 15


@pytest.mark.parametrize("bad", ["", "a/b", "..", "../etc", "has space", "nul\0byte", "x" * 300,
                                 "-leading-dash", "ok/..", None, 42])
def test_checked_name_refuses_what_could_escape(bad):
    with pytest.raises(errors.InvalidValue) as info:
        cleanup.checked_name(bad)
    assert repr(bad)[:20] in str(info.value) or bad in (None, 42)


def test_checked_name_prefixes_good_names_once():
    assert cleanup.checked_name("box") == "labkit-box"
    assert cleanup.checked_name("labkit-box") == "labkit-box"


def test_owner_records_tell_live_owners_from_dead_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setenv("LABKIT_NO_WATCHDOG", "1")     # a unit test starts no sweeper of the real machine
    cleanup.claim("cgroup", "labkit-mine")
    assert cleanup.owner("cgroup", "labkit-mine") == (os.getpid(), True)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cleanup.claim("netns", "labkit-orphan", pid=dead.pid)
    pid, alive = cleanup.owner("netns", "labkit-orphan")
    assert pid == dead.pid and alive is False

    cleanup.release("cgroup", "labkit-mine")
    assert cleanup.owner("cgroup", "labkit-mine") == (None, False)


def test_a_claim_is_exclusive_and_a_release_never_drops_another_live_owners_record(tmp_path, monkeypatch):
    """Two processes racing for one name: the loser's claim fails, and its clean-up (release) leaves
    the winner's record alone. A dead owner's record is simply taken over."""
    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setenv("LABKIT_NO_WATCHDOG", "1")
    winner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        cleanup.claim("cgroup", "labkit-race", pid=winner.pid)
        with pytest.raises(errors.Conflict, match=f"pid {winner.pid}"):
            cleanup.claim("cgroup", "labkit-race")
        cleanup.release("cgroup", "labkit-race")
        assert cleanup.owner("cgroup", "labkit-race") == (winner.pid, True)
    finally:
        winner.communicate(b"")
    cleanup.claim("cgroup", "labkit-race")                  # its owner is dead now: ours to take
    assert cleanup.owner("cgroup", "labkit-race") == (os.getpid(), True)
    cleanup.claim("cgroup", "labkit-race")                  # claiming again what is ours: fine
    cleanup.release("cgroup", "labkit-race")
    assert cleanup.owner("cgroup", "labkit-race") == (None, False)


def test_the_first_claim_for_this_process_starts_its_watchdog_once(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    monkeypatch.setattr(cleanup, "_watched_pid", None)
    monkeypatch.delenv("LABKIT_NO_WATCHDOG", raising=False)
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kw: started.append(argv))
    # as from a notebook kernel (big, threaded): a fresh interpreter; tests/integration/test_watchdog.py
    # kills owners of both kinds, this one and a small single-threaded one, whose watchdog is a fork
    monkeypatch.setattr(forking, "small_and_single_threaded", lambda: False)
    cleanup.claim("netns", "labkit-someone-elses", pid=1)     # owned by another process: not ours to watch
    assert started == []
    cleanup.claim("cgroup", "labkit-a")
    cleanup.claim("cgroup", "labkit-b")
    # at a low priority from its start (housekeeping), in its own session
    assert started == [["nice", "-n", str(cleanup.WATCHDOG_NICE), sys.executable, "-S", "-m", "labkit.watchdog",
                        "--owner", str(os.getpid())]]


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    record = tmp_path / "owners" / "cgroup" / "labkit-x"
    record.parent.mkdir(parents=True)
    record.write_text(f"{os.getpid()} 1\n")  # our pid, but a start time that is not ours
    assert cleanup.owner("cgroup", "labkit-x") == (os.getpid(), False)


def test_kernel_errors_name_the_operation_and_keep_errno():
    exc = errors.from_oserror(OSError(errno.EINVAL, "Invalid argument"), "write 500 to", "cpu.max")
    assert isinstance(exc, errors.KernelError) and exc.errno == errno.EINVAL
    assert "write 500 to cpu.max" in str(exc) and "EINVAL" in str(exc)
    assert isinstance(errors.from_oserror(OSError(errno.ENOENT, "x"), "open", "f"), errors.NotFound)
    assert isinstance(errors.from_oserror(OSError(errno.EPERM, "x"), "open", "f"), errors.NotPermitted)


def test_invalid_value_names_value_and_accepted_range():
    exc = errors.InvalidValue("memory limit", "12Q", "bytes or a number with K, M, G")
    assert "12Q" in str(exc) and "K, M, G" in str(exc)
    assert isinstance(exc, ValueError)


def test_cgroup_mode_is_read_from_filesystem_magic(monkeypatch):
    from labkit import syscalls
    magic = {"/sys/fs/cgroup": syscalls.TMPFS_MAGIC, "/sys/fs/cgroup/unified": syscalls.CGROUP2_SUPER_MAGIC}
    monkeypatch.setattr(syscalls, "filesystem_magic", lambda p: magic[p])
    assert host.cgroup_mode() == "hybrid"
    magic["/sys/fs/cgroup/unified"] = syscalls.TMPFS_MAGIC
    assert host.cgroup_mode() == "v1"
    magic["/sys/fs/cgroup"] = syscalls.CGROUP2_SUPER_MAGIC
    assert host.cgroup_mode() == "v2"


def test_the_guard_refuses_a_non_lab_host_and_says_how_to_opt_in(monkeypatch, tmp_path):
    monkeypatch.setattr(host, "LAB_HOST_MARKER", tmp_path / "no-marker")
    monkeypatch.delenv("LABKIT_ALLOW_HOST", raising=False)
    monkeypatch.setattr(host, "is_root", lambda: True)
    with pytest.raises(errors.NotPermitted, match="LABKIT_ALLOW_HOST=1"):
        host.require_lab_host()
    monkeypatch.setattr(host, "is_root", lambda: False)
    with pytest.raises(errors.NotPermitted, match="root"):
        host.require_lab_host()


def test_probe_reports_all_eight_kinds_with_minimum_kernels():
    report = doctor.probe()
    kinds = {n["kind"]: n for n in report.namespaces}
    assert set(kinds) == {"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"}
    assert all(n["min_kernel"] for n in kinds.values())
    for kind, entry in kinds.items():            # what the kernel offers this process
        assert entry["available"] == os.path.exists(f"/proc/self/ns/{kind}"), kind
    assert report.cgroup_mode == _cgroup_mode_by_stat()


def _cgroup_mode_by_stat() -> str:
    """The mode from coreutils' `stat -f` (statfs, as runc checks it) - not through labkit."""
    def fstype(path):
        return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()
    if fstype("/sys/fs/cgroup") == "cgroup2fs":
        return "v2"
    return "hybrid" if os.path.isdir("/sys/fs/cgroup/unified") and \
        fstype("/sys/fs/cgroup/unified") == "cgroup2fs" else "v1"


def test_spawn_refuses_bad_namespace_kinds_on_the_command_line(capsys):
    assert cli.main(["spawn", "--ns", "pid,bogus", "--", "true"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_spawn_needs_a_command(capsys):
    assert cli.main(["spawn"]) == 2
    assert "command" in capsys.readouterr().err


def test_a_zombie_owner_counts_as_dead(tmp_path, monkeypatch):
    """A killed notebook kernel is a zombie until Jupyter reaps it; its objects are leftovers already."""
    monkeypatch.setattr(cleanup, "OWNERS_DIR", tmp_path / "owners")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        cleanup.claim("cgroup", "labkit-z", pid=child.pid)
        assert cleanup.owner("cgroup", "labkit-z") == (child.pid, True)
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)   # exited, not reaped: a zombie
        assert open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
        assert cleanup.owner("cgroup", "labkit-z") == (child.pid, False)
    finally:
        child.wait()


def test_pivot_root_refuses_an_architecture_whose_syscall_number_it_does_not_know(monkeypatch):
    """Syscall 155 is pivot_root on x86_64 only: elsewhere it is another syscall, run as root."""
    from labkit import syscalls

    real = os.uname()
    monkeypatch.setattr(syscalls.os, "uname", lambda: os.uname_result((*real[:4], "mips64")))
    called = []
    monkeypatch.setattr(syscalls, "_libc", type("NoLibc", (), {"syscall": lambda *a: called.append(a)})())
    with pytest.raises(OSError, match="mips64") as caught:
        syscalls.pivot_root("/new", "/new/old")
    assert caught.value.errno == errno.ENOSYS and called == []


def test_spawns_pipe_and_devnull_are_subprocess_s_so_either_may_be_passed():
    from labkit import namespaces
    assert (namespaces.PIPE, namespaces.DEVNULL) == (subprocess.PIPE, subprocess.DEVNULL)


def test_labkit_whose_reader_went_away_stops_quietly_with_sigpipes_status():
    """`labkit doctor | head -1`: once the reader has gone, writing fails with EPIPE. The program
    stops with 141 (what a shell reports for SIGPIPE) and no traceback, as a C program would."""
    read_end, write_end = os.pipe()
    os.close(read_end)                       # nobody will ever read: the first write fails
    try:
        done = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['labkit', 'doctor']; "
                               "from labkit.cli import command; command()"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_execs_failure_is_told_apart_by_type_not_by_its_words():
    """What execve said of the command crosses the child's pipe by name and comes back as a type the
    engine checks (127 for no such program, 126 for not executable), with the words unchanged."""
    from labkit import namespaces

    missing = errors.exec_failure("nosuch", FileNotFoundError(errno.ENOENT, "No such file or directory"))
    refused = errors.exec_failure("./x", PermissionError(errno.EACCES, "Permission denied", "./x"))
    other = OSError(errno.ENOEXEC, "Exec format error")
    assert isinstance(missing, errors.CommandNotFound) and isinstance(missing, errors.NotFound)
    assert str(missing) == "command not found: 'nosuch'"
    assert isinstance(refused, errors.CommandNotExecutable)
    assert str(refused) == "could not start './x': Permission denied: ./x"
    assert errors.exec_failure("y", other) is other
    for exc in (missing, refused):
        rebuilt = namespaces._failure(["x"], namespaces._describe(exc))
        assert type(rebuilt) is type(exc) and str(rebuilt) == str(exc)


@pytest.mark.parametrize("argv", [
    ["--", "/bin/true"],
    ["--memory", "64M", "--cpu", "0.5", "--pids", "16", "--", "sh", "-c", "exit 3"],
    ["--memory=64M", "--hostname=box", "sh", "-c", "hostname"],
    ["--name", "web", "--image", "busybox", "-v", "--", "--", "echo"],
    ["sh", "--memory", "1"],              # after the command, an option is the command's
    ["--bundle", "/tmp/b", "--verbose"],
    [],
])
def test_labkit_runs_own_parser_reads_what_argparse_reads(argv):
    """`labkit run` parses its arguments without argparse (its import is a tenth of the command):
    where it does, it must read exactly what argparse would."""
    ours = vars(cli._parse_run(argv))
    theirs = vars(cli.build_parser("run").parse_args(["run", *argv]))
    theirs.pop("subcommand")
    assert ours == theirs


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--mem", "64M", "true"], ["--memory"],
                                  ["--memory", "-1", "true"], ["--bogus", "true"], ["-x"]])
def test_labkit_run_leaves_help_and_mistakes_to_argparse(argv):
    assert cli._parse_run(argv) is None
