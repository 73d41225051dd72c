"""Audit of the workbook: every notebook keeps the promises DESIGN.md and issue 11 make to a learner.

The map in labkit/workbook.py and the notebooks/ folder list the same files; each notebook opens with
goals and a time estimate that agrees with the map, ends with a SelfCheck exercise and a cleanup cell,
has at least one output-checked cell for nbval, a solution key for the instructor, no image fetched
from the web, and is stored executed (top to bottom, with its outputs). No root: it only reads files.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from labkit import workbook

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_FILES = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
SOLUTIONS = ROOT / "docs/instructor/solutions"
WEB_IMAGE = re.compile(r"""<img[^>]*\ssrc\s*=\s*["']?(https?:)?//|!\[[^\]]*\]\(\s*(https?:)?//""", re.I)


def _read(name: str):
    return nbformat.read(ROOT / "notebooks" / name, as_version=4)


def _markdown_near_top(nb, cells: int = 3) -> list[str]:
    return [c.source for c in nb.cells[:cells] if c.cell_type == "markdown"]


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def test_the_map_lists_exactly_the_notebooks_in_the_folder():
    mapped = [nb.file for nb in workbook.NOTEBOOKS]
    assert len(mapped) == len(set(mapped)), "a notebook is listed twice in labkit/workbook.py"
    assert sorted(mapped) == mapped, "labkit/workbook.py lists the notebooks out of order"
    assert set(NOTEBOOK_FILES) - set(mapped) == set(), "notebooks missing from labkit/workbook.NOTEBOOKS"
    assert set(mapped) - set(NOTEBOOK_FILES) == set(), "labkit/workbook.NOTEBOOKS lists notebooks that do not exist"


def test_the_audit_has_notebooks_to_audit():
    assert len(NOTEBOOK_FILES) >= 20


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_opens_with_goals_and_a_time_that_matches_the_map(name):
    top = _markdown_near_top(_read(name))
    assert any("goal" in text.lower() for text in top), f"{name}: no goals in the first cells"
    time_lines = [line for text in top for line in text.splitlines()
                  if re.search(r"\btime\b", line, re.I) and re.search(r"\d+\s*min", line)]
    assert time_lines, f"{name}: no time estimate ('Time: about N minutes') in the first cells"
    # "about 15 minutes" or "about 30-40 minutes": the map's minutes must fall in what the notebook says
    low, high = re.search(r"(\d+)(?:\s*[-–]\s*(\d+))?\s*min", time_lines[0]).groups(default=None)
    low, high = int(low), int(high or low)
    minutes = {nb.file: nb.minutes for nb in workbook.NOTEBOOKS}[name]
    assert low <= minutes <= high, f"{name} says {time_lines[0]!r}, labkit/workbook.py says {minutes} minutes"


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_has_a_self_check_exercise(name):
    assert any("SelfCheck(" in c.source for c in _code(_read(name))), f"{name}: no SelfCheck( exercise"


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_has_a_cleanup_heading_followed_by_code(name):
    cells = _read(name).cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and re.search(r"(?im)^#+.*\bclean ?up\b", cell.source):
            following = [c for c in cells[i + 1:i + 3] if c.cell_type == "code" and c.source.strip()]
            if following:
                return
    pytest.fail(f"{name}: no '## Cleanup' heading followed by a code cell")


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_has_an_output_checked_cell(name):
    tagged = [c for c in _code(_read(name)) if "nbval-check-output" in c.metadata.get("tags", [])]
    assert tagged, f"{name}: no cell tagged nbval-check-output, so nbval --nbval-lax checks nothing"


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_has_a_solution_key(name):
    key = SOLUTIONS / name.replace(".ipynb", ".md")
    assert key.is_file(), f"{name}: no solution key {key.relative_to(ROOT)}"
    assert len(key.read_text().strip()) > 100, f"{key.relative_to(ROOT)} is (nearly) empty"


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_links_no_image_from_the_web(name):
    nb = _read(name)
    for cell in nb.cells:
        texts = [cell.source]
        for output in cell.get("outputs", []):
            texts += [str(v) for k, v in output.get("data", {}).items() if k in ("text/html", "text/markdown")]
        for text in texts:
            assert not WEB_IMAGE.search(text), f"{name}: an image linked from the web: {WEB_IMAGE.search(text)[0]}"


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_is_stored_executed_top_to_bottom(name):
    code = _code(_read(name))
    counts = [c.execution_count for c in code]
    assert None not in counts, f"{name}: {counts.count(None)} code cell(s) never executed"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), \
        f"{name}: cells were executed out of order {counts} (re-run it from the top before committing)"
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2, f"{name}: stored without most of its outputs"


@pytest.mark.parametrize("name", NOTEBOOK_FILES)
def test_stored_outputs_show_no_error_and_no_stray_stderr(name):
    for index, cell in enumerate(_code(_read(name))):
        for output in cell.outputs:
            if output.output_type == "error" and "raises-exception" not in cell.metadata.get("tags", []):
                pytest.fail(f"{name}, code cell {index}: stored with an error {output.ename}: {output.evalue}")
            if output.output_type == "stream" and output.name == "stderr":
                pytest.fail(f"{name}, code cell {index}: stored with stderr output {output.text[:200]!r}")
