"""A learner's session in a real browser: JupyterLab started the way `make lab` starts it, opened in
headless Chromium (Debian's package, driven by Playwright), the cpu-limits notebook run, its quota
slider moved with the keyboard - and then the checks a learner would make with their eyes, made on
the kernel and the page: the cgroup's cpu quota file changed, and the live plot redrew.

The notebook is a copy in a temporary folder, so the server's autosave never touches the repository.
A screenshot is left in the test output folder (test-output/ or $TEST_OUTPUT).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

import nbformat
import psutil

from labkit import cgroups, cleanup, lab
from labkit.emulation import scaled

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = "12-cpu.ipynb"


def _slider_cell() -> int:
    """The index of the cell that makes the quota slider (found by its source: the notebook grows)."""
    cells = nbformat.read(REPO / "notebooks" / NOTEBOOK, as_version=4).cells
    found = [i for i, cell in enumerate(cells) if "slider_plot.slider(" in cell.source]
    assert len(found) == 1, f"{NOTEBOOK}: expected one cell that makes the slider, found {found}"
    return found[0]


SLIDER_CELL = _slider_cell()   # `quota_slider = slider_plot.slider(cg, "cpu", 0.1, 2.0, 0.05, 0.5)`
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = Path(os.environ.get("TEST_OUTPUT", REPO / "test-output"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernel_pids(settings) -> set[int]:
    """The notebook kernels this JupyterLab server started (its ipykernel children)."""
    server = psutil.Process(lab.status(settings)["pid"])
    kernels = set()
    for child in server.children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                kernels.add(child.pid)
        except psutil.Error:   # a helper process that has just exited
            pass
    return kernels


def _cap_files(owners: set[int]) -> dict[str, str]:
    """cpu cap file -> content, for the labkit cgroups those processes own, read from cgroupfs."""
    name = "cpu.max" if cgroups.backend_name() == "v2" else "cpu.cfs_quota_us"
    files = {}
    for item in cleanup.find_all(include_in_use=True):
        if item.kind == "cgroup" and item.owner_pid in owners:
            path = Path(cgroups.Cgroup.open(item.name).path("cpu"), name)
            if path.exists():
                files[str(path)] = path.read_text().strip()
    return files


def _wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something true; a page element that is not there yet
    (JupyterLab re-renders cells while they run) counts as not yet. `timeout` is for hardware (on an
    emulated CPU labkit.emulation stretches it, as every wait in this test)."""
    from playwright.sync_api import Error as PageError

    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except PageError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def jupyterlab(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    # JupyterLab 4 renders only the cells in view ("windowing"); render them all, so that the
    # page's n-th cell is the notebook's n-th cell. A settings folder of our own: the learner's
    # settings stay untouched.
    settings_dir = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    settings_dir.mkdir(parents=True)
    (settings_dir / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "lab-settings"))
    notebook = nbformat.read(REPO / "notebooks" / NOTEBOOK, as_version=4)
    for cell in notebook.cells:    # a fresh copy: every output the test waits for is a new one
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, notebooks / NOTEBOOK)
    settings = lab.LabSettings(port=_free_port(), notebook_dir=str(notebooks),
                               config_dir=str(tmp_path / "etc"), run_dir=str(tmp_path / "run"))
    started = lab.start(settings, mode="direct")
    assert started["answers"], started
    yield settings
    assert lab.stop(settings)


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        # No sandbox as root; no background networking: this machine reaches no outside host.
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--no-first-run", "--disable-quic"])
        yield chromium
        chromium.close()


def _run_cells(page, cells, first: int, count: int) -> None:
    """Shift+Enter on each cell in turn, as a learner does, waiting for each to finish.

    Right after a notebook opens, JupyterLab can show the kernel as idle while its connection is
    still being made, and an execution sent then is dropped (the prompt stays "[ ]"); a learner just
    presses Shift+Enter again, and so does this.
    """
    for index in range(first, first + count):
        cell = cells.nth(index)
        is_code = "jp-CodeCell" in (cell.get_attribute("class") or "")
        for _attempt in range(3):
            page.keyboard.press("Shift+Enter")
            if not is_code:
                break
            prompt = cell.locator(".jp-InputArea-prompt")
            try:
                _wait_for(lambda: prompt.inner_text(timeout=scaled(2000)).strip() != "[ ]:", 10,
                          f"cell {index} to start")
                break
            except AssertionError:
                cell.click()
                page.keyboard.press("Escape")
        if is_code:
            _wait_for(lambda: re.fullmatch(r"\[\d+\]:", prompt.inner_text(timeout=scaled(2000)).strip()), 180,
                      f"cell {index} to finish")


def _kernel_idle(page) -> bool:
    return page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() > 0 \
        or "Idle" in page.locator(".jp-StatusBar-Widget").all_inner_texts().__str__()


@pytest.fixture
def page(browser):
    """A browser tab; on a failure its screenshot is kept, to show what the learner would have seen."""
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.set_default_timeout(scaled(30_000))    # Playwright's own 30 s, for every action and navigation
    yield tab
    OUTPUT.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(OUTPUT / "browser-12-cpu-last.png"))


def test_moving_the_quota_slider_rewrites_the_cgroup_and_redraws_the_live_plot(jupyterlab, page):
    page.goto(lab.url(jupyterlab).replace("/lab?", f"/lab/tree/{NOTEBOOK}?"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=scaled(90_000))
    _wait_for(lambda: _kernel_idle(page), 90, "the notebook's kernel to start")

    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.nth(0).click()
    page.keyboard.press("Escape")              # command mode: Shift+Enter runs and moves on
    _run_cells(page, cells, 0, SLIDER_CELL + 1)

    slider_cell = cells.nth(SLIDER_CELL)
    handle = slider_cell.locator(".widget-slider .noUi-handle")
    handle.wait_for(timeout=scaled(60_000))
    canvas = slider_cell.locator("canvas").first
    canvas.wait_for(timeout=scaled(30_000))
    _wait_for(lambda: _kernel_idle(page), 120, "the cells above the slider to finish")

    kernels = _kernel_pids(jupyterlab)
    caps_before = _wait_for(lambda: {p: v for p, v in _cap_files(kernels).items() if v.startswith("50000")},
                            30, "the notebook's group at the slider's starting cap of 0.5 CPU")
    picture_before = canvas.evaluate("c => c.toDataURL()")

    handle.focus()
    for _ in range(4):                         # 4 steps of 0.05 CPU: 0.5 -> 0.7
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")

    group_file = next(iter(caps_before))
    moved = _wait_for(lambda: Path(group_file).read_text().strip().startswith("70000") and True,
                      20, f"{group_file} to show the new cap of 0.7 CPU")
    assert moved
    redrawn = _wait_for(lambda: canvas.evaluate("c => c.toDataURL()") != picture_before, 20,
                        "the live plot to redraw")
    assert redrawn
    time.sleep(3)                              # let the usage line follow the new cap in the picture
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-12-cpu.png"), full_page=False)

    # Finish the notebook like a learner: the rest of the cells, ending with its cleanup cell.
    total = cells.count()                      # (Shift+Enter on the last cell adds an empty one)
    cells.nth(SLIDER_CELL + 1).click()         # where Shift+Enter left off
    page.keyboard.press("Escape")
    _run_cells(page, cells, SLIDER_CELL + 1, total - SLIDER_CELL - 1)
    last = cells.nth(total - 1)
    _wait_for(lambda: "left: 0" in last.inner_text(), 120, "the notebook's cleanup cell to report 0")
    assert not Path(group_file).exists(), "the notebook's cleanup cell should remove its group"
