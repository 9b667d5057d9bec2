"""How busy the machine's processors were during part of a run (Linux, ``/proc/stat``).

A run on one worker overlaps work in several processes: the worker parses while the
database server ingests. When it already keeps most of the machine's cores busy, a
second worker has little left to use. On ``cores`` cores, a stage that kept ``busy``
cores busy on one worker can run at most ``cores / busy`` times faster on more workers
(the same work, on every core at once), and at most ``workers`` times faster.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAT = Path("/proc/stat")
EVERY = 0.05  # seconds between two readings


def busy_ticks(text: str) -> int:
    """Clock ticks all processors spent busy, from ``/proc/stat``'s first line: user, nice,
    system, irq and softirq (not idle, iowait, or steal, the time another guest ran)."""
    fields = [int(v) for v in text.split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return user + nice + system + irq + softirq


class CpuMeter:
    """Readings of the busy clock ticks over time, taken by :func:`metered`."""

    def __init__(self, ticks_per_second: float) -> None:
        self.per_second = ticks_per_second
        self.times: list[float] = []
        self.ticks: list[int] = []

    def add(self, at: float, ticks: int) -> None:
        self.times.append(at)
        self.ticks.append(ticks)

    def _at(self, moment: float) -> float:
        """Busy ticks up to ``moment``, interpolated between the readings around it."""
        i = bisect.bisect_left(self.times, moment)
        if i == 0:
            return float(self.ticks[0])
        if i == len(self.times):
            return float(self.ticks[-1])
        t0, t1 = self.times[i - 1], self.times[i]
        k0, k1 = self.ticks[i - 1], self.ticks[i]
        return k0 + (k1 - k0) * (moment - t0) / (t1 - t0) if t1 > t0 else float(k1)

    def cores_busy(self, start: float, end: float) -> float | None:
        """How many cores were busy on average from ``start`` to ``end`` (epoch seconds);
        None without readings that cover the span."""
        if len(self.times) < 2 or not start < end or start < self.times[0] \
                or end > self.times[-1]:
            return None
        return (self._at(end) - self._at(start)) / self.per_second / (end - start)


def speedup_bound(busy: float, cores: int, workers: int) -> float:
    """The most a stage that kept ``busy`` cores busy on one worker can gain on
    ``workers`` workers sharing ``cores`` cores."""
    return min(float(workers), cores / busy) if busy > 0 else float(workers)


@contextmanager
def metered() -> Iterator[CpuMeter | None]:
    """Read ``/proc/stat`` every ``EVERY`` seconds in the block; None where it is missing."""
    if not STAT.exists():
        yield None
        return
    meter = CpuMeter(float(os.sysconf("SC_CLK_TCK")))
    done = threading.Event()

    def read() -> None:
        while True:
            meter.add(time.time(), busy_ticks(STAT.read_text()))
            if done.wait(EVERY):
                meter.add(time.time(), busy_ticks(STAT.read_text()))
                return

    reader = threading.Thread(target=read, name="cpu-meter", daemon=True)
    reader.start()
    try:
        yield meter
    finally:
        done.set()
        reader.join()
