"""SIGTERM and SIGINT for a runner: the first asks for a graceful stop, the second exits now.

The first signal sets ``should_exit``; the runner finishes its batch, checkpoints and returns.
A second one ends the process at once, without unwinding: a client blocked on a dead broker
must not hold it up, and state is crash-safe by design (the last checkpoint plus replay).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import TracebackType

import structlog

log = structlog.get_logger(__name__)

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class ShutdownSignals:
    def __init__(self) -> None:
        self.should_exit = asyncio.Event()
        self.count = 0

    def _on_signal(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        log.info("shutdown_requested", signal=name, count=self.count)
        if self.count > 1:
            log.warning("forced_exit", signal=name, action="state resumes from the last checkpoint")
            logging.shutdown()  # flush the log handlers; nothing else runs
            os._exit(128 + signum)
        self.should_exit.set()

    async def __aenter__(self) -> ShutdownSignals:
        loop = asyncio.get_running_loop()
        for sig in _HANDLED:
            loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        for sig in _HANDLED:
            loop.remove_signal_handler(sig)
