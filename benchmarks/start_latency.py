"""Container start-to-exit latency of /bin/true: labkit (in-process and CLI) against runc, unshare, Docker.

    LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/start_latency.py [--runs 30]

Every row runs /bin/true from the same busybox root filesystem (labkit's base layer; exported to
an OCI bundle for runc and imported as an image for Docker) in new pid, mount, uts, ipc and net
namespaces with a memory/cpu/pids cgroup (128M, 1 CPU, 64 pids):

    labkit API      labkit.container.run(...) from a small Python process (about 20 MiB: labkit
                    only): overlay rootfs on tmpfs, cgroup, the start through labkit.starter (fork,
                    unshare, pivot_root, exec), tini as pid 1, wait, everything removed
    labkit API, notebook-sized
                    the same from a process the size of a notebook kernel (numpy and matplotlib
                    loaded, about 370 MiB resident): the starter keeps its start from costing more
    labkit CLI      `labkit run --memory .. --cpu .. --pids .. -- /bin/true`, as a whole process
    labkit bundle   `labkit run --bundle DIR`, the same bundle runc runs (bind-mounted, read-only root)
    runc            `runc run` on that bundle (Debian's runc 1.1.5)
    unshare         `unshare --fork --pid --mount --uts --ipc --net /bin/true`: no rootfs, no cgroup -
                    the floor
    docker          `docker run --rm --network none ...` (Debian's docker.io; labkit.dockerd uses the
                    running daemon or starts one with network-safe flags; if that fails the row is
                    skipped, with the reason)

The rows are interleaved (one run of each, repeated), so a noisy neighbour on this 2-core machine
slows all of them alike - except Docker, which runs last in a block of its own (its daemons keep
working after `docker run --rm` returns, and that work would land on whichever row came next).
For the same reason, after each `labkit run` the script waits, untimed, for the watchdog process that
run started (labkit/watchdog.py: it sweeps once and exits when its owner is gone). Prints a table with the median, the interquartile range and the ratio to
runc, and writes benchmarks/results/start_latency.{png,json,md}. It also reports the CPU time each start
used (the caller and its children, from getrusage; for the API rows the calling process and its
starter, from /proc/PID/stat), as a mean per start: on a machine shared with other work, wall time
includes waiting for a CPU, CPU time much less so. (Docker's CPU time is mostly dockerd's and
containerd's, which are not our children, so it is undercounted.)

Below the table, a breakdown of one API start by phase (medians), from time stamps that the starter
and the container's process take on the way (labkit.starter.StartedProcess.stamps) and from timing
the owner's own steps (cgroup creation, overlay mount, teardown).

The two API rows run in helper processes of this script (`--serve small|notebook`), started once
and asked for one start at a time, so both are measured the same way and interleaved with the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MEMORY, CPU, PIDS = 128 * 2**20, 1.0, 64
NAMESPACES = ["pid", "network", "ipc", "uts", "mount"]
LABKIT = [str(Path(sys.executable).with_name("labkit"))]


def make_bundle(directory: Path) -> Path:
    """An OCI bundle as `runc spec` writes it, running /bin/true from the busybox base layer."""
    from labkit import rootfs

    directory.mkdir()
    subprocess.run(["runc", "spec"], cwd=directory, check=True)
    rootfs.export(directory / "rootfs")
    config = json.loads((directory / "config.json").read_text())
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config["hostname"] = "bench"
    # An absolute cgroupsPath: without one runc nests its cgroup under the caller's own cgroup
    # (on this machine a subtree that is not ours). Not labkit-*: labkit's sweeps must not take it.
    config["linux"]["cgroupsPath"] = f"/bench-runc-{os.getpid()}"
    config["linux"]["namespaces"] = [{"type": t} for t in NAMESPACES]
    config["linux"]["resources"].update({"memory": {"limit": MEMORY},
                                         "cpu": {"quota": int(CPU * 100_000), "period": 100_000},
                                         "pids": {"limit": PIDS}})
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def start_docker(stack: contextlib.ExitStack, rootfs_dir: Path) -> tuple[str | None, str | None]:
    """(image, None) when Docker can run the busybox image; (None, why not) otherwise.

    labkit.dockerd uses a running daemon, or starts one with its network-safe flags and stops it
    again when the last labkit user leaves; the image is imported from the same root filesystem.
    """
    from labkit import dockerd
    from labkit.errors import LabkitError

    if not dockerd.available():
        return None, "docker is not installed (apt-get install docker.io)"
    try:
        daemon = stack.enter_context(dockerd.Dockerd())
        image = dockerd.import_rootfs(rootfs_dir)
    except LabkitError as exc:
        return None, f"no Docker daemon: {exc}"
    stack.callback(dockerd.remove_image, image)
    return image, None


def boot_clock() -> float:
    """Now, on the clock /proc/PID/stat's start times count on (seconds since boot)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def watchdogs_started_since(since: float) -> list[int]:
    """Live watchdog processes (labkit.watchdog.running) that started at or after `since`
    (boot_clock(); less one clock tick, the resolution of a start time)."""
    from labkit import watchdog

    tick = 1 / os.sysconf("SC_CLK_TCK")
    return [pid for pid, (_, started) in watchdog.running().items() if started >= since - tick]


