"""The sampler and the live plot over REAL cgroups: a busy process's CPU time shows up, the sampler
stops when the cgroup is deleted or its task cancelled, and the plot builds and redraws headless."""
from __future__ import annotations

import asyncio
import os
import warnings

import pytest

from labkit.cgroups import Cgroup
from labkit.monitor import Sampler
from labkit.namespaces import spawn

pytestmark = pytest.mark.root

BUSY = ["sh", "-c", "while :; do :; done"]


def test_sampler_sees_a_busy_process_use_cpu_and_the_quota_as_limit():
    async def scenario(cg):
        sampler = Sampler(cg, rate=20)
        await sampler.run(seconds=1.0)
        return sampler

    # the top weight keeps a busy neighbour from starving the loop below its cap (then no throttling)
    with Cgroup.create(cpu=0.2, cpu_weight=10000) as cg:
        proc = spawn(BUSY, namespaces=None, cgroup=cg)
        try:
            sampler = asyncio.run(scenario(cg))
        finally:
            cg.kill()
            proc.wait()
    # counters come from the kernel: cpuacct.usage / cpu.stat usage_usec
    assert sampler.samples[-1].cpu_usage_usec > sampler.samples[0].cpu_usage_usec
    assert sampler.mean_rate("cpu_usage_usec", scale=1e6) > 0.05
    assert sampler.samples[-1].cpu_max == pytest.approx(0.2)
    assert sampler.samples[-1].pids_current >= 1
    assert any(p.pid == proc.pid for s in sampler.samples for p in s.procs)  # psutil saw it
    assert sampler.count("throttled") >= 1   # a fifth of a CPU for a busy loop: throttled every period


async def samples_taken(sampler, count: int) -> None:
    """Wait (on the sampler's own loop) until it has read the cgroup's files `count` times."""
    while len(sampler.samples) < count:
        await asyncio.sleep(0.01)


def test_sampler_stops_by_itself_when_the_cgroup_is_deleted():
    async def scenario(cg):
        sampler = Sampler(cg, rate=50)
        task = sampler.start()
        await asyncio.wait_for(samples_taken(sampler, 2), timeout=10)
        cg.delete()
        await asyncio.wait_for(task, timeout=5)  # ends on its own: no cancel here
        return sampler

    with Cgroup.create(pids=10) as cg:
        sampler = asyncio.run(scenario(cg))
    assert sampler.gone
    assert len(sampler.samples) >= 2
    assert not os.path.exists(cg.path("pids"))


def test_cancelling_the_task_stops_sampling_a_live_cgroup():
    async def scenario(cg):
        sampler = Sampler(cg, rate=50)
        task = sampler.start()
        await asyncio.wait_for(samples_taken(sampler, 2), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        count = len(sampler.samples)
        await asyncio.sleep(0.2)
        return sampler, count

    with Cgroup.create(pids=10) as cg:
        sampler, count = asyncio.run(scenario(cg))
        assert cg.exists() and not sampler.gone
    assert count >= 2 and len(sampler.samples) == count


def test_live_plot_builds_and_updates_headless_with_ipympl_without_warnings():
    import ipympl  # noqa: F401 - a declared dependency: its absence is a failure, not a skip
    import matplotlib

    import matplotlib.pyplot as plt

    from labkit.live import LivePlot

    previous = matplotlib.get_backend()
    plt.switch_backend("module://ipympl.backend_nbagg")   # what %matplotlib widget selects

    async def scenario(cg, plot):
        proc = spawn(["sh", "-c", "sleep 0.3; while :; do :; done"], namespaces=None, cgroup=cg)
        try:
            await plot.run(seconds=1.0)
        finally:
            cg.kill()
            proc.wait()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Cgroup.create(cpu=0.3, memory="64M", pids=20) as cg:
            sampler = Sampler(cg, rate=20)
            plot = LivePlot(sampler, panels=("cpu", "memory", "pids"))
            slider = plot.slider(cg, "cpu", 0.1, 1.0, 0.05, 0.3)
            widget = plot.widget()
            asyncio.run(scenario(cg, plot))
            slider.value = 0.6
            assert cg.limits()["cpu"] == pytest.approx(0.6)   # the slider wrote the cgroup file
            image = plot.snapshot()
    # A DeprecationWarning raised inside a dependency (ipympl's Toolbar vs traitlets) is hidden in a
    # notebook by Python's default filters; anything else - matplotlib's UserWarnings, our own - is not.
    shown = [w for w in caught if not (issubclass(w.category, DeprecationWarning)
                                       and "site-packages" in (w.filename or ""))]
    assert not shown, [f"{w.category.__name__}: {w.message} ({w.filename})" for w in shown]
    import ipywidgets
    assert isinstance(widget, ipywidgets.VBox)
    assert isinstance(plot.fig.canvas, ipywidgets.DOMWidget)     # a real ipympl canvas
    _, _, _, usage, limit, _ = plot.drawing.artists[0]
    assert len(usage.get_xdata()) == len(sampler.samples) >= 10
    assert max(limit.get_ydata()) == pytest.approx(0.3)
    assert image.data[:4] == b"\x89PNG"
    plt.close(plot.fig)
    plt.switch_backend(previous)


def test_background_plot_stops_by_itself_when_its_cgroup_is_deleted():
    import matplotlib.pyplot as plt

    from labkit.live import LivePlot

    previous = plt.get_backend()
    plt.switch_backend("Agg")

    async def scenario(cg):
        plot = LivePlot(Sampler(cg, rate=20), panels=("pids",), fps=20)
        redraw = plot.start()                 # what a slider cell does: runs on after the cell
        await asyncio.sleep(0.3)
        cg.delete()                           # the cleanup cell
        await asyncio.wait_for(redraw, timeout=5)
        return plot

    try:
        with Cgroup.create(pids=10) as cg:
            plot = asyncio.run(scenario(cg))
        assert plot.samplers[0].gone and not plot.samplers[0].running
    finally:
        plt.close("all")
        plt.switch_backend(previous)


def test_the_fast_counter_reads_agree_with_the_cgroup_files_and_end_with_the_cgroup():
    from labkit.errors import NotFound
    from labkit.monitor import CounterFiles

    with Cgroup.create(memory="64M", pids=10) as cg:
        proc = spawn(["sleep", "30"], namespaces=None, cgroup=cg)
        counters = CounterFiles(cg.version, cg.path)
        try:
            fast, full = counters.read(), cg.stats()
            for key in ("pids_current", "oom_kills", "pids_events_max", "throttled_periods"):
                assert fast[key] == full[key], key
            assert fast["pids_current"] == 1
            assert fast["cpu_usage_usec"] <= cg.stats()["cpu_usage_usec"]   # a counter: only grows
        finally:
            cg.kill()
            proc.wait()
        cg.delete()
        try:
            with pytest.raises(NotFound):       # its files are gone from under the open descriptors
                counters.read()
        finally:
            counters.close()
