"""`make handouts` in small: two quick notebooks executed and exported, plots embedded, an index linking them.

The full `make handouts` runs every notebook (minutes); this runs the same builder on 00-welcome and
01-namespaces, which both draw diagrams from the kernel's real state, into a temporary folder.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit import handouts, workbook

QUICK = ["00-welcome.ipynb", "01-namespaces.ipynb"]
IMG = re.compile(r'<img[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=]{100,})"')
PNG_MAGIC = "iVBORw0KGgo"  # base64 of b"\x89PNG\r\n\x1a\n"


def _stored_images(name: str) -> int:
    nb = nbformat.read(workbook.NOTEBOOKS_DIR / name, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.root
def test_handouts_execute_export_with_plots_embedded_and_index_them(tmp_path):
    out = tmp_path / "handouts"
    result = subprocess.run([sys.executable, "-m", "labkit.handouts", "--out", str(out), *QUICK],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr

    pages = sorted(p.name for p in out.glob("*.html"))
    assert pages == ["00-welcome.html", "01-namespaces.html", "index.html"]
    for name in QUICK:
        page = (out / name.replace(".ipynb", ".html")).read_text()
        images = IMG.findall(page)
        assert images, f"{name}: no plot embedded in the page"
        assert all(data.startswith(PNG_MAGIC) for data in images), f"{name}: an embedded image is no PNG"
        assert len(images) == _stored_images(name), f"{name}: not every plot of the notebook is in the page"
        assert "application/vnd.jupyter.widget-state+json" in page, f"{name}: widget state not stored"
        assert "Traceback" not in page and "CellExecutionError" not in page

    # executed here, not exported from the stored outputs: the welcome page names a kernel of this run
    stored = nbformat.read(workbook.NOTEBOOKS_DIR / QUICK[0], as_version=4)
    stored_pid = re.search(r"kernel is pid (\d+)", str(stored.cells)).group(1)
    page_pid = re.search(r"kernel is pid (\d+)", (out / "00-welcome.html").read_text()).group(1)
    assert page_pid != stored_pid, "the page shows the stored outputs: the notebook was not executed"

    index = (out / "index.html").read_text()
    links = re.findall(r"<a href='([^']+)'>", index)
    assert links == ["00-welcome.html", "01-namespaces.html"]
    assert all((out / link).is_file() for link in links)
    assert index.count(">ok</td>") == 2, "the index should say both notebooks ran"
    assert "failed" not in index


def test_handouts_refuse_a_notebook_that_is_not_in_the_workbook(tmp_path):
    with pytest.raises(ValueError, match="99-nope.ipynb"):
        handouts.build(tmp_path / "out", only=["notebooks/99-nope.ipynb"], progress=lambda _: None)
    assert not (tmp_path / "out" / "index.html").exists()


def test_index_marks_a_failed_notebook():
    row = {"file": "x.html", "title": "<x>", "chapter": "1", "seconds": 1.0, "images": 0,
           "error": "KeyError: 'boom'"}
    index = handouts._index([row])
    assert "failed: KeyError: &#x27;boom&#x27;" in index and "&lt;x&gt;" in index
