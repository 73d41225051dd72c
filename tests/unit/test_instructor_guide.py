"""The instructor guide's schedules against the map (labkit/workbook.py): every notebook appears in
each schedule, in a slot or in its homework list; a slot has the map's minutes; the clock adds up;
and every notebook has a measured run time."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from labkit import workbook

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "instructor-guide.md"
STEMS = {nb.file.removesuffix(".ipynb"): nb.minutes for nb in workbook.NOTEBOOKS}
SCHEDULES = ("### Half day", "### Full day")


def section(start: str, stop: str = r"\n##+ ") -> str:
    text = GUIDE.read_text()
    begin = text.index(start)
    end = re.compile(stop).search(text, begin + len(start))
    return text[begin:end.start() if end else len(text)]


def tables(text: str) -> list[list[list[str]]]:
    """Each schedule table as rows of cells (header and rule left out)."""
    found, rows = [], []
    for line in text.splitlines() + [""]:
        if re.match(r"\| \d\d:\d\d \|", line):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            found.append(rows)
            rows = []
    return found


def minutes(clock: str) -> int:
    hours, mins = clock.split(":")
    return int(hours) * 60 + int(mins)


@pytest.mark.parametrize("heading", SCHEDULES)
def test_every_notebook_of_the_map_is_in_the_schedule_or_its_homework(heading):
    text = section(heading)
    slotted = {row[2] for table in tables(text) for row in table}
    homework = " ".join(re.findall(r"Homework list[^:]*:([^\n]+(?:\n[^\n|#][^\n]*)*)", text))
    missing = [stem for stem in STEMS if stem not in slotted and stem not in homework]
    assert not missing, f"{heading}: neither in a slot nor in the homework list: {missing}"


@pytest.mark.parametrize("heading", SCHEDULES)
def test_slots_have_the_maps_minutes_and_the_clock_adds_up(heading):
    for table in tables(section(heading)):
        for row, following in zip(table, table[1:]):
            clock, length, what = row[0], row[1], row[2]
            assert minutes(clock) + int(length) == minutes(following[0]), f"{heading}: {clock} + {length} min"
            if what in STEMS:
                assert int(length) == STEMS[what], f"{heading}: {what} has {length} min, the map says {STEMS[what]}"
        assert table[-1][2] == "end"


def test_every_notebook_has_a_measured_run_time():
    text = section("## The workbook in numbers", r"\n## Schedules")
    measured = set(re.findall(r"^\| ([0-9]{2}-[a-z-]+) \| \d+ \| .*\d\.\d", text, re.M))
    assert set(STEMS) <= measured, f"no measured run time for: {sorted(set(STEMS) - measured)}"
