"""/metrics, /healthz and /readyz on ``http.listen``, served by aiohttp on the daemon's loop.

    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it)
    GET /healthz   200 {"status": "ok", ...} while the runner makes progress, else 503
    GET /readyz    200 once partitions are assigned and restored, else 503 with the reason

Served on the same event loop as the pipeline, so an answer at all also says the loop is
alive. ``start``/``stop`` are idempotent; ``async with HttpServer(...)`` does both.
"""

from __future__ import annotations

from typing import ClassVar, Final

from aiohttp import web

from detector.errors import DetectorError
from detector.service.background import StartStop
from detector.service.health import Health, Verdict
from detector.service.metrics import Metrics


class HttpListenError(DetectorError):
    """The HTTP server cannot listen on ``http.listen``. Operator action: pick a free port
    (or an address of this host), stop whatever holds it, or set http.listen = "" to turn
    the endpoints off."""

    retriable: ClassVar[bool] = False


_SHUTDOWN_TIMEOUT_S: Final = 2.0  # a scrape in flight at shutdown gets this long


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``"host:port"`` -> (host, port). An empty host or "*" gives None: every interface;
    an IPv6 host may be bracketed ("[::1]:9464")."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise HttpListenError(f'http.listen is {listen!r}; expected "host:port"')
    host = host.removeprefix("[").removesuffix("]")
    return (host if host not in ("", "*") else None), int(port)


class HttpServer(StartStop):
    def __init__(self, listen: str, metrics: Metrics, health: Health) -> None:
        self.listen = listen
        self.host, self._port = parse_listen(listen)
        self.metrics = metrics
        self.health = health
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``http.listen`` asked for port 0)."""
        if self._runner is None:
            raise RuntimeError("the HTTP server is not started")
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("the HTTP server has no listening socket")

    @property
    def url(self) -> str:
        """Where a client on this host reaches the server (a wildcard host -> loopback)."""
        host = self.host
        if host is None or host == "0.0.0.0":  # noqa: S104 - a comparison, not a bind
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        # access_log=None: a scrape every 15 s per pod is not worth a log line.
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise HttpListenError(
                f"http.listen = {self.listen!r}: cannot listen: {exc.strerror or exc}"
            ) from exc
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        return _verdict(self.health.liveness())

    async def _readyz(self, request: web.Request) -> web.Response:
        return _verdict(self.health.readiness())


def _verdict(verdict: Verdict) -> web.Response:
    return web.json_response(verdict.as_dict(), status=200 if verdict.ok else 503)
