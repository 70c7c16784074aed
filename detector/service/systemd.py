"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per message to
the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace).

With ``Type=notify`` the unit is "started" at ``READY=1``; ``STATUS=`` shows in
``systemctl status``; ``STOPPING=1`` announces a graceful shutdown; ``WATCHDOG=1`` keeps
``WatchdogSec=`` from killing the service. Outside systemd ($NOTIFY_SOCKET unset) every call
is a no-op, so the runner calls them unconditionally.

``Watchdog`` pings at half of $WATCHDOG_USEC, but only while ``Health`` says the runner makes
progress: a hung pipeline stops the pings and systemd restarts the service
(``Restart=on-failure``), and a blocked event loop stops them too, since the pings come
from a task on that loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

from detector.service.background import StartStop, cancel_and_wait
from detector.service.health import Health

log = structlog.get_logger(__name__)


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """$WATCHDOG_USEC in seconds when the watchdog is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # set for another process (e.g. inherited from a parent)
    return int(usec) / 1e6


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _socket_address(raw)
        if raw and self.address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw, action="not notifying")
        self.watchdog_interval_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was sent."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the event loop: a full receiver queue fails the send instead.
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            # systemd gone or busy: the service keeps running; the failure is visible here
            # and, for the watchdog, in systemd restarting the service.
            log.warning("systemd_notify_failed", message=assignments[0], error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class Watchdog(StartStop):
    """Pings systemd's watchdog every ``interval_s`` (default: half of $WATCHDOG_USEC) while
    ``health`` is live. Does nothing when the watchdog is not enabled for this process."""

    def __init__(
        self, notifier: SystemdNotifier, health: Health, interval_s: float | None = None
    ) -> None:
        self.notifier = notifier
        self.health = health
        timeout = notifier.watchdog_interval_s
        if interval_s is None and timeout is not None:
            interval_s = timeout / 2
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.withheld = 0

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled and bool(self.interval_s)

    async def start(self) -> None:
        interval_s = self.interval_s
        if not self.notifier.enabled or not interval_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._ping(interval_s), name="systemd-watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _ping(self, interval_s: float) -> None:
        stalled = False
        while True:
            verdict = self.health.liveness()
            if verdict.ok:
                if self.notifier.watchdog():
                    self.pings += 1
                stalled = False
            else:
                self.withheld += 1
                if not stalled:  # once per stall, not once per interval
                    log.error("watchdog_withheld", reason=verdict.reason)
                stalled = True
            await asyncio.sleep(interval_s)
