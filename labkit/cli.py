"""`labkit` on the command line: doctor, spawn, cleanup, and one subcommand per chapter.

Each subcommand is one `_cmd_<name>(args) -> exit status` function plus its parser lines in
`build_parser`. LabkitError becomes a one-line message on stderr and exit status 2 (bad input) or 1.
Each `_cmd_` function imports the labkit modules it needs inside itself, on purpose: `labkit run`
should not pay for loading pyroute2's friends, qemu helpers or the engine (start-up speed). For the
same reason argparse and json are imported where they are used: `labkit run` parses its own
arguments (`_parse_run`) and only falls back to argparse for --help or a mistake.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from .errors import InvalidValue, LabkitError


# --- doctor ----------------------------------------------------------------------------------------

def _cmd_doctor(args) -> int:
    import json
    from . import doctor

    report = doctor.probe(check_kvm=args.kvm)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if not report.problems else 1
    print(f"kernel       {report.kernel} ({report.arch})")
    print(f"cgroup mode  {report.cgroup_mode}")
    lab_runs = "the service deep-dive-lab" if report.init == "systemd" else "a background process"
    print(f"init         {report.init} (PID 1): the lab runs as {lab_runs}")
    parent = report.cgroup_parent
    if parent:
        delegated = (f"delegated by systemd at {parent['delegated_by']}" if parent["delegated_by"]
                     else "not delegated by systemd")
        print(f"cgroups in   {parent['path']} ({parent['source']}; {delegated}); "
              f"controllers there: {' '.join(parent['controllers']) or 'none'}")
    where = report.container
    if where:
        print(f"in a container  made by {where['engine']}; cgroup namespace {where['cgroup_namespace']}; "
              f"cgroups {where['cgroup_view']}")
    loops = report.loops
    print(f"loop devices {loops['nodes']} nodes in /dev, {loops['free']} free"
          + ("" if loops["auto_nodes"] else " (this /dev gets no new nodes by itself)"))
    print(f"root         {'yes' if report.root else 'no'}")
    print(f"lab host     {'yes' if report.lab_host else 'no'}")
    print("\ncontrollers  version  mounted at")
    for c in report.controllers:
        print(f"  {c.name:<10} v{c.version}       {c.mountpoint}")
    print("\nnamespace  available  since kernel  isolates")
    for ns in report.namespaces:
        print(f"  {ns['kind']:<8} {'yes' if ns['available'] else 'NO ':<10} {ns['min_kernel']:<13} {ns['isolates']}")
    print("\noptional tools")
    for name, path in report.tools.items():
        print(f"  {name:<9} {path or 'missing'}")
    kvm = report.kvm
    usable = {True: "usable", False: "present but not usable (VMs use TCG)", None: "not probed (--kvm)"}
    print(f"  {'kvm':<9} {usable[kvm['usable']] if kvm['device'] else 'no /dev/kvm (VMs use TCG)'}")
    print()
    for note in report.notes:
        print(f"note: {note}")
    if report.problems:
        print("verdict: NOT READY")
        for problem in report.problems:
            print(f"  - {problem}")
        return 1
    print("verdict: ready" + (" (in a container: see the notes)" if report.container else ""))
    return 0


# --- spawn -----------------------------------------------------------------------------------------

def _cmd_spawn(args) -> int:
    """`labkit spawn`: argv in new namespaces and a new cgroup; output passes through; all removed after."""
    import signal

    from . import namespaces
    from .cgroups import Cgroup
    from .nskinds import parse_kinds

    if not args.command:
        raise InvalidValue("command", "", "a command after `--`, e.g. labkit spawn --ns pid -- ps")
    kinds = {k.name for k in parse_kinds(args.ns)}      # refuse bad input before anything is created
    with Cgroup.create(memory=args.memory, cpu=args.cpu, pids=args.pids) as group:
        hostname = args.hostname if args.hostname is not None or "uts" not in kinds else group.name
        proc = namespaces.spawn(args.command, args.ns, cgroup=group, hostname=hostname)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            returncode = proc.wait()
        oom_killed = returncode == -signal.SIGKILL and group.oom_kills() > 0
    if oom_killed:
        print(f"labkit: {args.command[0]} was killed by the OOM killer "
              f"(memory limit {args.memory})", file=sys.stderr)
    elif returncode < 0:
        print(f"labkit: {args.command[0]} was killed by signal {-returncode}", file=sys.stderr)
    return returncode if returncode >= 0 else 128 - returncode    # what a shell reports: 128+N for signal N


# --- cleanup ---------------------------------------------------------------------------------------

def _cmd_cleanup(args) -> int:
    from . import cleanup

    if args.check:
        found = cleanup.find_all(include_in_use=args.all)
        if not found:
            print("labkit cleanup --check: nothing left behind")
            journal = cleanup.WATCHDOG_JOURNAL
            if journal.exists():  # not a failure, but a cleanup path that did not run: worth a look
                lines = journal.read_text().splitlines()
                print(f"  (the watchdog has cleaned up {len(lines)} object(s) after killed processes; "
                      f"see {journal})")
            return 0
        print(f"labkit cleanup --check: {len(found)} object(s) left behind:")
        for item in found:
            print("  " + item.describe())
        return 1
    removed = cleanup.sweep(include_in_use=args.all)
    for item in removed:
        print("removed " + item.describe())
    print(f"labkit cleanup: removed {len(removed)} object(s)")
    return 0


# --- vm (chapter 6) ---------------------------------------------------------------------------------

def _cmd_vm(args) -> int:
    import json
    import shlex

    from . import vm

    if args.vm_action == "fetch-kernel":
        kernel = vm.fetch_kernel()
        print(f"kernel {kernel.version}: {kernel.image} (modules in {kernel.modules})")
        return 0
    progress = None if args.quiet else vm.print_progress()
    common = dict(memory=args.memory, cpus=args.cpus, accel=args.accel, progress=progress)
    if args.vm_action == "boot":
        result = vm.boot(args.cmd, share_host=args.share_host, **common)
    else:
        if not args.command:
            raise InvalidValue("command", "", "a command after `--`, e.g. labkit vm run -- uname -a")
        live = None if args.json else print  # stream the guest's output as it comes
        result = vm.run(shlex.join(args.command), cwd=args.cwd, on_output=live, **common)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        if args.vm_action == "boot" and result.output:
            print(result.output)
        mib = result.guest_memtotal_kb / 1024
        print(f"accelerator   {result.accel} ({result.accel_reason})\n"
              f"boot to init  {result.boot_seconds:.2f} s   power-off {result.poweroff_seconds:.2f} s   "
              f"total {result.total_seconds:.2f} s\n"
              f"guest sees    kernel {result.guest_kernel}, {result.guest_cpus} CPU(s), "
              f"MemTotal {mib:.0f} MiB (host kernel {result.host_kernel})\n"
              f"qemu RSS      {result.qemu_rss_bytes / 2**20:.0f} MiB for a {result.memory_mib} MiB guest",
              file=sys.stderr if args.vm_action == "run" else sys.stdout)
    return result.returncode if result.returncode is not None else 0


# --- lab: JupyterLab for the workbook (labkit/lab.py) -------------------------------------------------

def _cmd_lab(args) -> int:
    import json
    from . import lab

    settings = lab.load_settings(args.config_dir or lab.CONFIG_DIR, args.run_dir or lab.RUN_DIR, ip=args.ip, port=args.port,
                                 notebook_dir=args.notebook_dir)
    if args.lab_action == "url":
        print(lab.url(settings))
        return 0
    if args.lab_action == "serve":
        lab.serve(settings)                  # execs JupyterLab: does not return
        return 1
    if args.lab_action == "leaf":
        lab.exec_in_leaf(args.command)       # execs the command: does not return
        return 1
    if args.command:
        raise InvalidValue("command", " ".join(args.command), f"nothing: only `lab leaf -- CMD` takes one, "
                           f"not `lab {args.lab_action}`")
    if args.lab_action == "start":
        result = lab.start(settings, mode=args.mode)
        verb = "started" if result["started"] else "already running"
        print(f"JupyterLab {verb} ({result['mode']}, listening on {settings.ip}:{settings.port}, "
              f"notebooks in {settings.notebook_dir})")
        print(lab.url(settings))
        return 0
    if args.lab_action == "stop":
        print("JupyterLab stopped" if lab.stop(settings) else "JupyterLab was not running")
        return 0
    settings.validate()
    state = lab.status(settings)
    if not args.quiet:
        print(json.dumps(state, indent=2) if args.json else
              f"JupyterLab: {'running' if state['running'] else 'not running'} ({state['mode']})"
              f"{', answers' if state['answers'] else ''}"
              f"{'' if state['as_configured'] or not state['running'] else ', with other settings'}"
              f" - {state['url']}")
    return 0 if state["running"] and state["answers"] and state["as_configured"] else 3


# --- run: a container from an image or an OCI bundle (labkit/container.py, labkit/oci.py) -----------

def _cmd_run(args) -> int:
    import signal
    from . import container

    container.ONE_SHOT = True       # this process starts one container and exits: it forks it itself

    if args.bundle:
        if args.command or args.image or args.memory or args.cpu or args.pids or args.hostname:
            raise InvalidValue("arguments", " ".join(args.command) or "--image/--memory/...",
                               "nothing besides --bundle DIR [--name] (the bundle's config.json says it all)")
        from . import oci
        bundle = oci.load(args.bundle)
        for note in bundle.not_enforced if args.verbose else ():
            print(f"labkit: note: {note}", file=sys.stderr)
        box, console_size = bundle.container(name=args.name), bundle.console_size
    else:
        if not args.command:
            raise InvalidValue("command", "", "a command after `--`, e.g. labkit run -- sh -c 'hostname'")
        box = container.Container(args.image or "busybox", args.command, name=args.name,
                                  hostname=args.hostname, memory=args.memory, cpu=args.cpu,
                                  pids_limit=args.pids, attach=True)
    with box:
        if box.tty:         # a bundle's process.terminal: a pty of its own, on our terminal
            _run_on_our_terminal(box, console_size)
        else:
            box.start()
        try:
            returncode = box.wait()
        except KeyboardInterrupt:
            box.kill(signal.SIGKILL)
            returncode = box.wait()
        if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) and box.oom_killed():
            print(f"labkit: {box.command[0]} was killed by the OOM killer (memory limit {box.limits.get('memory')})",
                  file=sys.stderr)
    return returncode if returncode >= 0 else 128 - returncode


def _run_on_our_terminal(box, console_size) -> None:
    """What `runc run` does with process.terminal: pid 1 gets a pty of the container's devpts,
    sized before it runs (the bundle's consoleSize, else our terminal's), and our terminal,
    raw meanwhile, is relayed to it until the container's side closes (labkit/ptyrelay.py)."""
    from . import ptyrelay

    box.create()
    size = console_size or ptyrelay.size_of(1)
    if size:
        ptyrelay.set_size(box.tty_master, *size)
    with ptyrelay.ours_raw(box.tty_master):
        box.start()
        ptyrelay.relay(box.tty_master)


