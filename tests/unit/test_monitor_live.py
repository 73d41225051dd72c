"""The live plot and the snapshot over fake samples, headless: artists get the recorded data."""
from __future__ import annotations

import asyncio
import math
import warnings

import matplotlib
import pytest

from labkit.live import LivePlot, snapshot
from labkit.monitor import Sampler



@pytest.fixture(autouse=True)
def agg_backend():
    """Plain Agg: these tests are about the data in the artists, not the widget."""
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    plt.switch_backend("Agg")
    yield
    plt.close("all")
    plt.switch_backend(previous)


class FakeCgroup:
    name = "labkit-fake-abcdef"

    def __init__(self):
        self.values = {"memory_current": 0, "oom_kills": 0, "cpu_usage_usec": 0, "throttled_periods": 0}
        self.written = []

    def stats(self):
        return dict(self.values)

    def procs(self):
        return []

    def limits(self):
        return {"memory": 64 * 2**20, "cpu": 0.5, "pids": "max"}

    def set(self, **limits):
        self.written.append(limits)


def recorded(cg):
    clock = {"now": 0.0}
    sampler = Sampler(cg, rate=10, processes=False, clock=lambda: clock["now"])
    for i in range(20):
        cg.values["memory_current"] = min(i, 16) * 4 * 2**20
        cg.values["cpu_usage_usec"] = int(i * 0.05e6)
        cg.values["oom_kills"] = 1 if i >= 17 else 0
        sampler.sample_once()
        clock["now"] += 0.1
    return sampler


def test_plot_lines_carry_usage_limit_and_the_oom_mark():
    cg = FakeCgroup()
    sampler = recorded(cg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot = LivePlot(sampler, panels=("memory", "cpu"))
        plot.update()
    ax, _, _, usage, limit, marks = plot.drawing.artists[0]
    assert max(usage.get_ydata()) == pytest.approx(64)          # MiB
    assert set(limit.get_ydata()) == {64}
    assert list(marks["oom_kill"].get_xdata()) == pytest.approx([1.7])
    _, _, _, cpu, quota, _ = plot.drawing.artists[1]
    assert cpu.get_ydata()[-1] == pytest.approx(0.5)
    assert quota.get_ydata()[-1] == pytest.approx(0.5)
    assert ax.get_ylim()[1] > 64  # the limit line is inside the view


def test_snapshot_is_a_png():
    image = snapshot(recorded(FakeCgroup()), panels=("memory",), title="t")
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_slider_writes_the_limit_through_cgroup_set():
    import ipywidgets  # noqa: F401 - a declared dependency: its absence is a failure, not a skip
    cg = FakeCgroup()
    plot = LivePlot(recorded(cg), panels=("memory",))
    slider = plot.slider(cg, "memory", 16, 128, 8, 64)
    slider.value = 32
    assert cg.written == [{"memory": "32M"}]


def test_unknown_panel_is_refused():
    with pytest.raises(ValueError, match="panel"):
        LivePlot(recorded(FakeCgroup()), panels=("disk",))


def test_run_is_bounded_by_the_experiment():
    async def scenario():
        cg = FakeCgroup()
        plot = LivePlot(Sampler(cg, rate=50, processes=False), panels=("cpu",))

        async def experiment():
            await asyncio.sleep(0.2)
            return "done"

        await asyncio.wait_for(plot.run(experiment=experiment()), timeout=5)
        return plot

    plot = asyncio.run(scenario())
    assert len(plot.samplers[0].samples) >= 3
    assert not plot.samplers[0].running
    assert not any(math.isnan(x) for x in plot.drawing.artists[0][4].get_ydata())


def test_an_interrupted_cell_stops_samplers_redraw_and_experiment():
    """ipykernel interrupts an awaiting cell by cancelling it: everything run() started must stop."""
    async def scenario():
        cg = FakeCgroup()
        sampler = Sampler(cg, rate=50, processes=False)
        plot = LivePlot(sampler, panels=("memory",))
        finished = {"experiment": False}

        async def experiment():
            try:
                await asyncio.sleep(30)
            finally:
                finished["experiment"] = True

        cell = asyncio.ensure_future(plot.run(experiment=experiment()))
        for _ in range(500):                           # until the sampler is really running
            if len(sampler.samples) >= 3:
                break
            await asyncio.sleep(0.01)
        cell.cancel()                                  # what the interrupt button does
        with pytest.raises(asyncio.CancelledError):
            await cell
        count = len(sampler.samples)
        # no task is left on the loop (so nothing can sample any more): asked of the loop itself
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return sampler, count, finished, others

    sampler, count, finished, others = asyncio.run(scenario())
    assert finished["experiment"]                      # the experiment's finally ran
    assert count >= 3 and not sampler.running         # it sampled, and stopped with the cell
    assert others == []                                # no task left behind on the loop


def test_slider_retries_a_limit_the_kernel_refused_with_ebusy():
    """v1 refuses to lower memory.limit_in_bytes (EBUSY) while it cannot reclaim enough yet."""
    import errno

    from labkit.errors import KernelError

    class BusyCgroup(FakeCgroup):
        def __init__(self):
            super().__init__()
            self.refusals = 2

        def set(self, **limits):
            if self.refusals:
                self.refusals -= 1
                raise KernelError("write 24M to", "memory.limit_in_bytes", errno.EBUSY)
            self.written.append(limits)

    async def scenario():
        cg = BusyCgroup()
        plot = LivePlot(recorded(cg), panels=("memory",))
        slider = plot.slider(cg, "memory", 16, 128, 8, 64)
        slider.value = 24               # refused twice, written on the third try
        for _ in range(500):
            if cg.written:
                break
            await asyncio.sleep(0.01)
        return cg

    cg = asyncio.run(scenario())
    assert cg.refusals == 0 and cg.written == [{"memory": "24M"}]
