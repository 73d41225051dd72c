"""The sampler over a fake cgroup: ring buffer bounds, rate derivation, event detection, stopping.

Only the cgroup is faked (a dict of counters we advance by hand); the code under test is the real
labkit.monitor. The real kernel is exercised in tests/integration/test_monitor.py.
"""
from __future__ import annotations

import asyncio

import pytest

from labkit.errors import InvalidValue, NotFound
from labkit.monitor import Event, Sample, Sampler, derive, events_between, reading, watch


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeCgroup:
    """Counters a test sets; `.stats()` returns them, or raises NotFound once deleted."""

    name = "labkit-fake-abcdef"

    def __init__(self, **stats):
        self.values = dict(stats)
        self.deleted = False

    def stats(self):
        if self.deleted:
            raise NotFound("cgroup labkit-fake-abcdef: no such file or object")
        return dict(self.values)

    def procs(self):
        return []


def make(rate=10.0, keep=5, **stats):
    clock = FakeClock()
    cg = FakeCgroup(**stats)
    return cg, clock, Sampler(cg, rate=rate, keep=keep, processes=False, clock=clock)


def test_ring_buffer_keeps_only_the_last_samples():
    cg, clock, sampler = make(keep=5, memory_current=0)
    for i in range(12):
        cg.values["memory_current"] = i
        sampler.sample_once()
        clock.now += 0.1
    assert len(sampler.samples) == 5
    assert [s.memory_current for s in sampler.samples] == [7, 8, 9, 10, 11]


def test_cpu_rate_is_delta_usage_over_delta_time():
    cg, clock, sampler = make(cpu_usage_usec=0)
    sampler.sample_once()
    clock.now += 0.5
    cg.values["cpu_usage_usec"] = 250_000  # 0.25 s of CPU in 0.5 s of wall time
    second = sampler.sample_once()
    assert sampler.samples[0].cpu is None  # no previous sample, no rate
    assert second.cpu == pytest.approx(0.5)
    assert second.t == pytest.approx(0.5)


def test_io_rates_and_a_counter_reset_never_goes_negative():
    previous = Sample(t=1.0, io_write_bytes=1_000_000, io_read_bytes=10)
    now = derive(Sample(t=3.0, io_write_bytes=5_000_000, io_read_bytes=0), previous)
    assert now.io_write_bps == pytest.approx(2_000_000)
    assert now.io_read_bps == 0


def test_mean_rate_uses_first_and_last_counter_in_the_window():
    cg, clock, sampler = make(keep=100, cpu_usage_usec=0)
    for i in range(21):  # 2 s at 10 Hz, a steady 0.25 CPU
        cg.values["cpu_usage_usec"] = int(i * 0.1 * 0.25e6)
        sampler.sample_once()
        clock.now += 0.1
    assert sampler.mean_rate("cpu_usage_usec", scale=1e6) == pytest.approx(0.25)
    assert sampler.mean_rate("cpu_usage_usec", since=1.0, until=1.5, scale=1e6) == pytest.approx(0.25)
    assert sampler.mean("cpu", since=0.5) == pytest.approx(0.25)


def test_limits_become_sample_fields_and_max_becomes_none():
    limits = {"memory": "max", "pids": 20, "cpu": 0.5, "io": [{"device": "7:0", "write_bps": 4096}]}
    sample = reading({"memory_current": 5, "unrelated_key": 1}, t=0.0, limits=limits)
    assert sample.memory_max is None and sample.pids_max == 20 and sample.cpu_max == 0.5
    assert sample.io_write_bps_max == 4096 and sample.memory_current == 5


def test_events_are_counters_that_went_up():
    before = Sample(t=0.0, oom_kills=0, pids_events_max=3, throttled_periods=10)
    after = Sample(t=0.1, oom_kills=1, pids_events_max=3, throttled_periods=12)
    found = events_between(before, after)
    assert found == [Event(0.1, "oom_kill", 1, 1), Event(0.1, "throttled", 2, 12)]
    assert events_between(None, after) == []


def test_sampler_records_events_and_counts_them():
    cg, clock, sampler = make(oom_kills=0, pids_events_max=0)
    sampler.sample_once()
    for _ in range(3):
        clock.now += 0.1
        cg.values["pids_events_max"] += 2
        sampler.sample_once()
    clock.now += 0.1
    cg.values["oom_kills"] = 1
    sampler.sample_once()
    assert sampler.count("fork_refused") == 6
    assert sampler.count("oom_kill") == 1
    assert "OOM kill" in sampler.events[-1].describe()


def test_sampler_stops_when_the_cgroup_goes_away():
    async def scenario():
        cg, clock, sampler = make(memory_current=1)

        async def delete_soon():
            await asyncio.sleep(0.05)
            cg.deleted = True

        deleter = asyncio.ensure_future(delete_soon())
        await asyncio.wait_for(sampler.run(), timeout=5)  # returns by itself, no timeout
        await deleter
        return sampler

    sampler = asyncio.run(scenario())
    assert sampler.gone
    assert sampler.sample_once() is None


def test_cancelling_the_task_stops_the_sampler():
    async def scenario():
        cg = FakeCgroup(memory_current=1)
        sampler = Sampler(cg, rate=50, processes=False)
        task = sampler.start()
        await asyncio.sleep(0.1)
        assert sampler.running
        await sampler.stop()
        count = len(sampler.samples)
        await asyncio.sleep(0.1)
        return task, sampler, count

    task, sampler, count = asyncio.run(scenario())
    assert task.cancelled()
    assert not sampler.running
    assert count >= 2 and len(sampler.samples) == count  # nothing sampled after stop()


def test_watch_runs_several_samplers_until_the_condition():
    async def scenario():
        samplers = [Sampler(FakeCgroup(cpu_usage_usec=0), rate=100, processes=False) for _ in range(2)]
        flag = {"done": False}

        async def finish():
            await asyncio.sleep(0.1)
            flag["done"] = True

        asyncio.ensure_future(finish())
        await asyncio.wait_for(watch(samplers, until=lambda: flag["done"]), timeout=5)
        return samplers

    samplers = asyncio.run(scenario())
    assert all(len(s.samples) >= 2 for s in samplers)
    assert not any(s.running for s in samplers)


@pytest.mark.parametrize("rate", [0, -1, 5000])
def test_bad_rate_is_refused_with_the_accepted_range(rate):
    with pytest.raises(InvalidValue, match="samples per second"):
        Sampler(FakeCgroup(), rate=rate)


def test_limits_are_read_every_detail_interval_and_on_request():
    cg, clock, sampler = make(keep=100, memory_current=1)
    sampler.detail_interval = 0.25
    reads = []
    cg.limits = lambda: reads.append(clock.now) or {"memory": 100 + len(reads)}
    sampler.read_limits = True
    for _ in range(10):                  # 1 s at 10 Hz; details every 0.25 s
        sampler.sample_once()
        clock.now += 0.1
    assert len(reads) == 4
    assert [s.memory_max for s in sampler.samples][:4] == [101, 101, 101, 102]
    sampler.refresh_details()            # what a slider does after writing a limit
    sampler.sample_once()
    assert len(reads) == 5 and sampler.samples[-1].memory_max == 105
