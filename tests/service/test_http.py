"""The real HTTP server on port 0, asked by a real client."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detector.errors import DetectorError
from detector.service.health import Health
from detector.service.http import HttpListenError, HttpServer, parse_listen
from detector.service.metrics import Metrics
from detector.stream.pipeline import Counters
from tests.service.clock import FakeClock


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_metrics_endpoint_serves_the_registry(client: aiohttp.ClientSession) -> None:
    metrics = Metrics()
    metrics.observe_counters(Counters(messages=4, points=3, non_finite=1))
    async with HttpServer("127.0.0.1:0", metrics, Health(60.0)) as server:
        assert server.port > 0
        async with client.get(f"{server.url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["detector_points"].samples[0].value == 3
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with client.get(f"{server.url}/metrics", headers=headers) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await response.text()).endswith("# EOF\n")


async def test_healthz_follows_progress(client: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    health = Health(stall_s=30.0, clock=clock)
    async with HttpServer("127.0.0.1:0", Metrics(), health) as server:
        async with client.get(f"{server.url}/healthz") as response:
            assert response.status == 200
            body = await response.json()
            assert body["status"] == "ok"
            assert body["stall_s"] == 30.0
        clock.advance(31.0)
        async with client.get(f"{server.url}/healthz") as response:
            assert response.status == 503
            body = await response.json()
            assert body["status"] == "fail"
            assert "no progress for 31.0 s" in body["reason"]
        health.progressed()
        async with client.get(f"{server.url}/healthz") as response:
            assert response.status == 200


async def test_readyz_follows_the_runner(client: aiohttp.ClientSession) -> None:
    health = Health(stall_s=30.0)
    async with HttpServer("127.0.0.1:0", Metrics(), health) as server:
        async with client.get(f"{server.url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["reason"] == "starting"
        health.set_ready(True)
        async with client.get(f"{server.url}/readyz") as response:
            assert response.status == 200
            assert (await response.json()) == {"status": "ok", "reason": "", "ready": True}
        health.set_ready(False, "stopping")
        async with client.get(f"{server.url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["reason"] == "stopping"
        async with client.get(f"{server.url}/nothing") as response:
            assert response.status == 404


async def test_start_and_stop_are_idempotent(client: aiohttp.ClientSession) -> None:
    server = HttpServer("127.0.0.1:0", Metrics(), Health(60.0))
    await server.stop()  # never started: nothing to do
    await server.start()
    port = server.port
    await server.start()  # already serving: same socket
    assert server.port == port
    await server.stop()
    await server.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_taken_port_is_a_detector_error_naming_http_listen() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        server = HttpServer(listen, Metrics(), Health(60.0))
        with pytest.raises(HttpListenError, match=r"http\.listen = '127\.0\.0\.1:\d+'") as info:
            await server.start()
    assert isinstance(info.value, DetectorError)
    assert "in use" in str(info.value)
    await server.stop()  # a failed start leaves nothing to stop


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),  # noqa: S104 - parsed, not bound
        (":9464", (None, 9464)),
        ("*:0", (None, 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", "host:", "host:http", "host:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(HttpListenError, match=r"http\.listen"):
        parse_listen(listen)
