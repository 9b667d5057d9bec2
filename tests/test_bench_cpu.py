"""The benchmark's reading of how busy the machine was, and the bound it draws."""

from __future__ import annotations

import time

import pytest

from benchmarks._cpu import CpuMeter, busy_ticks, metered, speedup_bound


def test_busy_ticks_leave_out_idle_iowait_and_steal() -> None:
    line = "cpu  100 20 30 4000 500 6 7 800 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n"
    assert busy_ticks(line) == 100 + 20 + 30 + 6 + 7


def test_cores_busy_interpolates_between_readings() -> None:
    meter = CpuMeter(ticks_per_second=100)
    for second, ticks in ((0.0, 0), (1.0, 100), (2.0, 300), (3.0, 300)):
        meter.add(second, ticks)
    assert meter.cores_busy(0.0, 1.0) == pytest.approx(1.0)
    assert meter.cores_busy(1.0, 2.0) == pytest.approx(2.0)
    assert meter.cores_busy(1.5, 2.5) == pytest.approx(1.0)  # half of 2, half of 0
    assert meter.cores_busy(0.5, 3.0) == pytest.approx(250 / 100 / 2.5)
    assert meter.cores_busy(-1.0, 1.0) is None  # before the first reading
    assert meter.cores_busy(1.0, 3.5) is None  # after the last
    assert meter.cores_busy(2.0, 2.0) is None
    assert meter.cores_busy(float("nan"), 2.0) is None


def test_the_bound_is_the_cores_left_or_the_workers() -> None:
    assert speedup_bound(1.5, 2, 2) == pytest.approx(2 / 1.5)
    assert speedup_bound(0.9, 2, 2) == 2.0
    assert speedup_bound(1.5, 8, 2) == 2.0
    assert speedup_bound(0.0, 2, 2) == 2.0


def test_a_busy_thread_shows_as_a_busy_core() -> None:
    """One thread spinning for 0.6 s reads as at least a third of a core on top of what
    the rest of the machine does (the reading is machine-wide)."""
    with metered() as meter:
        if meter is None:
            pytest.skip("no /proc/stat here")
        time.sleep(0.2)
        start = time.time()
        while time.time() - start < 0.6:
            pass
        end = time.time()
        time.sleep(0.2)
    busy = meter.cores_busy(start, end)
    assert busy is not None and busy >= 0.33
