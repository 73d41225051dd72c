"""`docker run --rm` through labkit-runtime against runc, and what one runtime call costs.

    LABKIT_ALLOW_HOST=1 .venv/bin/python benchmarks/docker_runtime.py [--runs 15]

Part 1, the whole command as a user sees it: `docker run --rm --network none --runtime R IMAGE true`
for R = runc and labkit, interleaved (one of each, repeated), median and interquartile range, and the
ratio labkit / runc. Each such command makes containerd's shim call the runtime at least four times
(create, start, delete, delete --force), so the runtime's own start-up counts four times over.

Part 2, one call: `state` of a running container, which only reads a JSON file and /proc, for
`labkit-runtime` (the path Docker runs: provisioning's /usr/local/lib/labkit/labkit-runtime, Python
with -I -S), `runc` and - the floor for any Python program - `python -c pass`. labkit-runtime's
verbs import only what they need (labkit/runtime/cli.py), so `state` should cost little more than
Python's own start.

Part 3, the CLI: `labkit run --memory 128M --cpu 1 --pids 64 -- /bin/true` against `runc run` of a
`runc spec` bundle with the same limits and namespaces (benchmarks/start_latency.py makes it), whole
processes, interleaved; after each `labkit run` the script waits, untimed, for the watchdog it started.

Part 4, where the difference is: the calls the shim makes for one `docker run` (create, start,
delete --force), made by hand on start_latency's bundle, for labkit-runtime and runc: the CPU time of
each (the rows ending in ", CPU").

Uses the running dockerd or starts one (labkit.dockerd); the image is labkit's busybox root imported
with `docker import`. Prints the two ratios the issue sets targets for (docker run <= 1.3x runc,
labkit run <= 1.5x runc) and writes benchmarks/results/docker_runtime.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STATE_ROOT = "/run/docker/runtime-runc/moby"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4)
    return {"median_ms": statistics.median(samples) * 1000, "iqr_ms": (q[2] - q[0]) * 1000, "runs": len(samples)}


def cli_against_runc(runs: int) -> dict[str, list[float]]:
    """Part 3: `labkit run` and `runc run`, one of each, `runs` times (after one untimed round)."""
    import shutil
    import tempfile

    from start_latency import CPU, MEMORY, PIDS, boot_clock, make_bundle, settle

    labkit = [str(Path(sys.executable).with_name("labkit")), "run", "--memory", str(MEMORY), "--cpu", str(CPU),
              "--pids", str(PIDS), "--", "/bin/true"]
    work = Path(tempfile.mkdtemp(prefix="labkit-bench-"))
    times = {"labkit run -- /bin/true": [], "runc run (same limits)": []}
    try:
        bundle = make_bundle(work / "bundle")
        for i in range(runs + 1):
            for name in times:
                argv = labkit if name.startswith("labkit") else ["runc", "run", "-b", str(bundle),
                                                                  f"bench-{os.getpid()}-{i}"]
                since, start = boot_clock(), time.perf_counter()
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                if proc.wait() != 0:
                    sys.exit(f"{' '.join(argv)} failed with status {proc.returncode}")
                if i:
                    times[name].append(time.perf_counter() - start)
                if name.startswith("labkit"):
                    settle(since)           # its watchdog, untimed: it would slow the next row
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


def runtime_calls(entry: str, runs: int) -> dict[str, list[float]]:
    """Part 4: the calls the shim makes for one `docker run`, by hand and one at a time - create,
    start, (the program exits), delete --force - on start_latency's `runc spec` bundle, for
    labkit-runtime (`entry`) and runc. Each value is the CPU time of that call and of the children
    it waited for (for create: labkit's forked helper; the container's pid 1 is neither's child)."""
    import resource
    import shutil
    import tempfile

    from start_latency import make_bundle

    def cpu_ms() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (usage.ru_utime + usage.ru_stime) * 1000

    work = Path(tempfile.mkdtemp(prefix="labkit-bench-"))
    times = {f"{name} {verb}": [] for name in ("labkit-runtime", "runc") for verb in ("create", "start", "delete")}
    try:
        bundle = make_bundle(work / "bundle")
        config = json.loads((bundle / "config.json").read_text())
        # runc spec's ambient set without inheritable is one labkit-runtime refuses (runc drops it)
        config["process"]["capabilities"].pop("ambient", None)
        (bundle / "config.json").write_text(json.dumps(config))
        for i in range(runs + 1):
            for name, binary in (("labkit-runtime", entry), ("runc", "runc")):
                cid = f"bench-{os.getpid()}-{i}"
                root = ["--root", str(work / f"state-{name}")]
                for verb, argv in (("create", ["create", "--bundle", str(bundle), "--pid-file", str(work / "pid"), cid]),
                                   ("start", ["start", cid]), ("delete", ["delete", "--force", cid])):
                    before = cpu_ms()
                    subprocess.run([binary, *root, *argv], check=True, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    if i:
                        times[f"{name} {verb}"].append((cpu_ms() - before) / 1000)
                    if verb == "start":        # until /bin/true has exited, as the shim waits for it
                        try:
                            pidfd = os.pidfd_open(int((work / "pid").read_text()))
                        except ProcessLookupError:
                            continue
                        select.select([pidfd], [], [], 10)
                        os.close(pidfd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    from labkit import cleanup, dockerd, rootfs

    with dockerd.Dockerd() as daemon:
        runtimes = json.loads(daemon.docker("info", "--format", "{{json .Runtimes}}").stdout)
        if "labkit" not in runtimes:
            sys.exit("labkit-runtime is not registered with Docker: run vagrant/provision.sh")
        image = dockerd.import_rootfs(rootfs.base_layer().path)
        box = cleanup.unique_name("bench")
        cleanup.claim("docker-container", box)
        try:
            docker = [dockerd.DOCKER, "run", "--rm", "--network", "none", "--runtime"]
            for runtime in ("runc", "labkit"):          # warm-up: page cache, bytecode
                timed([*docker, runtime, image, "true"])
            whole = {"runc": [], "labkit": []}
            for _ in range(args.runs):
                for runtime in whole:
                    whole[runtime].append(timed([*docker, runtime, image, "true"]))

            entry = runtimes["labkit"]["path"]             # what Docker itself runs
            cid = daemon.docker("run", "-d", "--network", "none", "--runtime", "labkit", "--name", box,
                                image, "sleep", "600").stdout.decode().strip()
            calls = {"python -c pass": [sys.executable, "-c", "pass"],
                     "labkit-runtime state": [entry, "--root", STATE_ROOT, "state", cid],
                     "runc state": ["runc", "--root", STATE_ROOT, "state",
                                    daemon.docker("run", "-d", "--network", "none", "--runtime", "runc",
                                                  image, "sleep", "600").stdout.decode().strip()]}
            one = {name: [] for name in calls}
            for _ in range(args.runs * 2):
                for name, argv in calls.items():
                    one[name].append(timed(argv))
            daemon.docker("rm", "--force", calls["runc state"][-1], check=False)
        finally:
            daemon.docker("rm", "--force", box, check=False)
            cleanup.release("docker-container", box)
            dockerd.remove_image(image)

    cli = cli_against_runc(args.runs)
    calls = runtime_calls(entry, args.runs)

    rows = {f"docker run --rm --runtime {r} busybox true": summary(s) for r, s in whole.items()}
    rows.update({name: summary(s) for name, s in one.items()})
    rows.update({name: summary(s) for name, s in cli.items()})
    cpu_rows = {f"{name}, CPU": summary(s) for name, s in calls.items()}
    ratio = rows["docker run --rm --runtime labkit busybox true"]["median_ms"] / \
        rows["docker run --rm --runtime runc busybox true"]["median_ms"]
    state_vs_python = rows["labkit-runtime state"]["median_ms"] / rows["python -c pass"]["median_ms"]
    cli_ratio = rows["labkit run -- /bin/true"]["median_ms"] / rows["runc run (same limits)"]["median_ms"]
    lines = [f"| what | median | IQR | runs |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['median_ms']:.0f} ms | {r['iqr_ms']:.0f} ms | {r['runs']} |" for name, r in rows.items()]
    lines += [f"| {name} | {r['median_ms']:.1f} ms | {r['iqr_ms']:.1f} ms | {r['runs']} |" for name, r in cpu_rows.items()]
    lines += ["", f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
              f"docker run --rm, labkit / runc: **{ratio:.2f}x** (target <= 1.3x)",
              f"labkit run / runc run: **{cli_ratio:.2f}x** (target <= 1.5x)",
              f"labkit-runtime state / python -c pass: {state_vs_python:.2f}x"]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "docker_runtime.json").write_text(json.dumps({"rows": rows, "runtime_calls_cpu": cpu_rows, "ratio_docker_run": ratio,
                                                             "ratio_labkit_run": cli_ratio,
                                                             "ratio_state_to_python": state_vs_python}, indent=2))
    (RESULTS / "docker_runtime.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