# --- engine and trace (chapter 5, labkit/engine/) ---------------------------------------------------

def _cmd_engine(args) -> int:
    from .engine import server

    print(f"labkit engine: Docker Engine API {server.api.API_VERSION} on {args.socket} "
          f"(DOCKER_HOST=unix://{args.socket}); Ctrl-C stops it and removes its containers",
          file=sys.stderr, flush=True)
    server.serve(args.socket, server.parse_image_options(args.image), verbose=args.verbose, owner=args.owner)
    return 0


def _cmd_trace(args) -> int:
    from .engine import tracer

    tracer.serve(args.socket, args.upstream)
    return 0


# --- net (chapter 3, labkit/net/) --------------------------------------------------------------------

def _cmd_net(args) -> int:
    from . import net

    if args.action == "show":               # read-only: every named lab namespace, as netlink reports it
        namespaces = net.lab_namespaces()
        if not namespaces:
            print("no labkit network namespaces in /run/netns")
            return 0
        topology = net.read_topology(namespaces)
        print(topology.describe())
        if args.png:
            net.draw(topology, title="labkit network namespaces").savefig(args.png, dpi=100)
            print(f"drawn to {args.png}")
        return 0
    # demo: N bare namespaces on a bridge, pinged (and measured), then everything removed
    if not 1 <= args.members <= 50:
        raise InvalidValue("--members", args.members, "1 to 50")
    with net.Network(members=[None] * args.members, subnet=args.subnet) as network:
        print(network.topology().describe())
        matrix = network.reachability()
        print("\n" + net.format_matrix(matrix))
        if args.throughput and len(network.endpoints) >= 2:
            a = network.endpoints[0]
            for result in (network.throughput(0, 1),
                           net.measure_throughput(a.namespace, a.namespace, "127.0.0.1")):
                print(f"{result.path:<12} {result.gbit_per_s:6.2f} Gbit/s")
        if args.png:
            network.draw(title="labkit net demo").savefig(args.png, dpi=100)
            print(f"drawn to {args.png}")
    return 0 if all(matrix.values()) else 1