def settle(since: float, timeout: float = 5.0) -> None:
    """Wait (outside the timed part) until the watchdogs that the timed run started (a `labkit run`
    starts one; see labkit/forking.py for why it is a fork) have finished: each sweeps once its
    owner is gone, and left running it would slow whichever row comes next instead of the row
    that caused it. The API helpers' watchdogs started in the warm-up, before `since`."""
    deadline = time.monotonic() + timeout
    while watchdogs_started_since(since) and time.monotonic() < deadline:
        time.sleep(0.01)


def timed(fn) -> tuple[float, float]:
    """(wall ms, CPU ms): CPU time of this process and its children, which a busy neighbour on the
    machine inflates much less than wall time. A row that measures itself returns its own pair."""
    import resource
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    measured = fn()
    if measured is not None:
        return measured
    wall = (time.perf_counter() - start) * 1000
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum((a.ru_utime + a.ru_stime) - (b.ru_utime + b.ru_stime) for a, b in zip(after, before))
    return wall, cpu * 1000


# --- the API rows: a helper process that starts containers when asked ---------------------------

# (phase, from, to): stamps of labkit.starter.StartedProcess.stamps, or the owner's own timers
PHASES = (
    ("cgroup creation", "cgroup", None),
    ("overlay mount", "mount", None),
    ("request to the starter", "request", "received"),
    ("fork + unshare (spawn)", "received", "placing"),
    ("join the cgroup", "placing", "placed"),
    ("pivot_root, /proc /dev /sys, caps", "placed", "ready"),
    ("exec", "ready", "execd"),
    ("reply to the owner", "execd", "started_seen"),
    ("run + exit (tini, /bin/true)", "started_seen", "exited_seen"),
    ("teardown", "delete", None),
)
NOTEBOOK_RSS = 370 * 2**20


