"""SIGTERM once: a graceful stop is requested; twice: the process ends at once, even when
the runner is stuck (e.g. a client blocked on a dead broker)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

STUCK_RUNNER = """
import asyncio
from detector.config import LogSettings
from detector.logging import configure_logging
from detector.service.signals import ShutdownSignals

configure_logging(LogSettings(format="json"))  # logs to stderr; stdout is the test's channel

async def main():
    async with ShutdownSignals() as signals:
        print("ready", flush=True)
        await signals.should_exit.wait()
        print("stop requested", flush=True)
        await asyncio.sleep(3600)  # a graceful stop that never finishes

asyncio.run(main())
"""


def test_first_signal_asks_to_stop_second_exits_at_once() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_RUNNER], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == b"stop requested\n"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 10
        assert proc.stderr is not None
        assert b'"event": "forced_exit"' in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
