"""How a VM's progress is shown: one line on a terminal, an ipywidgets bar in a notebook.

Both return a callback for `labkit.vm.VM(progress=...)`; it receives `labkit.vm.Progress` values
(stage, fraction, elapsed). This module only shows them and imports nothing from labkit.
"""
from __future__ import annotations

import sys
from typing import Callable

# called with each labkit.vm.Progress (stage, fraction, elapsed)
ProgressCallback = Callable[[object], None]


def print_progress(stream=None) -> ProgressCallback:
    """A callback that redraws one progress line (a terminal) or prints each new stage (a log)."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    last = {"stage": None}

    def show(p):
        if tty:
            bar = "#" * int(p.fraction * 20)
            end = "\n" if p.fraction >= 1 else ""
            stream.write(f"\r\033[K[{bar:<20}] {p.elapsed:5.1f}s {p.stage}{end}")
            stream.flush()
        elif p.stage != last["stage"]:
            stream.write(f"[{p.elapsed:5.1f}s] {p.stage}\n")
            stream.flush()
        last["stage"] = p.stage
    return show


def notebook_progress(description: str = "VM") -> ProgressCallback:
    """A callback that drives an ipywidgets progress bar (shown when created), or prints if absent."""
    try:
        import ipywidgets as w
        from IPython.display import display
    except ImportError:
        return print_progress()
    bar = w.FloatProgress(min=0, max=1, description=description)
    label = w.Label()
    display(w.HBox([bar, label]))

    def show(p):
        bar.value = p.fraction
        label.value = f"{p.elapsed:.1f}s {p.stage}"
        if p.fraction >= 1:
            bar.bar_style = "success"
    return show
