"""structlog set-up: JSON lines off a terminal, readable console output on one.

The standard library's logging (aiokafka's included) goes through the same processors, so
every line of the process has one format. In JSON, a library's record keeps the
snake_case event convention: ``{"event": "library_log", "logger": "aiokafka...",
"message": "<its text>", ...}``. Nothing happens at import: call ``configure_logging`` once,
at start.

``RateLimitedLog`` keeps per-stream events (a stream sending NaN, a refused new stream) from
flooding the log: one line per event and key per interval, with the count of the lines it
held back. ``LibraryRateLimit`` does the same for a library's repeated message (aiokafka
retrying a missing topic logs a line per retry, about a thousand a second).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import structlog

from detector.config import LogSettings

LIBRARY_EVENT = "library_log"


def _library_event(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """A foreign (stdlib) record's free text moves to ``message``; ``event`` stays snake_case."""
    if event_dict.get("_from_structlog") is False:
        event_dict["message"] = event_dict.get("event")
        event_dict["event"] = LIBRARY_EVENT
    return event_dict


def configure_logging(settings: LogSettings, stream: TextIO | None = None) -> None:
    stream = stream if stream is not None else sys.stderr
    as_json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    foreign: list[structlog.types.Processor] = [
        *shared,
        structlog.stdlib.ExtraAdder(allow=["suppressed"]),
    ]
    if as_json:
        foreign.append(_library_event)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.addFilter(LibraryRateLimit())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())


class _Logger(Protocol):
    def log(self, level: int, event: str, *args: Any, **kw: Any) -> Any: ...


@dataclass(slots=True)
class _KeyState:
    passed_at: float
    suppressed: int = 0


@dataclass(slots=True)
class _EventWindow:
    started: float
    passed: int = 0
    overflow: int = 0  # lines of keys held back because the window's budget was spent


class RateLimiter:
    """Lets a line of ``(event, key)`` pass at most once every ``every_s`` seconds.

    The next line that passes for a key carries ``suppressed=N``, the lines of that key held
    back since its previous one. Memory is bounded: at most ``max_keys`` keys are remembered
    (least recently seen forgotten first; a forgotten key's held-back count only stays in
    ``suppressed_total``). An explosion of distinct keys is bounded in the
    log as well: at most ``max_per_interval`` lines of one event pass per interval; the next
    line after that interval carries ``suppressed_other_keys=M``.
    """

    def __init__(
        self,
        every_s: float = 60.0,
        max_keys: int = 10_000,
        max_per_interval: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s <= 0 or max_keys < 1 or max_per_interval < 1:
            raise ValueError(
                f"every_s ({every_s}) must be > 0, max_keys ({max_keys}) and "
                f"max_per_interval ({max_per_interval}) >= 1"
            )
        self.every_s = every_s
        self.max_keys = max_keys
        self.max_per_interval = max_per_interval
        self._clock = clock
        self._keys: OrderedDict[tuple[str, str], _KeyState] = OrderedDict()
        self._windows: dict[str, _EventWindow] = {}  # few: event names are literals in code
        self.suppressed_total = 0

    def __len__(self) -> int:
        return len(self._keys)

    def allow(self, event: str, key: str) -> dict[str, int] | None:
        """None: hold this line back (counted). Else the fields the passing line carries."""
        now = self._clock()
        state = self._keys.get((event, key))
        if state is not None:
            self._keys.move_to_end((event, key))
            if now - state.passed_at < self.every_s:
                state.suppressed += 1
                self.suppressed_total += 1
                return None
        window = self._windows.get(event)
        if window is None or now - window.started >= self.every_s:
            overflow = window.overflow if window is not None else 0
            window = self._windows[event] = _EventWindow(now, overflow=overflow)
        if window.passed >= self.max_per_interval:
            window.overflow += 1
            self.suppressed_total += 1
            return None
        window.passed += 1
        extra: dict[str, int] = {}
        if state is not None and state.suppressed:
            extra["suppressed"] = state.suppressed
        if window.overflow and window.passed == 1:  # first line of a new window reports it
            extra["suppressed_other_keys"] = window.overflow
            window.overflow = 0
        if state is None:
            state = self._keys[(event, key)] = _KeyState(now)
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            state.passed_at, state.suppressed = now, 0
        return extra


class RateLimitedLog(RateLimiter):
    """Log per-stream events at most once per ``(event, key)`` every ``every_s`` seconds
    (RateLimiter's rules; the key goes out as field ``key_field``).

    >>> limited = RateLimitedLog(structlog.get_logger(), every_s=60.0)
    >>> limited.warning("point_dropped", key="web-1.cpu", reason="non_finite")  # doctest: +SKIP
    """

    def __init__(
        self,
        logger: _Logger,
        every_s: float = 60.0,
        max_keys: int = 10_000,
        max_per_interval: int = 100,
        key_field: str = "stream",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(every_s, max_keys, max_per_interval, clock)
        self.logger = logger
        self.key_field = key_field

    def log(self, level: int, event: str, key: str, **fields: Any) -> bool:
        """Log ``event`` with ``key`` as field ``key_field`` unless held back; True if logged."""
        extra = self.allow(event, key)
        if extra is None:
            return False
        self.logger.log(level, event, **{self.key_field: key}, **fields, **extra)
        return True

    def debug(self, event: str, key: str, **fields: Any) -> bool:
        return self.log(logging.DEBUG, event, key, **fields)

    def info(self, event: str, key: str, **fields: Any) -> bool:
        return self.log(logging.INFO, event, key, **fields)

    def warning(self, event: str, key: str, **fields: Any) -> bool:
        return self.log(logging.WARNING, event, key, **fields)

    def error(self, event: str, key: str, **fields: Any) -> bool:
        return self.log(logging.ERROR, event, key, **fields)


class LibraryRateLimit(logging.Filter):
    """Lets a library's (stdlib) record through at most once per logger and message template
    every ``every_s`` seconds; the next one that passes carries ``suppressed=N``. The
    project's own structlog records pass untouched (their rate limits are RateLimitedLog's)."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._limit = RateLimiter(every_s=every_s, max_per_interval=1000, clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # structlog's own event, wrapped for the formatter
            return True
        extra = self._limit.allow(LIBRARY_EVENT, f"{record.name}\0{record.msg}")
        if extra is None:
            return False
        if extra.get("suppressed"):
            record.suppressed = extra["suppressed"]
        return True
