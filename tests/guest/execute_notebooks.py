"""Execute every notebook (inside the guest) and save it with its new outputs: the stored outputs a
learner reads come from the learner's platform. Run by tests/guest/inside.sh in the lab service's
jupyter/ leaf (so the kernels are where a learner's kernels are), as

    python tests/guest/execute_notebooks.py OUT_DIR

Each notebook runs from notebooks/ (its directory, like nbval and JupyterLab), one kernel each, in
name order. request.json (beside OUT_DIR, written by tests/guest/run.py) may narrow them down:
"notebooks": "00-* 10-*" (globs). Exit status 1 if any cell raised; the other notebooks still run and
are saved.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    try:
        patterns = json.loads((out.parent / "request.json").read_text()).get("notebooks") or "*.ipynb"
    except (OSError, ValueError):
        patterns = "*.ipynb"
    paths = sorted({p for pattern in patterns.split() for p in NOTEBOOKS.glob(pattern)
                    if p.suffix == ".ipynb"})
    failed = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.monotonic()
        client = NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        try:
            client.execute()
            verdict = "ok"
        except CellExecutionError as exc:
            failed.append(path.name)
            verdict = "FAILED: " + str(exc).strip().splitlines()[-1][:200]
        nbformat.write(nb, out / path.name)
        print(f"executed {path.name} in {time.monotonic() - t0:.0f}s: {verdict}", flush=True)
    print(f"{len(failed)} of {len(paths)} notebooks failed: {' '.join(failed)}"
          if failed else "every notebook executed without an error", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