# --- the parser: one function per subcommand ------------------------------------------------------

def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="what this machine can do for the lab")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--kvm", action="store_true", help="also boot a tiny VM to see whether KVM works")
    p.set_defaults(func=_cmd_doctor)


def _add_spawn(sub) -> None:
    import argparse

    p = sub.add_parser("spawn", help="run a command in new namespaces and a fresh cgroup")
    p.add_argument("--ns", default="all",
                   help="namespace kinds, comma-separated (cgroup,ipc,mnt,net,pid,time,user,uts) or 'all'")
    p.add_argument("--memory", help="memory limit, e.g. 64M")
    p.add_argument("--cpu", help="CPU limit as a fraction of one CPU, e.g. 0.5")
    p.add_argument("--pids", help="maximum number of processes")
    p.add_argument("--hostname", help="hostname inside (with the uts namespace)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_cmd_spawn)


def _add_cleanup(sub) -> None:
    p = sub.add_parser("cleanup", help="remove what dead labkit processes left behind")
    p.add_argument("--check", action="store_true", help="only list leftovers; exit 1 if there are any")
    p.add_argument("--all", action="store_true", help="include objects of live labkit processes")
    p.set_defaults(func=_cmd_cleanup)


def _add_engine(sub) -> None:
    p = sub.add_parser("engine", help="labkit's Docker-API-compatible engine (chapter 5)")
    engine_sub = p.add_subparsers(dest="engine_action", required=True)
    q = engine_sub.add_parser("serve", help="serve the Docker Engine API on a unix socket (root only)")
    q.add_argument("--socket", required=True, help="unix socket path, e.g. /run/labkit/engine.sock")
    q.add_argument("--image", action="append", metavar="NAME=DIR",
                   help="also offer the root filesystem DIR as image NAME (repeatable)")
    q.add_argument("--verbose", action="store_true", help="log every request on stderr")
    q.add_argument("--owner", type=int, metavar="PID",
                   help="stop (and remove the containers) when process PID, the engine's parent, exits")
    q.set_defaults(func=_cmd_engine)


def _add_trace(sub) -> None:
    p = sub.add_parser("trace", help="record every Docker API call passing through a proxy socket")
    p.add_argument("--socket", required=True, help="the proxy's unix socket: DOCKER_HOST=unix://SOCKET")
    p.add_argument("--upstream", default="/var/run/docker.sock", help="the real API socket")
    p.set_defaults(func=_cmd_trace)


def _add_vm(sub) -> None:
    import argparse

    p = sub.add_parser("vm", help="a disposable qemu VM (Debian's kernel, busybox initramfs)")
    vm_sub = p.add_subparsers(dest="vm_action", required=True)
    for action, text in (("boot", "boot a VM, report what it sees, power it off"),
                         ("run", "run a command in a VM that sees the host's files read-only")):
        q = vm_sub.add_parser(action, help=text)
        q.add_argument("--json", action="store_true", help="machine-readable result")
        q.add_argument("--memory", default="256M" if action == "boot" else "512M", help="guest RAM")
        q.add_argument("--cpus", default=1, help="virtual CPUs")
        q.add_argument("--accel", default="auto", help="auto (KVM if it really works, else TCG), kvm, tcg")
        q.add_argument("--quiet", action="store_true", help="no progress line")
        q.set_defaults(func=_cmd_vm)
        if action == "boot":
            q.add_argument("--cmd", help="a shell command to run in the guest (busybox, or the host's "
                                         "files with --share-host)")
            q.add_argument("--share-host", action="store_true", help="share the host's / read-only over 9p")
        else:
            q.add_argument("--cwd", default="/", help="working directory in the guest")
            q.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    q = vm_sub.add_parser("fetch-kernel", help="apt-get download + dpkg -x Debian's kernel into the cache")
    q.set_defaults(func=_cmd_vm)


def _add_lab(sub) -> None:
    p = sub.add_parser("lab", help="JupyterLab for the workbook: url, start, stop, status")
    p.add_argument("lab_action", choices=("url", "start", "stop", "status", "serve", "leaf"),
                   help="serve = run it in the foreground (what the service runs); leaf -- CMD = exec "
                        "CMD in the jupyter/ leaf cgroup on v2 (a classroom learner's server)")
    p.add_argument("--ip", help="listen address (default 127.0.0.1; 0.0.0.0 inside a VM)")
    p.add_argument("--port", help="port (default 8888)")
    p.add_argument("--notebook-dir", help="directory JupyterLab serves (default: the repo's notebooks/)")
    p.add_argument("--mode", default="auto", help="auto (systemd if PID 1 is systemd), systemd, direct")
    p.add_argument("--config-dir", help="where the token and settings live (/etc/labkit)")
    p.add_argument("--run-dir", help="pid file and log (/run/labkit/lab)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--quiet", action="store_true", help="status: only the exit code (0 = running as set)")
    # "*", not argparse.REMAINDER: a REMAINDER positional swallows every option after the action
    # (`lab start --port 9000` would start on the saved port); `leaf -- CMD --its-options` still works
    p.add_argument("command", nargs="*", help="leaf: the command to exec, after --")
    p.set_defaults(func=_cmd_lab)


# `labkit run`'s options, each with a value: argparse is built from this table, and so is the parser
# that `labkit run` uses itself (_parse_run)
RUN_OPTIONS = {
    "--bundle": "an OCI bundle directory (config.json + rootfs, e.g. from `runc spec`)",
    "--image": "image to run (default: busybox, built offline)",
    "--name": "container name (made labkit-NAME); two at once: the second fails",
    "--memory": "memory limit, e.g. 64M",
    "--cpu": "CPU limit as a fraction of one CPU, e.g. 0.5",
    "--pids": "maximum number of processes",
    "--hostname": "hostname inside (default: the container's name)",
}


def _add_run(sub) -> None:
    import argparse

    p = sub.add_parser("run", help="run a command in a container (busybox image) or an OCI bundle")
    for flag, text in RUN_OPTIONS.items():
        p.add_argument(flag, help=text)
    p.add_argument("-v", "--verbose", action="store_true", help="with --bundle: say which fields are not enforced")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_cmd_run)


