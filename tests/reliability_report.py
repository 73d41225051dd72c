#!/usr/bin/env python3
"""Write docs/reliability.md - faults injected, bad inputs tried, objects leaked - from a real test run.

    python tests/reliability_report.py                      # run the three suites now, then write
    python tests/reliability_report.py --junit test-output/integration.xml --out test-output/reliability.md

With --junit it reads the JUnit XML of an earlier pytest run (tests/run_suite.sh writes
test-output/integration.xml); without, it runs tests/integration/test_faults*.py, test_bad_input.py
and test_security.py (plus test_lab_server.py, for the JupyterLab row) itself, as root, into
test-output/reliability.xml. Either way it then runs
`labkit cleanup --check` and reports what that finds.

"Objects leaked" counts the objects named by failed leak checks: every root test is checked by
tests/conftest.py (no labkit object it owns may survive it) and the fault, bad-input and security
tests also check the kernel itself (tests/integration/kernel_state.py) - plus what
`labkit cleanup --check` finds after the run. The exit status is 1 if anything leaked, a test of
these suites failed, or the bad-input table has fewer than 30 rows.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITES = ["tests/integration/test_faults.py", "tests/integration/test_bad_input.py",
          "tests/integration/test_security.py"]
LAB_SERVER = "test_lab_server"
MIN_BAD_INPUTS = 30
# a failure message that lists leaked objects, one per line
LEAK_MARKERS = ("left kernel objects behind", "left behind:", "== []")
OBJECT_LINE = re.compile(r"labkit-[A-Za-z0-9_-]+")


@dataclass
class Case:
    module: str
    name: str
    seconds: float
    result: str                    # passed, failed, skipped, xfailed
    message: str = ""
    properties: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        """test_a_cgroup_with_sub_cgroups[x] -> 'a cgroup with sub cgroups [x]'."""
        base, _, param = self.name.partition("[")
        text = base.removeprefix("test_").replace("_", " ")
        return f"{text} [{param}" if param else text

    @property
    def leaked(self) -> int:
        if self.result != "failed" or not any(m in self.message for m in LEAK_MARKERS):
            return 0
        return max(1, len(set(OBJECT_LINE.findall(self.message))))


def read_junit(path: Path) -> list[Case]:
    root = ET.parse(path).getroot()
    # test_bad_input records each row's input and outcome as a suite property "bad-input ID"
    rows = {}
    for prop in root.iter("property"):
        name = prop.get("name") or ""
        if name.startswith("bad-input "):
            try:
                rows[name.split(" ", 1)[1]] = json.loads(prop.get("value") or "{}")
            except ValueError:
                pass
    cases = []
    for tc in root.iter("testcase"):
        module = tc.get("classname", "").rsplit(".", 1)[-1]
        result, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error"):
                result, message = "failed", (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped":
                result = "xfailed" if (child.get("type") or "").endswith("xfail") else "skipped"
                message = child.get("message") or ""
        props = rows.get(tc.get("name", "").partition("[")[2].rstrip("]"), {})
        cases.append(Case(module, tc.get("name", ""), float(tc.get("time") or 0), result, message, props))
    return cases


def run_suites(xml: Path) -> None:
    xml.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LABKIT_ALLOW_HOST=os.environ.get("LABKIT_ALLOW_HOST", "1"))
    paths = sorted({str(p.relative_to(REPO)) for p in (REPO / "tests/integration").glob("test_faults*.py")}
                   | set(SUITES[1:]))
    if (REPO / "tests/integration" / f"{LAB_SERVER}.py").exists():   # its row in the security table
        paths.append(f"tests/integration/{LAB_SERVER}.py")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                    f"--junitxml={xml}", *paths], cwd=REPO, env=env)


def cleanup_check() -> tuple[int, str]:
    """(objects found, output) of `labkit cleanup --check`."""
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "cleanup", "--check"], cwd=REPO,
                          capture_output=True, text=True, env=dict(os.environ, LABKIT_NO_WATCHDOG="1"))
    match = re.search(r"(\d+) object\(s\) left behind", done.stdout)
    return (int(match.group(1)) if match else (0 if done.returncode == 0 else 1)), done.stdout.strip()


def machine() -> dict:
    sys.path.insert(0, str(REPO))
    from labkit import host
    from labkit.cgroups import backend_name

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"kernel": platform.release(), "arch": platform.machine(), "cgroup_mode": host.cgroup_mode(),
            "cgroup_backend": backend_name(), "cpus": os.cpu_count(), "commit": commit}


def cell(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("`", "'")


MARK = {"passed": "pass", "failed": "**FAIL**", "skipped": "skipped", "xfailed": "known gap (xfail)"}


def render(cases: list[Case], source: str, found: int, check_output: str, info: dict) -> tuple[str, int]:
    faults = [c for c in cases if c.module.startswith("test_faults")]
    bad = [c for c in cases if c.module == "test_bad_input" and "[" in c.name]
    security = [c for c in cases if c.module == "test_security"]
    lab = [c for c in cases if c.module == LAB_SERVER]
    ours = faults + [c for c in cases if c.module == "test_bad_input"] + security
    leaked_in_tests = sum(c.leaked for c in cases)
    leaked = leaked_in_tests + found
    failed = [c for c in ours if c.result == "failed"]
    refused = sum(c.result == "passed" for c in bad)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def count(group):
        return f"{sum(c.result == 'passed' for c in group)} of {len(group)} passed"

    out = [
        "# Reliability and security: measured",
        "",
        f"Generated by `tests/reliability_report.py` from `{source}` on {now}.",
        f"Machine: Linux {info['kernel']} ({info['arch']}, {info['cpus']} CPUs), cgroups **{info['cgroup_mode']}** "
        f"(labkit writes the {info['cgroup_backend']} backend); commit `{info['commit']}`.",
        "Every test below runs as root on the real kernel and checks the result from the kernel's side "
        "(/sys/fs/cgroup, /proc/self/mountinfo, /run/netns, /sys/class/net, /proc, /run/labkit/work), not from "
        "labkit's bookkeeping. Regenerate with `sudo .venv/bin/python tests/reliability_report.py`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| faults injected | {len(faults)} ({count(faults)}) |",
        f"| bad inputs tried | {len(bad)} ({refused} refused with an error naming the value, nothing created) |",
        f"| security checks | {len(security)} ({count(security)}; "
        f"{sum(c.result == 'xfailed' for c in security)} known gap) |",
        f"| objects leaked | **{leaked}** ({leaked_in_tests} in per-test leak checks over "
        f"{len(cases)} tests, {found} found by `labkit cleanup --check` afterwards) |",
        f"| test time | {sum(c.seconds for c in ours):.0f} s |",
        "",
        "## Faults injected",
        "",
        "| fault | result | seconds |",
        "|---|---|---|",
    ]
    out += [f"| {cell(c.title)} | {MARK[c.result]} | {c.seconds:.1f} |" for c in faults]
    out += ["", "A kernel killed outright is cleaned up by BOTH mechanisms: its watchdog (a process in its own "
            "session, woken by a pidfd the moment the kernel dies) sweeps what the kernel owned, and journals it in "
            "/run/labkit/watchdog.log; if the watchdog was killed too, the next labkit process's watchdog sweeps "
            "dead owners' objects when it starts. The SIGKILL rows above prove each path from the kernel's side.",
            "", "## Bad input", "",
            "Each row is refused before anything is created; the test fails if the message does not contain "
            "the bad value, or if any kernel object appeared.", "",
            "| # | group | bad input | expected | what came back | result |", "|---|---|---|---|---|---|"]
    for i, c in enumerate(bad, 1):
        p = c.properties
        out.append(f"| {i} | {cell(p.get('group', ''))} | {cell(p.get('input', c.title))} | "
                   f"{cell(p.get('expected', ''))} | {cell(p.get('outcome', c.message), 140)} | {MARK[c.result]} |")
    out += ["", "## Security", "", "| check | result |", "|---|---|"]
    out += [f"| {cell(c.title)} | {MARK[c.result]}" + (f": {cell(c.message, 200)}" if c.result == "xfailed" else "")
            + " |" for c in security]
    lab_result = count(lab) if lab else "not in this run (see tests/integration/test_lab_server.py)"
    out.append(f"| JupyterLab answers only on 127.0.0.1 and only with its token "
               f"(tests/integration/test_lab_server.py) | {lab_result} |")
    out += ["", "## `labkit cleanup --check` after the run", "", "```", check_output or "(no output)", "```"]
    if failed:
        out += ["", "## Failures", ""]
        out += [f"- `{c.module}::{c.name}`: {cell(c.message, 400)}" for c in failed]
    status = 1 if (leaked or failed or len(bad) < MIN_BAD_INPUTS) else 0
    return "\n".join(out) + "\n", status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="read this JUnit XML instead of running the tests")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    xml = args.junit
    if xml is None:
        xml = REPO / "test-output" / "reliability.xml"
        run_suites(xml)
    if not xml.exists():
        print(f"reliability_report: {xml} does not exist", file=sys.stderr)
        return 1
    cases = read_junit(xml)
    found, check_output = cleanup_check()
    try:
        source = xml.resolve().relative_to(REPO)
    except ValueError:
        source = xml
    text, status = render(cases, str(source), found, check_output, machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text.split("## Faults injected")[0].split("|---|---|")[1].strip())
    faults = sum(c.module.startswith("test_faults") for c in cases)
    bad = sum(c.module == "test_bad_input" and "[" in c.name for c in cases)
    leaked = sum(c.leaked for c in cases) + found
    print(f"wrote {args.out}: {faults} faults, {bad} bad inputs, {leaked} objects leaked")
    return status


if __name__ == "__main__":
    sys.exit(main())
