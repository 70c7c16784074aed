"""Is the process alive, and is it ready? The answers /healthz, /readyz and systemd's
watchdog give.

- Liveness: the runner calls ``progressed()`` after every turn of its loop, empty fetches
  included, so an idle input is healthy and only a stuck loop (a hung broker call, a kernel
  that never returns, a deadlock) goes stale. Liveness fails when nothing progressed for
  ``stall_s``. That the event loop itself is alive is implied by whoever asks: /healthz is
  answered on the same loop, and the watchdog pings from a task on it.
- Readiness: set by the runner (``set_ready(True)`` once partitions are assigned and their
  state restored; ``set_ready(False, reason)`` on revoke, restore or shutdown).

Plain and synchronous; the clock is injected so tests need no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str
    details: dict[str, float | str | bool] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | str | bool]:
        return {"status": "ok" if self.ok else "fail", "reason": self.reason, **self.details}


class Health:
    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if stall_s <= 0:
            raise ValueError(f"stall_s is {stall_s}; expected > 0")
        self.stall_s = stall_s
        self._clock = clock
        self._started = clock()
        # Start counts as progress: the first stall_s are the runner's to reach its loop.
        self._last_progress = self._started
        self._progress_count = 0
        self._ready = False
        self._ready_reason = "starting"

    def progressed(self) -> None:
        """The runner finished one turn of its loop (a batch, or an empty fetch)."""
        self._last_progress = self._clock()
        self._progress_count += 1

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """``reason`` says why not ready (e.g. "restoring partitions", "stopping")."""
        self._ready = ready
        self._ready_reason = "" if ready else (reason or "not ready")

    @property
    def ready(self) -> bool:
        return self._ready

    def seconds_since_progress(self) -> float:
        return self._clock() - self._last_progress

    def liveness(self) -> Verdict:
        since = self.seconds_since_progress()
        details: dict[str, float | str | bool] = {
            "seconds_since_progress": round(since, 3),
            "stall_s": self.stall_s,
            "loop_turns": self._progress_count,
        }
        if since > self.stall_s:
            return Verdict(
                False, f"no progress for {since:.1f} s (http.stall_s = {self.stall_s:g})", details
            )
        return Verdict(True, "", details)

    def readiness(self) -> Verdict:
        return Verdict(self._ready, self._ready_reason, {"ready": self._ready})