def _parse_run(argv: list[str]):
    """`labkit run`'s arguments, parsed without argparse: importing it (with gettext, locale and
    shutil) is about 4 ms of a command that runc's speed is the measure of. Takes what argparse
    takes for the common case - the options of RUN_OPTIONS as `--opt VALUE` or `--opt=VALUE`, -v,
    then the command, after `--` or not - and returns None for anything else (--help, an unknown
    or abbreviated option, a missing value), which argparse then parses, and explains."""
    values = {flag[2:]: None for flag in RUN_OPTIONS}
    verbose, rest = False, list(argv)
    while rest and rest[0].startswith("-") and rest[0] != "--":    # main() drops the "--", as after argparse
        arg = rest.pop(0)
        if arg in ("-v", "--verbose"):
            verbose = True
            continue
        flag, given, value = arg.partition("=")
        if flag not in RUN_OPTIONS:
            return None
        if not given:
            if not rest or rest[0].startswith("-"):
                return None
            value = rest.pop(0)
        values[flag[2:]] = value
    return SimpleNamespace(**values, verbose=verbose, command=rest, func=_cmd_run)


def _add_net(sub) -> None:
    p = sub.add_parser("net", help="container networks: show lab namespaces, or a bridge demo (chapter 3)")
    p.add_argument("action", choices=["show", "demo"], help="show: read /run/netns/labkit-* over netlink; "
                   "demo: N namespaces on a bridge, pinged, then removed")
    p.add_argument("--members", type=int, default=3, help="demo: how many namespaces (default 3)")
    p.add_argument("--subnet", default="198.18.0.0/24", help="demo: a subnet of 198.18.0.0/16")
    p.add_argument("--throughput", action="store_true", help="demo: also measure veth+bridge vs loopback")
    p.add_argument("--png", help="also draw the topology into this PNG file")
    p.set_defaults(func=_cmd_net)

