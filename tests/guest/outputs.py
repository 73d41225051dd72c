"""Stored notebook outputs: scan them for build-machine traces, and write back those made in the guest.

The outputs stored in notebooks/ are what a learner reads before running anything (and what any
repository host renders), so they must come from the learner's platform - systemd + cgroup v2 - not
from a build machine. `scan` finds the traces of one; `write_back` replaces the stored outputs with
those of notebooks executed in the guest (`make test-guest UPDATE_OUTPUTS=1`).

    python tests/guest/outputs.py scan [NOTEBOOK_DIR]     # list traces; exit 1 if any
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# trace -> why it is one
TRACES = {
    r"process_api": "PID 1 of the build machine's sandbox (a learner's PID 1 is systemd)",
    r"\.dockerenv": "the build machine ran inside a Docker container",
    r"(?<![\w.])/\.\./": "a cgroup path seen from outside the reader's cgroup namespace (/../...)",
    r"(?m)^\s*\d+:name=systemd:": "the hybrid hierarchy's name=systemd line (pure v2 has only 0::)",
}


def output_texts(cell) -> list[str]:
    texts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            texts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/") or mime.endswith("json"):
                texts.append(value if isinstance(value, str) else str(value))
        if out.get("output_type") == "error":
            texts.append("\n".join(out.get("traceback", [])))
    return texts


def scan(directory: Path = NOTEBOOKS) -> list[str]:
    """'NOTEBOOK cell N: TRACE (why)' for every stored output holding a build-machine trace."""
    found = []
    for path in sorted(directory.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            for text in output_texts(cell):
                for pattern, why in TRACES.items():
                    match = re.search(pattern, text)
                    if match:
                        found.append(f"{path.name} cell {index}: {match.group(0).strip()!r} ({why})")
    return found


def write_back(executed: Path, notebooks: Path = NOTEBOOKS) -> list[str]:
    """Copy the executed notebooks' outputs into notebooks/, cell by cell; sources must be unchanged.

    Only outputs and execution counts move: if a notebook's cells changed since the guest ran it,
    that notebook is left alone and named in the result."""
    refused = []
    for src in sorted(executed.glob("*.ipynb")):
        dest = notebooks / src.name
        new, old = nbformat.read(src, as_version=4), nbformat.read(dest, as_version=4)
        if [c.source for c in new.cells] != [c.source for c in old.cells]:
            refused.append(f"{src.name}: its cells changed while the guest ran it; not written")
            continue
        for o, n in zip(old.cells, new.cells):
            if o.cell_type == "code":
                o.outputs = n.outputs
                o.execution_count = n.execution_count
                o.metadata.pop("execution", None)
        if "widgets" in new.metadata:
            old.metadata["widgets"] = new.metadata["widgets"]
        nbformat.write(old, dest)
        print(f"[guest] wrote the guest's outputs into {dest.relative_to(notebooks.parent)}")
    for line in refused:
        print(f"[guest] {line}")
    return refused


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "scan":
        sys.exit(__doc__)
    traces = scan(Path(sys.argv[2]) if len(sys.argv) > 2 else NOTEBOOKS)
    print("\n".join(traces) or "no build-machine traces in the stored outputs")
    sys.exit(1 if traces else 0)