def serve(size: str) -> int:
    """The helper: start one container per line read from stdin, answer with a JSON line."""
    import functools
    import resource
    from labkit import container, rootfs, starter
    from labkit.cgroups import Cgroup

    ballast = None
    if size == "notebook":               # what a notebook kernel carries: numpy, matplotlib, data
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy
        plt.figure()
        ballast = numpy.ones(max(NOTEBOOK_RSS - rss(), 0) // 8)   # written: resident, not just mapped
    timers: dict[str, float] = {}

    def timer(owner, name, key):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed_call(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers[key] = (time.perf_counter() - began) * 1000
        setattr(owner, name, timed_call)

    timer(Cgroup, "create", "cgroup")
    timer(rootfs.RootFS, "mount", "mount")
    timer(container.Container, "delete", "delete")
    started = []
    spawn = starter.spawn
    starter.spawn = lambda *args, **kwargs: started.append(spawn(*args, **kwargs)) or started[-1]
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_ms() -> float:
        """This process's CPU time and its starter's (with the shims and containers it reaped)."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        fields = Path(f"/proc/{starter.pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (own.ru_utime + own.ru_stime) * 1000 + sum(int(f) for f in fields[11:15]) * 1000 / ticks

    print(json.dumps({"rss_mib": rss() / 2**20, "ballast": ballast is not None}), flush=True)
    for _ in sys.stdin:
        timers.clear()
        started.clear()
        cpu0, began = cpu_ms(), time.perf_counter()
        result = container.run("busybox", ["/bin/true"], memory=MEMORY, cpu=CPU, pids_limit=PIDS)
        wall = (time.perf_counter() - began) * 1000
        cpu = cpu_ms() - cpu0
        assert result.returncode == 0, result
        stamps = {**started[0].stamps, **timers}
        phases = {}
        for name, first, last in PHASES:
            if last is None:
                phases[name] = stamps.get(first)
            elif first in stamps and last in stamps:
                phases[name] = (stamps[last] - stamps[first]) * 1000
        phases["rest (Python around it)"] = wall - sum(v for v in phases.values() if v is not None)
        print(json.dumps({"wall": wall, "cpu": cpu, "phases": phases}), flush=True)
    return 0


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Helper:
    """A `--serve` helper process, asked for one start at a time."""

    def __init__(self, size: str):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", size], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self.proc.stdout.readline())
        self.phases: list[dict] = []

    def run(self) -> tuple[float, float]:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the API helper died ({self.proc.wait()})")
        answer = json.loads(line)
        self.phases.append(answer["phases"])
        return answer["wall"], answer["cpu"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def breakdown(helpers: dict[str, Helper]) -> list[str]:
    """A table of phase medians, one column per helper."""
    names = [name for name, _, _ in PHASES] + ["rest (Python around it)"]
    lines = ["", "One API start, by phase (median ms; from the starter's time stamps and the owner's timers):",
             "", "| phase" + " " * 29 + "| " + " | ".join(f"{label:>16}" for label in helpers) + " |",
             "|" + "-" * 35 + "|" + "|".join("-" * 18 for _ in helpers) + "|"]
    for name in names:
        cells = []
        for helper in helpers.values():
            values = [p[name] for p in helper.phases if p.get(name) is not None]
            cells.append(f"{statistics.median(values):>16.2f}" if values else f"{'-':>16}")
        lines.append(f"| {name:<33} | " + " | ".join(cells) + " |")
    return lines


def check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per row (at least 20)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker row")
    parser.add_argument("--serve", choices=["small", "notebook"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    if args.runs < 20:
        parser.error("--runs: at least 20")
    from labkit import cleanup, host

    host.require_lab_host("benchmark container starts")
    stack = contextlib.ExitStack()
    work = Path(tempfile.mkdtemp(prefix="labkit-bench-"))
    # The CLI rows run as an installed package would: with compiled bytecode. (This environment sets
    # PYTHONDONTWRITEBYTECODE, which would make every `labkit run` compile labkit from source.) A
    # cache directory, kept: the watchdogs the CLI runs start outlive this script and import too.
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labkit" / "pycache"
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    counter = iter(range(10**9))
    try:
        bundle = make_bundle(work / "bundle")
        skipped = {}
        docker_image, docker_reason = (None, "--no-docker") if args.no_docker else \
            start_docker(stack, bundle / "rootfs")
        if docker_reason:
            skipped["docker"] = docker_reason

        helpers = {"small": Helper("small"), "notebook-sized": Helper("notebook")}
        stack.callback(lambda: [helper.close() for helper in helpers.values()])


        def cli(argv, what):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            out, err = proc.communicate()
            check(subprocess.CompletedProcess(argv, proc.returncode, out, err), what)

        def labkit_cli():
            cli([*LABKIT, "run", "--memory", str(MEMORY), "--cpu", str(CPU), "--pids", str(PIDS), "--",
                 "/bin/true"], "labkit run")

        def labkit_bundle():
            cli([*LABKIT, "run", "--bundle", str(bundle)], "labkit run --bundle")

        def runc():
            check(subprocess.run(["runc", "run", "-b", str(bundle), f"bench-{os.getpid()}-{next(counter)}"],
                                 capture_output=True, stdin=subprocess.DEVNULL), "runc run")

        def unshare():
            check(subprocess.run(["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "/bin/true"],
                                 capture_output=True), "unshare")

        def docker():
            from labkit import dockerd
            name = f"labkit-bench-{os.getpid()}-{next(counter)}"
            cleanup.claim("docker-container", name)    # ours: a sweep must not remove it mid-run
            try:
                check(subprocess.run([dockerd.DOCKER, "run", "--rm", "--network", "none", "--memory", str(MEMORY),
                                      "--cpus", str(CPU), "--pids-limit", str(PIDS), "--name", name,
                                      docker_image, "/bin/true"], capture_output=True), "docker run")
            finally:
                cleanup.release("docker-container", name)

        rows = {"labkit API": helpers["small"].run, "labkit API, notebook": helpers["notebook-sized"].run,
                "labkit CLI": labkit_cli, "labkit bundle": labkit_bundle, "runc": runc,
                "unshare (floor)": unshare}
        if "docker" not in skipped:
            rows["docker"] = docker
        times: dict[str, list[float]] = {name: [] for name in rows}
        cpu_times: dict[str, list[float]] = {name: [] for name in rows}
        for fn in rows.values():       # warm up: page cache, image store, first-import costs
            fn()
        for helper in helpers.values():
            helper.phases.clear()
        # Docker's daemons go on working after `docker run --rm` returns (removing the container,
        # its shim exiting); interleaved, that work would land on the next row. So Docker runs last,
        # in a block of its own; the other rows are interleaved.
        order = [[name for name in rows if name != "docker"]] * args.runs + \
            [["docker"]] * (args.runs if "docker" in rows else 0)
        for run, names in enumerate(order):
            for name in [n for n in names if n in rows]:
                fn = rows[name]
                since = boot_clock()
                try:
                    wall, cpu = timed(fn)
                except SystemExit as exc:
                    if name != "docker":
                        raise
                    # dockerd belongs to another part of the lab and may be stopped under us
                    skipped[name] = f"failed after {len(times[name])} runs: {exc}"
                    del rows[name], times[name], cpu_times[name]
                    continue
                times[name].append(wall)
                cpu_times[name].append(cpu)
                settle(since)
            print(f"\rround {run + 1}/{len(order)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        stack.close()                   # the image, and the daemon if we started it

    summary = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        summary[name] = {"median_ms": statistics.median(values), "p25_ms": q[0], "p75_ms": q[2],
                         "min_ms": min(values), "runs": len(values),
                         "cpu_mean_ms": statistics.fmean(cpu_times[name])}
    runc_median = summary["runc"]["median_ms"]
    for name in summary:
        summary[name]["ratio_to_runc"] = summary[name]["median_ms"] / runc_median

    lines = [f"Container start-to-exit latency, /bin/true, busybox rootfs, pid+mnt+uts+ipc+net namespaces, "
             f"cgroup memory {MEMORY // 2**20}M / cpu {CPU:g} / pids {PIDS}; median of {args.runs} interleaved runs"
             f"; the API helpers: {helpers['small'].info['rss_mib']:.0f} MiB and "
             f"{helpers['notebook-sized'].info['rss_mib']:.0f} MiB resident",
             "", f"| {'what':<20} | {'median ms':>9} | {'IQR ms':>13} | {'x runc':>6} | {'CPU ms/start':>12} | {'CPU x runc':>10} |",
             f"|{'-' * 22}|{'-' * 11}|{'-' * 15}|{'-' * 8}|{'-' * 14}|{'-' * 12}|"]
    for name, s in summary.items():
        lines.append(f"| {name:<20} | {s['median_ms']:>9.1f} | {s['p25_ms']:>5.1f} - {s['p75_ms']:<5.1f} | "
                     f"{s['ratio_to_runc']:>6.2f} | {s['cpu_mean_ms']:>12.1f} | "
                     f"{s['cpu_mean_ms'] / summary['runc']['cpu_mean_ms']:>10.2f} |")
    for name, reason in skipped.items():
        lines.append(f"| {name:<20} | {'skipped':>9} | {'':>13} | {'':>6} | {'':>12} | {'':>10} |")
    lines.append("")
    for name, reason in skipped.items():
        lines.append(f"{name} skipped: {reason}")
    api, notebook, cli, floor = (summary[k]["median_ms"] for k in
                                 ("labkit API", "labkit API, notebook", "labkit CLI", "unshare (floor)"))
    cpu = {k: summary[k]["cpu_mean_ms"] for k in ("labkit API", "labkit API, notebook", "runc")}
    lines += [f"targets: API <= 0.2x runc: {api / runc_median:.2f}x {'met' if api <= 0.2 * runc_median else 'MISSED'} "
              f"(CPU {cpu['labkit API'] / cpu['runc']:.2f}x); "
              f"notebook-sized <= 1.1x small: {notebook / api:.2f}x {'met' if notebook <= 1.1 * api else 'MISSED'} "
              f"(CPU {cpu['labkit API, notebook'] / cpu['labkit API']:.2f}x); "
              f"CLI <= 1.5x runc (issue 20): {cli / runc_median:.2f}x {'met' if cli <= 1.5 * runc_median else 'MISSED'}; "
              f"API = {api / floor:.1f}x unshare",
              f"load average during the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"]
    lines += breakdown(helpers)
    report = "\n".join(lines)
    print(report)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "start_latency.md").write_text(report + "\n")
    (RESULTS / "start_latency.json").write_text(json.dumps({"summary": summary, "skipped": skipped,
                                                            "phases_ms": {k: h.phases for k, h in helpers.items()},
                                                            "times_ms": times, "cpu_ms": cpu_times,
                                                            "loadavg": os.getloadavg()}, indent=1))
    if not args.no_plot:
        plot(summary, times, skipped, RESULTS / "start_latency.png")
    return 0


def plot(summary, times, skipped, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["#2a7ab0" if n.startswith("labkit") else "#999999" if "unshare" in n else "#c0504d" for n in names]
    medians = [summary[n]["median_ms"] for n in names]
    ax.barh(names, medians, color=colors)
    right = max(max(v) for v in times.values()) * 1.5
    for i, n in enumerate(names):
        ax.plot(times[n], [i] * len(times[n]), "|", color="black", alpha=0.35)
        ax.text(right, i, f" {medians[i]:.1f} ms  {summary[n]['ratio_to_runc']:.2f}x runc", va="center",
                fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(min(min(v) for v in times.values()) / 1.5, right * 8)
    ax.invert_yaxis()
    ax.set_xlabel("start-to-exit of /bin/true, ms (log scale; bars = median, ticks = each run)")
    load = os.getloadavg()[0]
    title = f"Container start latency (load average {load:.1f} on {os.cpu_count()} CPUs)"
    if skipped:
        title += " (" + ", ".join(f"{k} skipped" for k in skipped) + ")"
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
