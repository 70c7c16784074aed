"""How late does the event loop run its tasks? A task sleeps ``interval_s`` again and again
and measures how much later than asked it woke up: CPU work on the loop (a long batch, a
blocking call) shows up here before it shows up anywhere else.

Every sample goes to the metrics histogram; ``recent()`` gives the p99 and maximum of the last
``window`` samples for log lines.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from detector.service.background import StartStop, cancel_and_wait
from detector.service.metrics import Metrics


@dataclass(frozen=True, slots=True)
class LagSummary:
    samples: int
    p99_s: float
    max_s: float


class LoopLagMonitor(StartStop):
    def __init__(
        self,
        metrics: Metrics | None = None,
        interval_s: float = 0.25,
        window: int = 240,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval_s <= 0 or window < 1:
            raise ValueError(f"interval_s ({interval_s}) must be > 0 and window ({window}) >= 1")
        self.metrics = metrics
        self.interval_s = interval_s
        self._clock = clock
        self._samples: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.create_task(self._measure(), name="loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def record(self, lag_s: float) -> None:
        """One sample (the task's; public so tests can feed known values)."""
        self._samples.append(lag_s)
        if self.metrics is not None:
            self.metrics.observe_loop_lag(lag_s)

    def recent(self) -> LagSummary:
        if not self._samples:
            return LagSummary(0, 0.0, 0.0)
        ordered = sorted(self._samples)
        # Nearest-rank percentile: the smallest sample with at least 99 % at or below it.
        rank = max(1, math.ceil(0.99 * len(ordered)))
        return LagSummary(len(ordered), ordered[rank - 1], ordered[-1])

    async def _measure(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, self._clock() - asked - self.interval_s))
