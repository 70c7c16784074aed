"""sd_notify over a real AF_UNIX datagram socket, and the watchdog that follows Health."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from detector.service.health import Health
from detector.service.systemd import SystemdNotifier, Watchdog, watchdog_interval_s
from tests.service.clock import FakeClock


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.settimeout(5)


def test_messages_reach_the_notify_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("restored 4 partitions")
    assert sock.recv(4096) == b"READY=1\nSTATUS=restored 4 partitions"
    assert notifier.status("scoring")
    assert sock.recv(4096) == b"STATUS=scoring"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()
    notifier.close()


def test_abstract_socket() -> None:
    name = f"detector-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_no_op_without_notify_socket() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled is False


def test_a_vanished_socket_fails_the_send_not_the_service(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.ready()
    notifier.close()


def test_watchdog_interval_from_the_environment() -> None:
    pid = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None


async def test_watchdog_pings_at_half_the_timeout_only_while_live(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # 0.1 s: pings every 0.05 s
    clock = FakeClock()
    health = Health(stall_s=10.0, clock=clock)
    notifier = SystemdNotifier(env)
    watchdog = Watchdog(notifier, health)
    assert watchdog.interval_s == pytest.approx(0.05)
    async with watchdog:
        await watchdog.start()  # idempotent
        await asyncio.sleep(0.22)
        live = _received(sock)
        assert len(live) >= 2
        assert set(live) == {"WATCHDOG=1"}
        clock.advance(11.0)  # the runner stalls: the pings stop
        await asyncio.sleep(0.06)  # a ping in flight may land
        _received(sock)
        await asyncio.sleep(0.2)
        assert _received(sock) == []
        assert watchdog.withheld >= 2
        health.progressed()  # progress again: pings again
        await asyncio.sleep(0.12)
        assert "WATCHDOG=1" in _received(sock)
    await watchdog.stop()
    notifier.close()


async def test_watchdog_does_nothing_unless_enabled(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})  # no WATCHDOG_USEC
    async with Watchdog(notifier, Health(10.0)) as watchdog:
        assert not watchdog.enabled
        await asyncio.sleep(0.05)
    assert _received(sock) == []
    notifier.close()
