"""Watch a cgroup: sample its counters at a steady rate into a bounded ring buffer.

A cgroup's files are mostly *counters* (CPU time used so far, bytes written so far, OOM kills so
far). What a learner wants to see is *rates* and *moments*: how many CPUs the group uses right now,
how many bytes per second it writes, the instant the OOM killer struck. So the sampler

1. reads the counters the plots show `rate` times a second (from a labkit Cgroup: each file opened
   once and re-read with os.pread at offset 0 - cgroupfs writes a file's text afresh at every read
   from its start - and parsed with plain string operations; from anything else with `.stats()`,
   that), and the group's limits and, through psutil, the processes inside it twice a second;
2. turns each reading into a `Sample`, with rates derived from the previous one
   (CPUs used = delta CPU time / delta wall time; bytes/s = delta bytes / delta wall time);
3. notices `Event`s when a counter goes up: an OOM kill, a refused fork (pids.max hit), CFS
   throttling;
4. keeps the last `keep` samples and events in `collections.deque(maxlen=...)`, so a sampler left
   running all day never grows.

In a notebook it runs as an asyncio task on the kernel's own event loop - not a thread, because the
live plot (labkit.live) draws with matplotlib, which is not thread-safe. It stops by itself when the
cgroup goes away, and cleanly when its task is cancelled (which is what interrupting a cell does to
an awaited cell in ipykernel)::

    sampler = Sampler(cg, rate=10)
    task = sampler.start()          # runs in the background, on the kernel's loop
    ...
    await sampler.stop()

or, bounded in time::

    await sampler.run(seconds=3)
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import psutil

from .cgroups import Cgroup, files
from .errors import InvalidValue, LabkitError, NotFound


# Counters whose increase is an event worth marking on a plot: sample field -> event kind.
EVENT_COUNTERS = {
    "oom_kills": "oom_kill",          # memory.events oom_kill (v2) / memory.oom_control oom_kill (v1)
    "pids_events_max": "fork_refused",  # pids.events max: a fork/clone failed with EAGAIN
    "throttled_periods": "throttled",   # cpu.stat nr_throttled: periods in which the quota ran out
}


@dataclass(frozen=True)
class Proc:
    """One process inside the cgroup, as psutil sees it."""

    pid: int
    name: str
    rss: int            # bytes resident
    cpu_percent: float  # of one CPU, since the previous read (0.0 on the first)
    cpu_num: int        # the CPU it ran on last (cpuset pins show here)


@dataclass(frozen=True)
class Sample:
    """One reading of a cgroup. Counters are as the kernel reports them; rates are derived.

    A value the backend cannot provide (e.g. swap on a machine without swap accounting) is None.
    Limits are None when unlimited ("max").
    """

    t: float                              # seconds since the sampler started (monotonic clock)
    # counters and gauges, named as Cgroup.stats() names them (the same on v1 and v2)
    memory_current: int | None = None     # bytes charged now (page cache included)
    memory_peak: int | None = None        # highest memory_current the kernel saw
    swap_current: int | None = None       # bytes swapped out, where the backend reports it
    oom_kills: int | None = None          # processes the OOM killer killed in this group
    cpu_usage_usec: int | None = None     # CPU time used by all its tasks, ever
    nr_periods: int | None = None         # CFS enforcement periods elapsed
    throttled_periods: int | None = None  # periods in which the quota ran out (nr_throttled)
    throttled_usec: int | None = None     # total time spent throttled
    pids_current: int | None = None       # tasks (threads included) in the group
    pids_events_max: int | None = None    # forks refused because pids.max was reached
    io_read_bytes: int | None = None      # bytes read from block devices, ever
    io_write_bytes: int | None = None     # bytes written to block devices, ever
    # the limits in force at that moment, from Cgroup.limits() (None: no limit)
    memory_max: int | None = None         # bytes
    cpu_max: float | None = None          # CPUs (quota / period)
    pids_max: int | None = None           # tasks
    io_write_bps_max: int | None = None   # bytes/s on the (first) limited device
    # derived from the previous sample
    cpu: float | None = None             # CPUs in use (1.0 = one whole CPU)
    io_read_bps: float | None = None
    io_write_bps: float | None = None
    procs: tuple[Proc, ...] = ()


@dataclass(frozen=True)
class Event:
    """A counter went up between two samples."""

    t: float
    kind: str       # "oom_kill", "fork_refused" or "throttled"
    count: int      # by how much it went up
    total: int      # its value now

    def describe(self) -> str:
        words = {"oom_kill": "OOM kill", "fork_refused": "fork refused", "throttled": "throttled period"}
        noun = words.get(self.kind, self.kind) + ("s" if self.count != 1 else "")
        return f"{self.count} {noun} (total {self.total})"


# --- turning stats into samples (pure functions: the unit tests drive these) --------------------

def _number(value):
    """Kernel 'max' or a missing value -> None; numbers stay numbers."""
    if value is None or value == "max":
        return None
    return value


_DERIVED = ("t", "cpu", "io_read_bps", "io_write_bps", "procs")


def reading(stats: dict, t: float, limits: dict | None = None, procs: tuple = ()) -> Sample:
    """A Sample (without the derived rates) from `Cgroup.stats()` and, optionally, `Cgroup.limits()`."""
    names = Sample.__dataclass_fields__
    values = {key: _number(value) for key, value in stats.items() if key in names and key not in _DERIVED}
    values["procs"] = procs
    if limits:
        io = limits.get("io") or ()
        writes = [_number(item.get("write_bps") if isinstance(item, dict) else getattr(item, "write_bps", None))
                  for item in io]
        values.update(memory_max=_number(limits.get("memory")), cpu_max=_number(limits.get("cpu")),
                      pids_max=_number(limits.get("pids")),
                      io_write_bps_max=next((w for w in writes if w is not None), None))
    return Sample(t=t, **values)


def _rate(now, before, dt: float, scale: float = 1.0) -> float | None:
    """Per-second rate of a counter; None when unknown; a counter that went back (reset) -> 0."""
    if now is None or before is None or dt <= 0:
        return None
    return max(now - before, 0) / scale / dt


def derive(sample: Sample, previous: Sample | None) -> Sample:
    """Fill in the rates of `sample` from the counters of the sample before it."""
    if previous is None:
        return sample
    dt = sample.t - previous.t
    return replace(
        sample,
        cpu=_rate(sample.cpu_usage_usec, previous.cpu_usage_usec, dt, scale=1e6),
        io_read_bps=_rate(sample.io_read_bytes, previous.io_read_bytes, dt),
        io_write_bps=_rate(sample.io_write_bytes, previous.io_write_bytes, dt),
    )


def events_between(previous: Sample | None, sample: Sample) -> list[Event]:
    """The events that happened between two samples: every watched counter that went up."""
    if previous is None:
        return []
    found = []
    for name, kind in EVENT_COUNTERS.items():
        now, before = getattr(sample, name), getattr(previous, name)
        if now is not None and before is not None and now > before:
            found.append(Event(sample.t, kind, now - before, now))
    return found


# --- the counters the plots show, read cheaply (the hot path) ----------------------------------------

def _single(data: bytes, _key=None) -> int:
    return int(data)


def _keyed(data: bytes, key: bytes) -> int | None:
    """The value of `key` in a flat-keyed file ("key value" lines), found without splitting it all."""
    line = key + b" "
    if data.startswith(line):
        start = len(line)
    else:
        at = data.find(b"\n" + line)
        if at < 0:
            return None
        start = at + 1 + len(line)
    end = data.find(b"\n", start)
    return int(data[start:end] if end >= 0 else data[start:])


def _usec_from_ns(data: bytes, _key=None) -> int:
    return int(data) // 1000


def _blkio(data: bytes, direction: str) -> int:
    return files.parse_blkio_bytes(data.decode()).get(direction, 0)


def _io_stat(data: bytes, key: str) -> int:
    return sum(device.get(key, 0) for device in files.parse_nested_keyed(data.decode()).values())


# controller -> (file, ((Sample field, parser, key), ...)): what memory, cpu, pids and io panels and
# the events need. Cgroup.stats() reads more (memory_peak, nr_periods, throttled_usec) than plots show.
COUNTERS = {
    "v1": (("memory", "memory.usage_in_bytes", (("memory_current", _single, None),)),
           ("memory", "memory.oom_control", (("oom_kills", _keyed, b"oom_kill"),)),
           ("cpuacct", "cpuacct.usage", (("cpu_usage_usec", _usec_from_ns, None),)),
           ("cpu", "cpu.stat", (("throttled_periods", _keyed, b"nr_throttled"),)),
           ("pids", "pids.current", (("pids_current", _single, None),)),
           ("pids", "pids.events", (("pids_events_max", _keyed, b"max"),)),
           ("blkio", "blkio.throttle.io_service_bytes_recursive", (("io_read_bytes", _blkio, "Read"),
                                                                   ("io_write_bytes", _blkio, "Write")))),
    "v2": (("memory", "memory.current", (("memory_current", _single, None),)),
           ("memory", "memory.swap.current", (("swap_current", _single, None),)),
           ("memory", "memory.events", (("oom_kills", _keyed, b"oom_kill"),)),
           ("cpu", "cpu.stat", (("cpu_usage_usec", _keyed, b"usage_usec"),
                                ("throttled_periods", _keyed, b"nr_throttled"))),
           ("pids", "pids.current", (("pids_current", _single, None),)),
           ("pids", "pids.events", (("pids_events_max", _keyed, b"max"),)),
           ("io", "io.stat", (("io_read_bytes", _io_stat, "rbytes"), ("io_write_bytes", _io_stat, "wbytes")))),
}


class CounterFiles:
    """The counter files of one cgroup, kept open: `read()` re-reads each with one pread(2).

    `path_of(controller)` gives the cgroup's directory for a controller (Cgroup.path); a controller
    or a file this host lacks is left out, and its fields stay None, as in Cgroup.stats()."""

    def __init__(self, version: str, path_of: Callable[[str], str]):
        self._files: list[tuple[int, tuple]] = []
        for controller, name, fields in COUNTERS[version]:
            try:
                fd = os.open(os.path.join(path_of(controller), name), os.O_RDONLY | os.O_CLOEXEC)
            except (OSError, LabkitError):     # not mounted, not enabled, or not in this kernel
                continue
            self._files.append((fd, fields))

    def read(self) -> dict:
        values = {}
        try:
            for fd, fields in self._files:
                data = os.pread(fd, 65536, 0)
                for field, parse, key in fields:
                    values[field] = parse(data, key)
        except OSError as exc:      # ENODEV: the cgroup was removed under our open files
            raise NotFound(f"cgroup counters: {exc.strerror}") from None
        return values

    def close(self) -> None:
        for fd, _ in self._files:
            os.close(fd)
        self._files = []


# --- the processes inside, through psutil --------------------------------------------------------

class _ProcessTable:
    """psutil.Process objects kept between samples, so cpu_percent() has a baseline."""

    def __init__(self):
        self._known: dict[int, psutil.Process] = {}

    def read(self, pids: Iterable[int], limit: int) -> tuple[Proc, ...]:
        procs, alive = [], {}
        for pid in list(pids)[:limit]:
            proc = self._known.get(pid)
            try:
                if proc is None:
                    proc = psutil.Process(pid)
                    proc.cpu_percent(None)  # first call only sets the baseline
                with proc.oneshot():
                    procs.append(Proc(pid, proc.name(), proc.memory_info().rss, proc.cpu_percent(None),
                                      proc.cpu_num()))
                alive[pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # it exited between listing and reading: normal in a fork bomb
        self._known = alive
        return tuple(procs)


# --- the sampler ---------------------------------------------------------------------------------

class Sampler:
    """Samples one cgroup `rate` times a second into a ring buffer of the last `keep` samples.

    `cgroup` is a labkit Cgroup (anything with `.stats()` and `.procs()`); `label` names the series
    on a plot. Counters are read every tick. Limits (`.limits()`, when the cgroup has it) and the
    processes inside (cgroup.procs and psutil) change on a human timescale and cost more to read,
    so they are refreshed every `detail_interval` seconds and carried into the samples between -
    a slider calls `refresh_details()` so its new limit shows at once; after `cg.set()` in code, do
    the same (or the line follows within half a second). `processes=False` skips
    psutil altogether; `max_procs` bounds how many processes are read (a fork bomb has hundreds).
    """

    def __init__(self, cgroup, rate: float = 10.0, keep: int = 3000, label: str | None = None,
                 processes: bool = True, max_procs: int = 32, detail_interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 < rate <= 1000:
            raise InvalidValue("sampling rate", rate, "a number of samples per second in (0, 1000]")
        if keep < 2:
            raise InvalidValue("keep", keep, "at least 2 samples")
        self.cgroup, self.rate, self.label = cgroup, float(rate), label or getattr(cgroup, "name", "cgroup")
        self.samples: deque[Sample] = deque(maxlen=keep)
        self.events: deque[Event] = deque(maxlen=keep)
        self.processes, self.max_procs, self.detail_interval = processes, max_procs, detail_interval
        self.read_limits = hasattr(cgroup, "limits")
        self.gone = False                       # True once the cgroup disappeared
        self._clock = clock
        self._start: float | None = None
        self._table = _ProcessTable()
        self._task: asyncio.Task | None = None
        self._detail_at: float | None = None    # when limits and processes were last read
        self._limits: dict | None = None
        self._procs: tuple[Proc, ...] = ()
        self._counters: CounterFiles | None = None    # open while sampling a labkit Cgroup

    # one sample

    def refresh_details(self) -> None:
        """Read limits and processes at the next sample (call after changing a limit)."""
        self._detail_at = None

    def sample_once(self) -> Sample | None:
        """Read the cgroup now; append and return the Sample, or None (and `gone`) if it vanished."""
        if self.gone:
            return None
        now = self._clock()
        if self._start is None:
            self._start = now
        try:
            stats = self._read_counters()
            if self._detail_at is None or now - self._detail_at >= self.detail_interval:
                self._detail_at = now
                self._limits = self.cgroup.limits() if self.read_limits else None
                self._procs = self._table.read(self._pids(), self.max_procs) if self.processes else ()
            vanished = all(value is None for value in stats.values()) and not self._exists()
        except Exception as exc:
            # the cgroup was removed while (or before) we read it: that ends the watch, not an error
            if not isinstance(exc, (NotFound, FileNotFoundError)) and self._exists():
                raise
            vanished = True
        if vanished:
            self.gone = True
            self.close()
            return None
        previous = self.samples[-1] if self.samples else None
        sample = derive(reading(stats, now - self._start, self._limits, self._procs), previous)
        new_events = events_between(previous, sample)
        self.samples.append(sample)
        self.events.extend(new_events)
        return sample

    def _read_counters(self) -> dict:
        if not isinstance(self.cgroup, Cgroup):
            return self.cgroup.stats()
        if self._counters is None:
            self._counters = CounterFiles(self.cgroup.version, self.cgroup.path)
        return self._counters.read()

    def _pids(self) -> Iterable[int]:
        """The pids inside. On v1 every hierarchy lists the same processes: one walk (the pids
        controller's tree), not one per hierarchy as Cgroup.procs() does."""
        if isinstance(self.cgroup, Cgroup) and self.cgroup.version == "v1":
            try:
                return sorted(files.pids_in(self.cgroup.path("pids")))
            except LabkitError:
                pass                # no pids controller here
        return self.cgroup.procs()

    def close(self) -> None:
        """Close the counter files (run() does it when it ends; the next sample opens them again)."""
        if self._counters is not None:
            self._counters.close()
            self._counters = None

    def _exists(self) -> bool:
        exists = getattr(self.cgroup, "exists", None)
        return True if exists is None else bool(exists())

    # running on the event loop

    async def run(self, seconds: float | None = None, until: Callable[[], bool] | None = None) -> None:
        """Sample every 1/rate s until `seconds` pass, `until()` is true, the cgroup goes away, or
        the task is cancelled. Ticks are scheduled on an absolute grid, so a slow sample does not
        make the next ones drift."""
        period = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        began = next_tick = loop.time()
        try:
            while True:
                if self.sample_once() is None:
                    return  # the cgroup is gone: nothing left to watch
                if until is not None and until():
                    return
                if seconds is not None and loop.time() - began >= seconds:
                    return
                next_tick += period
                delay = next_tick - loop.time()
                if delay < 0:  # we fell behind (a busy machine): skip missed ticks, don't burst
                    next_tick = loop.time()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            self.close()

    def start(self, seconds: float | None = None) -> asyncio.Task:
        """Run in the background on the running loop (a notebook's); returns the task."""
        if self._task is not None and not self._task.done():
            return self._task
        self._task = asyncio.get_running_loop().create_task(self.run(seconds), name=f"sampler {self.label}")
        return self._task

    async def stop(self) -> None:
        """Cancel the background task and wait until it has stopped."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # reading the record

    def series(self, name: str) -> tuple[list[float], list]:
        """(times, values) of one Sample field, skipping samples where it is None."""
        times, values = [], []
        for sample in self.samples:
            value = getattr(sample, name)
            if value is not None:
                times.append(sample.t)
                values.append(value)
        return times, values

    def mean(self, name: str, since: float = 0.0, until: float | None = None) -> float | None:
        """Mean of a field over samples with since <= t <= until (None if there are none)."""
        values = [getattr(s, name) for s in self.samples
                  if s.t >= since and (until is None or s.t <= until) and getattr(s, name) is not None]
        return sum(values) / len(values) if values else None

    def mean_rate(self, counter: str, since: float = 0.0, until: float | None = None,
                  scale: float = 1.0) -> float | None:
        """Average rate of a counter between two times: (last - first) / elapsed.

        More robust than averaging per-sample rates: a late tick on a busy machine changes
        nothing, because it is the counter's own total that is divided by the real elapsed time.
        """
        window = [s for s in self.samples if s.t >= since and (until is None or s.t <= until)
                  and getattr(s, counter) is not None]
        if len(window) < 2:
            return None
        return _rate(getattr(window[-1], counter), getattr(window[0], counter),
                     window[-1].t - window[0].t, scale)

    def count(self, kind: str) -> int:
        """How many times an event of `kind` happened while sampling."""
        return sum(e.count for e in self.events if e.kind == kind)

    @property
    def now(self) -> float:
        """Seconds since the first sample, on the sampler's clock (for marking phases)."""
        return 0.0 if self._start is None else self._clock() - self._start


async def watch(samplers: Iterable[Sampler], seconds: float | None = None,
                until: Callable[[], bool] | None = None) -> None:
    """Run several samplers side by side until `seconds` pass or `until()`; all stop together,
    also when this coroutine is cancelled (an interrupted cell)."""
    tasks = [asyncio.ensure_future(s.run(seconds, until)) for s in samplers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