SUBCOMMANDS = {"doctor": _add_doctor, "spawn": _add_spawn, "cleanup": _add_cleanup, "engine": _add_engine,
               "trace": _add_trace, "vm": _add_vm, "lab": _add_lab, "run": _add_run, "net": _add_net}


def build_parser(only: str | None = None) -> "argparse.ArgumentParser":
    """The whole parser; with `only`, just that subcommand's (argparse builds every subparser it is
    given, and for `labkit run` that was a fifth of the command's start-up)."""
    import argparse

    parser = argparse.ArgumentParser(prog="labkit", description="Containers from kernel primitives.")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    for name, add in SUBCOMMANDS.items():
        if only is None or name == only:
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argv[0] if argv else None
    args = _parse_run(argv[1:]) if first == "run" else None
    if args is None:
        args = build_parser(first if first in SUBCOMMANDS else None).parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return args.func(args)
    except InvalidValue as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 2
    except LabkitError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def command() -> None:
    """The installed `labkit` program (pyproject.toml's entry point).

    `labkit run` must start a container about as fast as `runc run` does: once it has finished and
    its output is flushed, it leaves without the interpreter's orderly teardown of the 150 modules
    it loaded (about 8 ms of CPU, a tenth of the command). Nothing is skipped that matters: the
    container is gone and its objects released by then, and the one exit handler registered
    (labkit.starter's) only closes a socket, which the kernel closes at exit anyway."""
    try:
        code = main()
        sys.stdout.flush()   # a reader that went away shows here, not in the interpreter's teardown
    except BrokenPipeError:
        # `labkit ... | head`: the reader has what it wanted. Stop quietly, with the status a shell
        # gives a program that SIGPIPE killed (128 + 13), and let nothing write to the pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    if sys.argv[1:2] == ["run"]:
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    command()
