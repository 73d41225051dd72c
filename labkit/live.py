"""Live plots of cgroups pressing against their limits, with sliders that move the limits.

What a learner sees: usage drawn as a solid line, the limit as a dashed line of the same colour,
events (an OOM kill, a refused fork, a throttled CPU period) marked on the time axis, and, below
the plot, sliders bound to the *live* limit - moving one writes the cgroup file (Cgroup.set) and,
a moment later, the usage line follows.

How it works, and why this way:

- The figure is an ipympl canvas (`%matplotlib widget`), created inside `plt.ioff()` so that it is
  shown once, where we put it in an ipywidgets layout, and not a second time by pyplot.
- It is redrawn by an asyncio task on the kernel's own event loop (`set_data` + `draw_idle()`),
  the same loop the samplers (labkit.monitor) run on. No threads: matplotlib is not thread-safe.
- After an experiment, `snapshot()` renders the recorded series to a PNG with a plain matplotlib
  Figure (no widget), so headless runs, nbval and exported HTML show the result too.
"""
from __future__ import annotations

import asyncio
import errno
import io
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .errors import InvalidValue
from .monitor import Sample, Sampler

MiB = 1024 * 1024
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _field(name: str, scale: float = 1.0):
    def values(samples: Sequence[Sample]):
        return [math.nan if getattr(s, name) is None else getattr(s, name) * scale for s in samples]
    return values


def _windowed_rate(counter: str, scale: float = 1.0, window: float = 0.5):
    """A counter's rate over the last `window` seconds at each sample, divided by `scale`.

    Per-sample rates jump: a CFS period is 100 ms, so one 100 ms sample of a throttled group swings
    between 0 and 1 CPU; a disk write arrives in whole requests. Over half a second or a second the
    rate the limit enforces shows."""
    def values(samples: Sequence[Sample]):
        out, j = [], 0
        for i, s in enumerate(samples):
            while j < i and samples[j].t < s.t - window:
                j += 1
            first, now, before = samples[j], getattr(s, counter), getattr(samples[j], counter)
            if i == j or now is None or before is None:
                out.append(math.nan)
            else:
                out.append(max(now - before, 0) / scale / (s.t - first.t))
        return out
    return values


@dataclass(frozen=True)
class Panel:
    """One subplot: which value is drawn against which limit, in which unit, and which events."""

    title: str
    ylabel: str
    usage: Callable[[Sequence[Sample]], list]
    limit: Callable[[Sequence[Sample]], list]
    events: tuple[str, ...]


PANELS = {
    "memory": Panel("memory", "MiB", _field("memory_current", 1 / MiB), _field("memory_max", 1 / MiB),
                    ("oom_kill",)),
    "swap": Panel("swap", "MiB", _field("swap_current", 1 / MiB), lambda s: [math.nan] * len(s), ()),
    "cpu": Panel("CPU", "CPUs", _windowed_rate("cpu_usage_usec", 1e6, 0.5), _field("cpu_max"), ("throttled",)),
    "pids": Panel("tasks", "tasks", _field("pids_current"), _field("pids_max"), ("fork_refused",)),
    "io": Panel("disk writes", "MiB/s", _windowed_rate("io_write_bytes", MiB, 1.0),
                _field("io_write_bps_max", 1 / MiB), ()),
}

# event kind -> (marker, colour, size, height in axes fraction, legend text); rare events big,
# events that come every period (throttling) or in storms (refused forks) small
EVENT_STYLE = {
    "oom_kill": ("X", "red", 11, 0.92, "OOM kill"),
    "fork_refused": ("v", "purple", 5, 0.95, "fork refused"),
    "throttled": ("|", "darkorange", 8, 0.04, "throttled"),
}

