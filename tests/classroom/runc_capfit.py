#!/usr/bin/python3
"""runc, minus the capabilities this machine's own processes cannot have: the classroom test's runtime.

Why it exists: on some machines (a VM whose init dropped one, e.g. this lab's CI host, where CapBnd
lacks CAP_SYS_RESOURCE) every process misses a capability in its bounding set. `docker run
--privileged` asks runc for ALL capabilities, runc's capset fails ("unable to apply caps: operation
not permitted"), and Docker 20.10 ignores `--cap-drop` together with `--privileged`. This wrapper
removes from the container's OCI spec exactly the capabilities missing from its own bounding set - a
container can never hold those anyway - and execs runc. Everything else `--privileged` means (all
devices, writable /sys and cgroupfs, no seccomp, no masked paths) stays as Docker wrote it.

On a normal host the bounding set is full and this changes nothing. It is registered only with the
classroom test's own dockerd (tests/classroom/daemon.py, `--add-runtime`); the learners' path
(deploy/) and the Vagrant path never use it.

containerd-shim-runc-v2 calls it with runc's command line: `create --bundle DIR ...` (the spec is
DIR/config.json) and `exec --process FILE ...` (a docker exec's process spec).
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from labkit.capabilities import NAMES  # noqa: E402 - the repository's table of capability numbers

RUNC = os.environ.get("LABKIT_CAPFIT_RUNC", "/usr/sbin/runc")


def bounding_set() -> set[str]:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return {f"CAP_{name}" for number, name in enumerate(NAMES) if mask >> number & 1}
    raise SystemExit("runc_capfit: no CapBnd in /proc/self/status")


def fit(capabilities: dict, allowed: set[str]) -> bool:
    """Remove what is not allowed from every set of an OCI process's capabilities; True if it changed."""
    changed = False
    for which, names in capabilities.items():
        kept = [name for name in names if name in allowed]
        changed |= kept != names
        capabilities[which] = kept
    return changed


def spec_file(args: list[str]) -> tuple[Path, bool] | None:
    """(file, is_process_spec) the runc command line reads its process's capabilities from."""
    for i, arg in enumerate(args[:-1]):
        if arg in ("--bundle", "-b") and ("create" in args or "run" in args):
            return Path(args[i + 1]) / "config.json", False
        if arg in ("--process", "-p") and "exec" in args:
            return Path(args[i + 1]), True
    return None


def main() -> None:
    args = sys.argv[1:]
    found = spec_file(args)
    if found and found[0].is_file():
        path, is_process = found
        spec = json.loads(path.read_text())
        process = spec if is_process else spec.get("process", {})
        if fit(process.get("capabilities") or {}, bounding_set()):
            path.write_text(json.dumps(spec))
    os.execv(RUNC, [RUNC, *args])


if __name__ == "__main__":
    main()
