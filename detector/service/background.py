"""What the service's helpers (HTTP server, loop-lag monitor, watchdog) share: ``async with``
runs ``start()`` and ``stop()``, and a background task is stopped by cancelling it."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class StartStop:
    """``async with x:`` is ``await x.start()`` ... ``await x.stop()``."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait until it has ended; an error it died of before the cancel is
    raised here. A cancellation of the caller itself still propagates."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.result()