# slider name -> (Cgroup.set keyword, how a slider value becomes that keyword's value, label)
SLIDER_LIMITS = {
    "memory": ("memory", lambda v: f"{int(v)}M", "memory.max MiB"),
    "cpu": ("cpu", lambda v: round(float(v), 3), "CPU quota"),
    "pids": ("pids", lambda v: int(v), "pids.max"),
}


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Drawing:
    """The artists of one figure: per panel and sampler a usage line, a limit line, event marks."""

    def __init__(self, fig, samplers: Sequence[Sampler], panels: Sequence[str], title: str | None):
        import matplotlib.transforms as mtransforms

        unknown = [p for p in panels if p not in PANELS]
        if unknown:
            raise InvalidValue("panel", unknown[0], "one of " + ", ".join(PANELS))
        self.fig, self.samplers, self.panels = fig, list(samplers), [PANELS[p] for p in panels]
        axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
        self.axes = list(axes)
        self.artists = []  # (ax, sampler, panel, usage line, limit line, {kind: marks})
        for ax, panel in zip(self.axes, self.panels):
            strip = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
            for k, sampler in enumerate(self.samplers):
                color = COLORS[k % len(COLORS)]
                usage, = ax.plot([], [], color=color, lw=1.6, label=sampler.label)
                # plain lines for both: a limit change and the usage it causes then slope across
                # the same sampling interval, so usage never seems to move before its limit did
                limit, = ax.plot([], [], color=color, lw=1.2, ls="--", label=f"{sampler.label} limit")
                marks = {}
                for kind in panel.events:
                    marker, mcolor, size, height, text = EVENT_STYLE[kind]
                    marks[kind], = ax.plot([], [], ls="", marker=marker, color=mcolor, markersize=size,
                                           transform=strip, label=text if k == 0 else None)
                    marks[kind].height = height
                self.artists.append((ax, sampler, panel, usage, limit, marks))
            ax.set_title(panel.title, fontsize=10, loc="left")
            ax.set_ylabel(panel.ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))  # once: it is costly
        self.axes[-1].set_xlabel("seconds")
        if title:
            fig.suptitle(title)

    def update(self, window: float | None = None) -> None:
        """Copy the samplers' ring buffers into the artists (set_data) and rescale."""
        latest = 0.0
        for ax, sampler, panel, usage, limit, marks in self.artists:
            samples = list(sampler.samples)
            times = [s.t for s in samples]
            if times:
                latest = max(latest, times[-1])
            usage.set_data(times, panel.usage(samples))
            limit.set_data(times, panel.limit(samples))
            for kind, line in marks.items():
                when = [e.t for e in sampler.events if e.kind == kind]
                line.set_data(when, [line.height] * len(when))
        for ax in self.axes:
            ax.relim()
            ax.autoscale_view()
            low, high = ax.get_ylim()
            ax.set_ylim(0, max(high * 1.08, 1e-3))  # room above the limit line for the marks
        start = max(0.0, latest - window) if window else 0.0
        self.axes[-1].set_xlim(start, max(latest, start + 1.0))


