"""`labkit-runtime`: runc's command line, as containerd's shim calls it (see docs/runtime-contract.md).

    labkit-runtime [--root DIR] [--log FILE] [--log-format json|text] [--debug] VERB [OPTIONS] ID ...

Every `docker run` calls the runtime several times (create, start, delete at least), so each call
imports only what its verb needs: this module is stdlib-only, `state`, `kill` and `list` read a
JSON file and /proc, and only `create` and `exec` load the code that builds a container.
"""
from __future__ import annotations

import os
import sys
import time

VERSION = "0.1.0"
# verb -> (module, function, {option: takes a value?}, {short: long}, positional names)
VERBS = {
    "create": ("create", "create", {"bundle": True, "pid-file": True, "console-socket": True,
                                    "no-pivot": False, "no-new-keyring": False, "preserve-fds": True},
               {"b": "bundle"}, ["id"]),
    "run": ("create", "run", {"bundle": True, "pid-file": True, "no-pivot": False}, {"b": "bundle"}, ["id"]),
    "start": ("verbs", "start", {}, {}, ["id"]),
    "state": ("verbs", "state", {}, {}, ["id"]),
    "kill": ("verbs", "kill", {"all": False}, {"a": "all"}, ["id", "signal?"]),
    "delete": ("verbs", "delete", {"force": False}, {"f": "force"}, ["id"]),
    "list": ("verbs", "list_", {"format": True, "quiet": False}, {"f": "format", "q": "quiet"}, []),
    "ps": ("verbs", "ps", {"format": True}, {"f": "format"}, ["id", "ps-args*"]),
    "pause": ("verbs", "pause", {}, {}, ["id"]),
    "resume": ("verbs", "resume", {}, {}, ["id"]),
    "update": ("resources", "update", {"resources": True}, {"r": "resources"}, ["id"]),
    "events": ("resources", "events", {"stats": False, "interval": True}, {}, ["id"]),
    "features": ("verbs", "features", {}, {}, []),
    "exec": ("exec", "exec_", {"process": True, "detach": False, "pid-file": True, "console-socket": True,
                                "tty": False, "cwd": True, "env": True, "user": True},
             {"p": "process", "d": "detach", "t": "tty", "e": "env", "u": "user"}, ["id", "command*"]),
}
GLOBAL = {"root": True, "log": True, "log-format": True, "debug": False, "systemd-cgroup": False,
          "rootless": True, "criu": True}


class UsageError(Exception):
    pass


class Options(dict):
    """Parsed options: opts["pid-file"], opts.get("force"), plus .verb and positional names."""

    def __getattr__(self, name):
        return self.get(name.replace("_", "-"))


def _parse(argv: list[str], flags: dict, short: dict, positional: list[str], where: str,
           stop_at_positional: bool = False):
    """Options (--name value, --name=value, -x value) and positional arguments, in runc's style."""
    opts, rest, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i + 1:]
            break
        if arg.startswith("-") and arg != "-" and not (stop_at_positional and rest):
            name, eq, value = arg.lstrip("-").partition("=")
            name = short.get(name, name) if not arg.startswith("--") else name
            if name not in flags:
                raise UsageError(f"{where}: unknown option {arg.split('=')[0]!r} "
                                 f"(accepted: {', '.join('--' + f for f in flags) or 'none'})")
            if flags[name]:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise UsageError(f"{where}: option --{name} needs a value")
                    value = argv[i]
                if name == "env":
                    opts.setdefault(name, []).append(value)
                else:
                    opts[name] = value
            else:
                opts[name] = value.lower() not in ("false", "0") if eq else True
        else:
            rest.append(arg)
        i += 1
    for name in positional:
        if name.endswith("*"):
            opts[name[:-1]] = rest
            rest = []
        elif rest:
            opts[name.rstrip("?")] = rest.pop(0)
        elif not name.endswith("?"):
            raise UsageError(f"{where}: missing the {name.upper()} argument")
    if rest:
        raise UsageError(f"{where}: unexpected argument {rest[0]!r}")
    return opts


class Log:
    """runc's --log: one line per entry, JSON ({"level", "msg", "time"}) or text. containerd's shim
    reads the last "error" entry of this file to tell Docker why a call failed."""

    def __init__(self, path: str | None, fmt: str, debug: bool):
        self.path, self.fmt, self.debug = path, fmt, debug

    def write(self, level: str, msg: str) -> None:
        if not self.path:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
        if self.fmt == "json":
            from .plainjson import dumps      # a line every verb writes: json only if it must escape
            line = dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg="{msg}"'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The runtime claims no labkit- objects (containerd owns the container's life), so it needs no
    # watchdog; starting one would cost every call a second Python.
    os.environ["LABKIT_NO_WATCHDOG"] = "1"
    if argv and argv[0] in ("-v", "--version", "version"):
        print(f"labkit-runtime version {VERSION}\nspec: 1.0.2")
        return 0
    verb_at = 0
    while verb_at < len(argv) and argv[verb_at].startswith("-"):     # skip the global options
        name = argv[verb_at].lstrip("-")
        verb_at += 2 if "=" not in name and GLOBAL.get(name) else 1
    if verb_at >= len(argv):
        print(__doc__, file=sys.stderr)
        return 2
    log = Log(None, "text", False)
    verb = argv[verb_at]
    try:
        glob = _parse(argv[:verb_at], GLOBAL, {}, [], "labkit-runtime")
        log = Log(glob.get("log"), glob.get("log-format") or "text", bool(glob.get("debug")))
        if verb not in VERBS:
            raise UsageError(f"unknown command {verb!r} (commands: {', '.join(VERBS)})")
        module, function, flags, short, positional = VERBS[verb]
        opts = Options(_parse(argv[verb_at + 1:], flags, short, positional, verb,
                              stop_at_positional=verb in ("exec", "ps")))
        opts["root"] = glob.get("root") or "/run/labkit-runtime"
        opts["systemd-cgroup"] = bool(glob.get("systemd-cgroup"))   # create: the cgroup is a systemd scope
        opts["verb"] = verb
        log.write("info" if verb in ("create", "start", "delete", "exec", "run") else "debug",
                  f"{verb} {opts.get('id', '')}".strip())
        handler = getattr(__import__(f"labkit.runtime.{module}", fromlist=[function]), function)
        return handler(opts, log) or 0
    except UsageError as exc:
        log.write("error", str(exc))
        print(f"labkit-runtime: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line the shim can show
        message = str(exc) or type(exc).__name__
        log.write("error", message)
        print(message, file=sys.stderr)
        if os.environ.get("LABKIT_RUNTIME_TRACEBACK"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
