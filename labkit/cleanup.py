"""Everything labkit creates, found again and released.

Three rules make cleanup safe on a machine labkit shares with other software:

1. Every kernel object labkit creates has a name starting with ``labkit-`` (cgroups, network
   namespaces, links, mount points, work directories, Docker containers). Nothing else is ever
   touched.
2. Before creating an object, labkit *claims* it: a small owner file under /run/labkit/owners records
   the pid (and its start time, to survive pid reuse) of the process that made it. Objects are removed
   by their owner's context managers on success, error and interrupt.
3. A sweep (``labkit cleanup``, and automatically before labkit creates anything new) removes only
   objects whose owner is dead - leftovers of a crashed or killed notebook kernel - and never an
   object another live notebook is still using.

Each concern module that creates objects (cgroups, net, rootfs, vm, engine, ...) exposes two
functions, and is listed in `SWEEP_MODULES` in the order objects must go (processes before mounts
before namespaces before directories):

    find_leftovers() -> Iterable[Leftover]     every labkit- object of that kind that exists now
    remove_leftover(leftover: Leftover) -> None
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import os
import re
import sys
import threading
from types import SimpleNamespace
from pathlib import Path
from collections.abc import Iterable

from . import forking
from .errors import Conflict, InvalidValue, LabkitError, NotFound
from .pidstart import start_time  # noqa: F401 - owner records name a process by (pid, start time)

PREFIX = "labkit-"
STATE_DIR = Path(os.environ.get("LABKIT_STATE_DIR", "/run/labkit"))
OWNERS_DIR = STATE_DIR / "owners"
WORK_DIR = STATE_DIR / "work"          # per-object scratch directories, named labkit-...
WATCHDOG_JOURNAL = STATE_DIR / "watchdog.log"   # what watchdogs removed after killed owners, or failed to

# Modules that create kernel objects, in the order their leftovers must be removed.
SWEEP_MODULES = (
    "labkit.engine",      # engine-made containers and Docker containers named labkit-*
    "labkit.vm",          # qemu processes (they also live in labkit cgroups)
    "labkit.cgroups",     # every process labkit started lives in a labkit cgroup: killed here
    "labkit.rootfs",      # overlay and bind mounts, upper directories
    "labkit.loopdev",     # loop devices over files in work directories (after their mounts)
    "labkit.net",         # network namespaces, veths, bridges
    "labkit.cleanup",     # owner records and work directories nobody owns any more
)

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Leftover(SimpleNamespace):
    """One labkit object found on the machine. (A plain class, not a dataclass: importing
    dataclasses would cost every `labkit run` and runtime `create` 5 ms.)"""

    def __init__(self, kind: str, name: str, where: str = "", owner_pid: int | None = None,
                 owner_alive: bool = False, extra: dict | None = None):
        super().__init__(kind=kind,                # "cgroup", "netns", "link", "mount", "dir", ...
                         name=name,                # the labkit- name (what the owner claimed)
                         where=where,              # path or location, for humans
                         owner_pid=owner_pid,      # who claimed it, if anyone
                         owner_alive=owner_alive,  # True: in use by a live process, not a leftover
                         extra=extra or {})

    def describe(self) -> str:
        owner = f"owner pid {self.owner_pid} " + ("alive" if self.owner_alive else "dead") \
            if self.owner_pid else "no owner"
        return f"{self.kind:<10} {self.name:<28} {self.where}  ({owner})"


# --- names -------------------------------------------------------------------------------------

def unique_name(hint: str = "", max_len: int = 64) -> str:
    """A fresh ``labkit-<hint>-<random>`` name that fits in `max_len` characters.

    Interface names have max_len=15 (IFNAMSIZ - 1), so the hint is shortened first, never the random
    part that keeps two concurrent experiments apart.
    """
    token = os.urandom(3).hex()     # (not secrets: it loads OpenSSL, ~10 ms per `labkit run`)
    room = max_len - len(PREFIX) - len(token) - 1
    hint = re.sub(r"[^A-Za-z0-9]", "", hint)[: max(room, 0)]
    return f"{PREFIX}{hint}-{token}" if hint else f"{PREFIX}{token}"


def checked_name(name: str, max_len: int = 64) -> str:
    """A user-chosen name made safe: ``box`` -> ``labkit-box``; refuses anything that could escape.

    Accepted: letters, digits, ``_ . -``, starting with a letter or digit, at most `max_len`
    characters once prefixed; no ``/``, ``..``, spaces or NUL.
    """
    if not isinstance(name, str) or not name:
        raise InvalidValue("name", name, "a non-empty string")
    full = name if name.startswith(PREFIX) else PREFIX + name
    if not _NAME_OK.match(name) or ".." in name or len(full) > max_len:
        raise InvalidValue("name", name, f"letters, digits, '_', '.', '-' (no '/', '..', spaces), "
                                         f"at most {max_len} characters with the {PREFIX!r} prefix")
    return full


# --- ownership ----------------------------------------------------------------------------------

def _owner_file(kind: str, name: str) -> Path:
    return OWNERS_DIR / kind / name


@contextlib.contextmanager
def _records_locked(kind: str):
    """Hold the owner records of `kind` still: look at a record and change it as one step (flock on
    their directory), so that two claimers - or a claimer and a sweeper - never both act on what
    they read before the other wrote."""
    directory = OWNERS_DIR / kind
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)          # releases the lock


def claim(kind: str, name: str, pid: int | None = None) -> None:
    """Record that process `pid` (default: this one) owns object `name` of `kind`.

    Exclusive: if another live process holds the claim, Conflict - its object is not ours to make,
    nor (on failure) to remove. A record of a dead owner is replaced (its object, if it is still
    there, stays a leftover: making ours will then fail, and the sweep removes the old one).
    The first claim a process makes for itself starts its watchdog (see `ensure_watchdog`).
    """
    if pid is None or pid == os.getpid():
        ensure_watchdog()
    pid = pid or os.getpid()
    path = _owner_file(kind, name)
    record = f"{pid} {start_time(pid)}\n"
    with _records_locked(kind):
        holder, alive = owner(kind, name)
        if alive and holder not in (pid, os.getpid()):    # ours we may hand on (to a child)
            raise Conflict(f"{kind} {name} belongs to another live process (pid {holder})")
        # Write a whole new file and rename it into place: a sweeper reading at the same moment must
        # see the old record or the new one, never an empty file that looks like "no owner".
        partial = path.with_name(f".{path.name}.{pid}.tmp")
        partial.write_text(record)
        os.replace(partial, path)


WATCHDOG_NICE = 10                   # the watchdog's niceness: below any process doing the lab's work
_watched_pid: int | None = None      # the process whose watchdog was started (a fork needs its own)
_watchdog_lock = threading.Lock()


def ensure_watchdog() -> None:
    """Start this process's watchdog (labkit/watchdog.py) once: from the moment it owns something.

    The watchdog is a separate process in its own session: it first sweeps what dead labkit
    processes left (a notebook kernel that was killed outright), then waits to clean up after this
    process if it is killed in turn. It runs beside us, so creating an object never waits for a sweep.
    LABKIT_NO_WATCHDOG=1 turns it off (processes whose parent cleans up after them).
    """
    global _watched_pid
    with _watchdog_lock:  # the engine creates containers from several threads at once
        if _watched_pid == os.getpid() or os.environ.get("LABKIT_NO_WATCHDOG") == "1":
            return
        _watched_pid = os.getpid()
    if forking.small_and_single_threaded():
        _fork_watchdog(os.getpid())
    else:
        _exec_watchdog(os.getpid())


def _exec_watchdog(owner: int) -> None:
    """A notebook kernel's or the engine's watchdog: `python -S -m labkit.watchdog --owner PID`.

    Housekeeping, at a low priority from its very start (nice(1) lowers it before Python starts):
    Popen returns once the child has exec'd, and a child at our own priority would then keep the
    CPU from us for its whole start-up. It still runs whenever a CPU is free, so it never falls
    behind. `python -S`: no site-packages until it sweeps (watchdog.main), so labkit comes from
    PYTHONPATH."""
    import subprocess                # here: labkit-runtime's create (no watchdog) need not import it

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent,
                                                                     os.environ.get("PYTHONPATH")])))
    subprocess.Popen(["nice", "-n", str(WATCHDOG_NICE), sys.executable, "-S", "-m", "labkit.watchdog",
                      "--owner", str(owner)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True, env=env)


def _fork_watchdog(owner: int) -> None:
    """A small single-threaded owner's watchdog (the `labkit` command's, a script's): a fork of it
    that does what `python -m labkit.watchdog --owner PID` does, in a copy that has Python started
    and labkit loaded already (labkit/forking.py: why, and why it is safe). A fresh interpreter's
    start costs about 5 ms of CPU, and even at a low priority it made `labkit run` 5 ms slower on
    a 2-CPU machine; the fork costs a fraction of a millisecond.

    The watchdog is run as a program (runpy, as `python -m` does), not imported: watchdog.py uses
    this module, not the other way round."""
    if os.fork() != 0:
        return
    code = 1
    try:
        os.setsid()                     # its own session: a Ctrl-C or a kill of our group misses it
        os.nice(WATCHDOG_NICE)
        forking.become_helper()
        import runpy
        sys.argv = ["labkit.watchdog", "--owner", str(owner)]
        runpy.run_module("labkit.watchdog", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:           # the program's exit: sys.exit(main())
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)                  # never back into the owner's code, nor its exit handlers


def release(kind: str, name: str) -> None:
    """Forget the owner record of an object that has been removed - unless another live process
    holds it now (it made an object of that name since: its record must stay)."""
    with _records_locked(kind):
        holder, alive = owner(kind, name)
        if alive and holder != os.getpid():
            return
        _owner_file(kind, name).unlink(missing_ok=True)


def owner(kind: str, name: str) -> tuple[int | None, bool]:
    """(owner pid or None, whether that owner is still the same live process)."""
    try:
        pid_text, started = _owner_file(kind, name).read_text().split()
    except (OSError, ValueError):
        return None, False
    pid = int(pid_text)
    return pid, start_time(pid) == started


def leftover(kind: str, name: str, where: str = "", **extra) -> Leftover:
    """Build a Leftover for an object found on the machine, with its owner looked up."""
    pid, alive = owner(kind, name)
    return Leftover(kind, name, where, pid, alive, extra)


def work_dir(name: str) -> Path:
    """A scratch directory for object `name` (claimed by the caller), created empty."""
    path = WORK_DIR / name
    path.mkdir(parents=True, exist_ok=False)
    return path


# --- this module's own kind: owner records and work directories --------------------------------

def find_leftovers() -> Iterable[Leftover]:
    if WORK_DIR.is_dir():
        for path in sorted(WORK_DIR.iterdir()):
            if path.name.startswith(PREFIX):
                yield leftover("dir", path.name, str(path))


def remove_leftover(item: Leftover) -> None:
    import shutil

    if item.kind == "dir":
        shutil.rmtree(item.where, ignore_errors=True)
        if not os.path.lexists(item.where):   # still there (a mount on it, mid-removal): keep the record
            release("dir", item.name)


def _stale_owner_records(still_there: set[tuple[str, str]] = frozenset()) -> None:
    """Drop owner records whose object is gone and whose owner is dead.

    `still_there`: objects that exist (listed after the sweep). Their records stay: a watchdog's
    sweep (owner_pid=...) finds its dead owner's objects by them, and must not lose them to a
    sweep that started in another process just before that owner died.
    """
    if not OWNERS_DIR.is_dir():
        return
    for kind_dir in OWNERS_DIR.iterdir():
        with _records_locked(kind_dir.name):      # a claim may replace a dead owner's record now
            for record in kind_dir.iterdir():
                if record.name.startswith("."):
                    continue  # a claim being written right now (see claim)
                _, alive = owner(kind_dir.name, record.name)
                if not alive and (kind_dir.name, record.name) not in still_there:
                    record.unlink(missing_ok=True)


# --- the sweep ----------------------------------------------------------------------------------

def _existing() -> set[tuple[str, str]] | None:
    """(kind, name) of every labkit object that exists now - listed afresh, after a sweep, so that
    no record is dropped for an object made (or not yet seen) while the sweep ran; None if some
    kind cannot be listed (then nobody can tell which records are stale)."""
    found = set()
    for module in _modules():
        try:
            found |= {(item.kind, item.name) for item in module.find_leftovers()}
        except Exception:  # noqa: BLE001
            return None
    return found


def _modules():
    for name in SWEEP_MODULES:
        if importlib.util.find_spec(name) is None:
            continue  # that chapter's module is not part of this checkout
        module = importlib.import_module(name)
        if hasattr(module, "find_leftovers"):
            yield module


def find_all(include_in_use: bool = False) -> list[Leftover]:
    """Every labkit object on the machine; by default only those whose owner is dead."""
    found = []
    for module in _modules():
        for item in module.find_leftovers():
            if include_in_use or not item.owner_alive:
                found.append(item)
    return found


def sweep(include_in_use: bool = False, owner_pid: int | None = None,
          errors: list[str] | None = None) -> list[Leftover]:
    """Remove leftovers (objects whose owner is dead); return what was removed.

    owner_pid: only what that (dead) process owned - the watchdog's sweep after its notebook died.
    include_in_use: also objects of live owners (`labkit cleanup --all`, for a learner's reset).
    errors: collect what could not be listed or removed here instead of raising. Either way one
    failure (a Docker daemon that stops answering, a busy mount) does not stop the sweep of the rest.
    """
    removed, problems, unlisted = [], [], False
    for module in _modules():
        try:
            found = list(module.find_leftovers())
        except Exception as exc:  # noqa: BLE001 - the other kinds must still be swept
            problems.append(f"listing {module.__name__} objects: {exc!r}")
            unlisted = True
            continue
        for item in found:
            if (item.owner_alive and not include_in_use) or \
                    (owner_pid is not None and item.owner_pid != owner_pid):
                continue
            try:
                module.remove_leftover(item)
            except NotFound:
                # Gone while we were removing it: another sweeper got there first (a dead engine's
                # own watchdog and its notebook's both clean up the engine's containers). Fine.
                continue
            except Exception as exc:  # noqa: BLE001
                problems.append(f"removing {item.kind} {item.name} ({item.where}): {exc!r}")
                continue
            removed.append(item)
    existing = None if unlisted else _existing()
    if existing is not None:   # a kind we could not list may still have objects: keep every record
        _stale_owner_records(existing)
    if errors is not None:
        errors.extend(problems)
    elif problems:
        raise LabkitError(f"cleanup removed {len(removed)} object(s) but not everything:\n  "
                          + "\n  ".join(problems))
    return removed