class LivePlot:
    """An ipympl figure of one or more samplers, redrawn from an asyncio task, with limit sliders.

    `panels` picks the subplots (keys of PANELS: memory, swap, cpu, pids, io); `window` shows only the
    last N seconds (None: everything recorded); `fps` is how often the figure is redrawn.
    """

    def __init__(self, samplers: Sampler | Iterable[Sampler], panels: Sequence[str] = ("memory",),
                 title: str | None = None, window: float | None = None, fps: float = 4.0,
                 figsize: tuple[float, float] | None = None):
        import matplotlib.pyplot as plt

        self.samplers = [samplers] if isinstance(samplers, Sampler) else list(samplers)
        if not self.samplers:
            raise InvalidValue("samplers", samplers, "at least one Sampler")
        self.panels, self.title, self.window, self.fps = list(panels), title, window, fps
        self.figsize = figsize or (8.0, 2.4 * len(self.panels) + 0.6)
        with plt.ioff():  # show it once, inside our layout, not again by pyplot
            self.fig = plt.figure(figsize=self.figsize)
        self.drawing = _Drawing(self.fig, self.samplers, self.panels, title)
        # fixed margins, legends on the right: a layout engine would redo its work on every redraw
        height = self.figsize[1]
        self.fig.subplots_adjust(left=0.09, right=0.76, bottom=0.5 / height, top=1 - 0.55 / height,
                                 hspace=0.5)
        canvas = self.fig.canvas
        for attr, value in (("header_visible", False), ("footer_visible", False), ("resizable", False)):
            if hasattr(canvas, attr):
                setattr(canvas, attr, value)
        self.controls: list = []
        self._task: asyncio.Task | None = None

    # controls

    def slider(self, cgroup, limit: str, minimum: float, maximum: float, step: float, value: float,
               description: str | None = None):
        """A slider bound to a live limit: moving it calls `cgroup.set(<limit>=value)`."""
        import ipywidgets as w

        if limit not in SLIDER_LIMITS:
            raise InvalidValue("slider limit", limit, "one of " + ", ".join(SLIDER_LIMITS))
        keyword, convert, label = SLIDER_LIMITS[limit]
        kind = w.IntSlider if all(float(x).is_integer() for x in (minimum, maximum, step, value)) else w.FloatSlider
        slider = kind(value=value, min=minimum, max=maximum, step=step, continuous_update=False,
                      description=description or label, style={"description_width": "initial"},
                      layout=w.Layout(width="45%"))
        status = w.Label()

        def write(value, attempts_left: int = 10):
            if attempts_left < 10 and convert(slider.value) != value:
                return  # the slider moved on while we waited: that newer value was written instead
            try:
                cgroup.set(**{keyword: value})
            except Exception as exc:  # a refused value is shown, never a traceback in a callback
                # v1 answers EBUSY when it cannot reclaim below a lower memory limit *right now*
                # (a process keeps refilling its cache); a moment later it usually can
                retry = getattr(exc, "errno", None) == errno.EBUSY and attempts_left > 0
                loop = _running_loop()
                if retry and loop is not None:
                    status.value = f"the kernel is still reclaiming (EBUSY); trying {keyword}={value} again"
                    loop.call_later(0.2, write, value, attempts_left - 1)
                else:
                    status.value = f"refused: {exc}"
                return
            status.value = f"wrote {keyword}={value}"
            for sampler in self.samplers:   # show the new limit line at the next sample
                if sampler.cgroup is cgroup:
                    sampler.refresh_details()

        def on_change(change):
            write(convert(change["new"]))

        slider.observe(on_change, names="value")
        self.controls.append(w.HBox([slider, status]))
        return slider

    def widget(self):
        """The figure and its sliders in one ipywidgets layout."""
        import ipywidgets as w

        canvas = self.fig.canvas
        if not self._widget_canvas():  # not the ipympl backend: show a static view
            out = w.Output()
            with out:
                from IPython.display import display
                display(self.fig)
            canvas = out
        return w.VBox([canvas, *self.controls])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())

    # drawing

    def update(self) -> None:
        """Redraw once from the samplers' current records."""
        self.drawing.update(self.window)
        if self._widget_canvas():
            self.fig.canvas.draw_idle()  # ipympl renders when the browser asks; elsewhere snapshot() shows it

    def _widget_canvas(self) -> bool:
        import ipywidgets

        return isinstance(self.fig.canvas, ipywidgets.DOMWidget)

    async def _refresh(self) -> None:
        while True:
            self.update()
            if all(sampler.gone for sampler in self.samplers):
                return  # every cgroup was deleted: nothing will change any more
            await asyncio.sleep(1.0 / self.fps)

    def start(self) -> asyncio.Task:
        """Start the samplers and the redraw loop in the background (for slider play)."""
        for sampler in self.samplers:
            sampler.start()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh(), name="live plot")
        return self._task

    async def stop(self) -> None:
        """Stop the samplers and the redraw loop; draw the final state."""
        for sampler in self.samplers:
            await sampler.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.update()

    async def run(self, seconds: float | None = None, until: Callable[[], bool] | None = None,
                  experiment=None):
        """Sample and redraw until `seconds` pass, `until()` is true or `experiment` (a coroutine)
        finishes - whichever first; everything stops together, also when the cell is interrupted.
        Returns what the experiment returned (None without one)."""
        from .monitor import watch

        if seconds is None and until is None and experiment is None:
            raise InvalidValue("run()", "no bound", "seconds=, until= or experiment= so it ends")
        redraw = asyncio.ensure_future(self._refresh())
        job = asyncio.ensure_future(experiment) if experiment is not None else None
        stop = (lambda: (until is not None and until()) or (job is not None and job.done()))
        try:
            await watch(self.samplers, seconds, stop)
            if job is not None:
                return await job  # its result, or its own error re-raised
        finally:
            for task in (redraw, job):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(*(t for t in (redraw, job) if t is not None), return_exceptions=True)
            self.update()

    def snapshot(self, dpi: int = 90):
        """The recorded series as a static PNG (an IPython Image), for headless runs and HTML."""
        return snapshot(self.samplers, self.panels, self.title, figsize=self.figsize, dpi=dpi)


def snapshot(samplers: Sampler | Iterable[Sampler], panels: Sequence[str] = ("memory",),
             title: str | None = None, figsize: tuple[float, float] | None = None, dpi: int = 90,
             path: str | None = None):
    """Render samplers' records into a PNG with a plain Figure (no pyplot, no widget).

    Returns an IPython.display.Image; with `path` the PNG is also written there.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    samplers = [samplers] if isinstance(samplers, Sampler) else list(samplers)
    fig = Figure(figsize=figsize or (8.0, 2.4 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    _Drawing(fig, samplers, panels, title).update()
    image = png(fig, dpi)
    if path:
        with open(path, "wb") as f:
            f.write(image.data)
    return image


def png(fig, dpi: int = 90):
    """Any matplotlib Figure as a static PNG (an IPython Image): diagrams that must survive export."""
    from IPython.display import Image
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return Image(data=buffer.getvalue(), format="png")
