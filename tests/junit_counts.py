"""Passed, failed (errors included) and skipped counts of a pytest JUnit XML report.

    python tests/junit_counts.py REPORT.xml     # prints "PASSED FAILED SKIPPED" (0 0 0 if unreadable)

Used by tests/run_suite.sh for its stages and by tests/guest/run.py for the guest's reports."""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def junit_counts(path) -> tuple[int, int, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = failed = skipped = 0
    for s in suites:
        tests += int(s.get("tests", 0))
        failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
    return tests - failed - skipped, failed, skipped


if __name__ == "__main__":
    try:
        print(*junit_counts(sys.argv[1]))
    except (OSError, ET.ParseError):
        print(0, 0, 0)
