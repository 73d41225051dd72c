"""An overlay root drawn as a stack of layers, from the real mount (chapter 4's picture).

Read from /proc/self/mountinfo and the layer directories themselves, so the picture is what the
kernel has mounted now. A view: it draws, and creates nothing.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from . import mountinfo
from .errors import NotFound


def _sample(directory: str, limit: int = 6) -> tuple[int, list[str]]:
    """(number of entries, a few of them) of a layer directory, whiteouts marked."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(directory):
        for entry in dirnames + filenames:
            full = os.path.join(dirpath, entry)
            rel = os.path.relpath(full, directory)
            st = os.lstat(full)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                entries.append(f"{rel}  (whiteout c 0:0)")
            elif not stat.S_ISDIR(st.st_mode):
                entries.append(rel)
    entries.sort(key=lambda e: ("whiteout" not in e, e.count("/") > 2, e))
    return len(entries), entries[:limit]


def _layer_label(lower: Path) -> str:
    """A store layer (LAYERS/sha256-<digest>/root) by the name in its manifest and a short digest."""
    try:
        name = json.loads((lower.parent / "layer.json").read_text()).get("name", "")
    except (OSError, ValueError):
        return str(lower)
    return f"{name} {lower.parent.name[:19]}" if lower.name == "root" else str(lower)


def draw_stack(mountpoint: str | os.PathLike, ax=None, title: str | None = None):
    """Draw the overlay mounted at `mountpoint` as a stack: the read-only lower layers (bottom up),
    the writable upper layer, and the merged view - all read from /proc/self/mountinfo and the
    layer directories themselves, so the picture is what the kernel has now."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    mount = next((m for m in mountinfo.read() if m["mountpoint"] == str(mountpoint)), None)
    if mount is None or mount["fstype"] != "overlay":
        raise NotFound(f"no overlay mounted at {mountpoint} (see /proc/self/mountinfo)")
    layers = mountinfo.overlay_layers(mount)
    rows = [("merged view (the container's /)", str(mountpoint), "#ffffff")]
    if layers["upper"]:
        rows.append(("upper: the container's writable layer (tmpfs)", layers["upper"], "#fde9c9"))
    for i, lower in enumerate(layers["lower"]):      # top lower layer first
        store = _layer_label(Path(lower))
        rows.append((f"lower {len(layers['lower']) - i}: image layer '{store}' (read-only)", lower, "#d9e7f5"))
    if ax is None:
        fig, ax = plt.subplots(figsize=(10, 1.25 * len(rows) + 0.4))
    ax.set_xlim(0, 10), ax.set_ylim(0, len(rows) * 1.2), ax.axis("off")
    for i, (label, path, color) in enumerate(reversed(rows)):
        y = i * 1.2 + 0.1
        ax.add_patch(FancyBboxPatch((0.1, y), 9.8, 1.0, boxstyle="round,pad=0.02", facecolor=color,
                                    edgecolor="#555555"))
        if label.startswith("merged"):
            count, sample = len(os.listdir(path)), sorted(os.listdir(path))[:12]
            detail = "ls /: " + " ".join(sample)
        else:
            count, sample = _sample(path)
            detail = ", ".join(sample) + (" ..." if count > len(sample) else "") if sample else "(empty)"
        ax.text(0.25, y + 0.68, f"{label} - {count} entr{'y' if count == 1 else 'ies'}", fontsize=9,
                weight="bold", va="center")
        ax.text(0.25, y + 0.3, detail[:140], fontsize=7.5, va="center", family="monospace")
    ax.set_title(title or f"overlay at {mountpoint}", fontsize=10)
    return ax.figure
