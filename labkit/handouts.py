"""Handouts: every notebook executed on this machine and exported to HTML, plots embedded, with an index.

An instructor runs `make handouts` before a workshop (or after one, for the room to take home). Each
notebook runs top to bottom in a fresh kernel exactly as a learner would run it, so the HTML shows
this machine's real inodes, limits and plots. Widget state is stored, so sliders and exercises render
as static pictures of themselves.
"""
from __future__ import annotations

import html
import re
import sys
import time
from pathlib import Path

from . import workbook

# an output image embedded in the page (the lab template's CSS carries a data: PNG of its own)
EMBEDDED_IMAGE = re.compile(r'<img[^>]*\ssrc="data:image/png;base64,')


def build(out_dir: str | Path = "handouts", timeout: int = 600, only: list[str] | None = None,
          progress=print) -> list[dict]:
    """Execute and export each notebook; write out_dir/index.html; return one row per notebook."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbclient.exceptions import CellTimeoutError
    from nbconvert.preprocessors import CellExecutionError, ExecutePreprocessor

    # accept notebooks/03-uts.ipynb, 03-uts.ipynb or 03-uts; a name the map does not know is an error
    wanted = {Path(n).name if n.endswith(".ipynb") else Path(n).name + ".ipynb" for n in only or ()}
    unknown = wanted - {nb.file for nb in workbook.present()}
    if unknown:
        raise ValueError(f"not notebooks of this workbook: {', '.join(sorted(unknown))} "
                         f"(accepted: the files in {workbook.NOTEBOOKS_DIR})")
    notebooks = [nb for nb in workbook.present() if not wanted or nb.file in wanted]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, entry in enumerate(notebooks, 1):
        progress(f"[{number}/{len(notebooks)}] executing {entry.file} ...")
        notebook = nbformat.read(entry.path, as_version=4)
        executor = ExecutePreprocessor(timeout=timeout, kernel_name="python3", store_widget_state=True)
        started = time.monotonic()
        error = ""
        try:
            executor.preprocess(notebook, {"metadata": {"path": str(entry.path.parent)}})
        except CellExecutionError as exc:  # keep going: the page shows where it stopped
            error = str(exc).strip().splitlines()[-1][:200]
        except CellTimeoutError as exc:    # a cell that hangs fails its notebook, not the whole run
            error = str(exc).strip().splitlines()[-1][:200]
        seconds = time.monotonic() - started
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
        target = out / entry.file.replace(".ipynb", ".html")
        target.write_text(body)
        images = len(EMBEDDED_IMAGE.findall(body))
        rows.append({"file": target.name, "title": entry.title, "chapter": entry.chapter,
                     "seconds": round(seconds, 1), "images": images, "error": error})
        progress(f"      {'FAILED: ' + error if error else 'ok'} in {seconds:.1f} s, {images} plot(s)")
    (out / "index.html").write_text(_index(rows))
    progress(f"wrote {len(rows)} notebook page(s) and {out / 'index.html'}")
    return rows


def _index(rows: list[dict]) -> str:
    items = "\n".join(
        f"<tr><td>{html.escape(r['chapter'])}</td><td><a href='{r['file']}'>{html.escape(r['title'])}</a></td>"
        f"<td>{r['seconds']} s</td><td>{r['images']}</td>"
        f"<td>{'failed: ' + html.escape(r['error']) if r['error'] else 'ok'}</td></tr>" for r in rows)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Docker Deep Dive Lab - handouts</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.3em .8em;text-align:left}}
tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Docker Deep Dive Lab - handouts</h1>
<p>Every notebook executed on a lab machine ({html.escape(stamp)}) and exported with its plots.</p>
<table><tr><th>chapter</th><th>notebook</th><th>run time</th><th>plots</th><th>status</th></tr>
{items}
</table></body></html>
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m labkit.handouts")
    parser.add_argument("--out", default="handouts")
    parser.add_argument("notebooks", nargs="*", help="only these notebook files")
    args = parser.parse_args(argv)
    try:
        rows = build(args.out, only=args.notebooks or None)
    except ValueError as exc:
        parser.error(str(exc))
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
