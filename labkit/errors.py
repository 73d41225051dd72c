"""The few errors labkit raises.

Every failure a learner can cause is a LabkitError whose message names the bad value and what
would have been accepted. OSError from the kernel is translated at the boundary (see `from_oserror`),
so a notebook never shows a bare errno without saying which file or syscall it came from.
"""
from __future__ import annotations

import errno as _errno
import os


class LabkitError(Exception):
    """Base class: anything labkit refuses or fails to do, with a message meant for a human."""


class InvalidValue(LabkitError, ValueError):
    """A value given by the user is wrong; nothing was created.

    `value` is what was given, `accepted` says what would have been fine.
    """

    def __init__(self, what: str, value, accepted: str):
        self.what, self.value, self.accepted = what, value, accepted
        super().__init__(f"invalid {what} {value!r}: expected {accepted}")


class NotPermitted(LabkitError, PermissionError):
    """Creating kernel objects needs root and a lab host (see labkit.host.require_lab_host)."""


class Unsupported(LabkitError):
    """This machine (kernel, cgroup mode, missing tool) cannot do what was asked."""


class NotFound(LabkitError, LookupError):
    """A named object (container, cgroup, namespace, image) does not exist."""


class CommandNotFound(NotFound):
    """execve(2) found no such program: what a shell reports with status 127."""


class CommandNotExecutable(LabkitError):
    """execve(2) refused the program (permission denied): what a shell reports with status 126."""


def exec_failure(program: str, exc: OSError) -> Exception:
    """What execve's OSError says of the command itself, as the error a caller can tell apart (the
    engine's `docker run` exits 127 or 126 by it, as dockerd's does); any other OSError as it is."""
    if isinstance(exc, FileNotFoundError):
        return CommandNotFound(f"command not found: {program!r}")
    if isinstance(exc, PermissionError):
        return CommandNotExecutable(f"could not start {program!r}: {exc.strerror}"
                                    + (f": {exc.filename}" if exc.filename else ""))
    return exc


# The errors a child process reports by name over its pipe (labkit.namespaces), rebuilt by that name.
CHILD_ERRORS = {cls.__name__: cls for cls in (NotFound, CommandNotFound, CommandNotExecutable)}


class Conflict(LabkitError):
    """The object exists already, or is busy."""


class KernelError(LabkitError, OSError):
    """The kernel refused an operation; the message says which operation and on what."""

    def __init__(self, operation: str, target: str, err: int, hint: str = ""):
        self.operation, self.target = operation, target
        message = f"{operation} {target}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})"
        if hint:
            message += f" - {hint}"
        OSError.__init__(self, err, message)

    def __str__(self) -> str:  # OSError's default would print "[Errno N] ..." twice
        return self.args[1]


def from_oserror(exc: OSError, operation: str, target: str, hint: str = "") -> LabkitError:
    """Translate an OSError into the matching LabkitError, keeping errno."""
    err = exc.errno or _errno.EIO
    if err == _errno.ENOENT:
        return NotFound(f"{operation} {target}: no such file or object")
    if err in (_errno.EPERM, _errno.EACCES):
        return NotPermitted(f"{operation} {target}: {os.strerror(err)}" + (f" - {hint}" if hint else ""))
    return KernelError(operation, target, err, hint)
