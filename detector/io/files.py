"""Embedded-mode sources and sinks: files and the standard streams, one message per line.

A source hands out batches of lines (one line is one message, as one Kafka record would be)
and the position just after them, so that a checkpoint can resume exactly there. Blocking
reads run in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
import structlog

from detector.stream.pipeline import DeadLetter

log = structlog.get_logger(__name__)

_FOLLOW_POLL_S = 0.2


class Source(Protocol):
    name: str  # identifies the input in checkpoints, e.g. "file:/var/log/metrics.jsonl"
    seekable: bool

    async def read_batch(self, max_messages: int) -> list[bytes] | None:
        """Up to ``max_messages`` messages; None at the end of the input."""

    def position(self) -> int:
        """Where the next read starts (bytes from the start), for checkpoints."""

    def close(self) -> None: ...


class FileSource:
    """Lines of a file; with ``follow``, waits for more at the end, like ``tail -F``."""

    def __init__(self, path: str | Path, follow: bool = False, start: int = 0) -> None:
        self.path = Path(path)
        self.name = self.name_of(self.path)
        self.seekable = True
        self.follow = follow
        self._f: BinaryIO = self.path.open("rb")
        self._f.seek(start)
        self._pos = start
        self._inode = os.fstat(self._f.fileno()).st_ino

    @staticmethod
    def name_of(path: Path) -> str:
        return f"file:{path.resolve()}"

    def position(self) -> int:
        return self._pos

    async def read_batch(self, max_messages: int) -> list[bytes] | None:
        while True:
            lines = await asyncio.to_thread(self._read_lines, max_messages)
            if lines:
                return lines
            if not self.follow:
                return None
            await asyncio.sleep(_FOLLOW_POLL_S)
            await asyncio.to_thread(self._reopen_if_rotated)

    def _read_lines(self, max_messages: int) -> list[bytes]:
        lines: list[bytes] = []
        while len(lines) < max_messages:
            line = self._f.readline()
            if not line:
                break
            if not line.endswith(b"\n") and self.follow:
                self._f.seek(self._pos)  # a line still being written: read it whole later
                break
            self._pos += len(line)
            stripped = line.strip()
            if stripped:
                lines.append(stripped)
        return lines

    def _reopen_if_rotated(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # rotated away and not yet recreated
        if st.st_ino != self._inode or st.st_size < self._pos:
            log.info("input_file_reopened", path=str(self.path), reason="rotated or truncated")
            self._f.close()
            self._f = self.path.open("rb")
            self._inode = os.fstat(self._f.fileno()).st_ino
            self._pos = 0

    def close(self) -> None:
        self._f.close()


class StdinSource:
    """Lines of standard input, read by a thread so that a slow pipe never blocks the loop."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self.name = "stdin"
        self.seekable = False
        self._stream = stream if stream is not None else sys.stdin.buffer
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=65_536)
        self._loop = asyncio.get_running_loop()
        self._pos = 0
        self._done = False
        threading.Thread(target=self._pump, name="stdin-reader", daemon=True).start()

    def _pump(self) -> None:
        for line in self._stream:
            asyncio.run_coroutine_threadsafe(self._queue.put(line), self._loop).result()
        asyncio.run_coroutine_threadsafe(self._queue.put(None), self._loop).result()

    def position(self) -> int:
        return self._pos

    async def read_batch(self, max_messages: int) -> list[bytes] | None:
        if self._done:
            return None
        lines: list[bytes] = []
        item = await self._queue.get()  # wait for the first line, then take what is there
        while True:
            if item is None:
                self._done = True
                break
            self._pos += len(item)
            if item.strip():
                lines.append(item.strip())
            if len(lines) >= max_messages or self._queue.empty():
                break
            item = self._queue.get_nowait()
        return lines if lines or not self._done else None

    def close(self) -> None:
        pass


class LineSink:
    """JSON lines to standard output or to a file (appended; fsync'd on flush)."""

    def __init__(self, target: str) -> None:
        self.target = target
        if target == "stdout":
            self._f: BinaryIO = sys.stdout.buffer
            self._owned = False
        else:
            path = Path(target.removeprefix("file:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = path.open("ab")
            self._owned = True

    def write(self, docs: Sequence[dict[str, Any]]) -> None:
        if docs:
            self._f.write(b"".join(orjson.dumps(d) + b"\n" for d in docs))
            self._f.flush()

    def flush(self) -> None:
        """Make written documents durable (before a checkpoint moves past them)."""
        self._f.flush()
        if self._owned:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._f.close()


class DeadLetterSink:
    """Messages that could not be decoded, with the reasons: as log events or JSON lines."""

    def __init__(self, target: str, source: str) -> None:
        self.source = source
        self._lines = LineSink(target) if target.startswith("file:") else None

    def write(self, letters: Sequence[DeadLetter], position: int) -> None:
        for letter in letters:
            doc = _dead_letter_doc(letter, self.source, position)
            if self._lines is None:
                log.warning("record_dead_lettered", **doc)
            else:
                self._lines.write([doc])

    def flush(self) -> None:
        if self._lines is not None:
            self._lines.flush()

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()


def _dead_letter_doc(letter: DeadLetter, source: str, position: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"source": source, "batch_end": position, "reasons": letter.reasons}
    try:
        doc["payload"] = letter.payload.decode()
    except UnicodeDecodeError:
        doc["payload_base64"] = base64.b64encode(letter.payload).decode()
    return doc


def open_source(spec: str, follow: bool, start: int = 0) -> FileSource | StdinSource:
    if spec == "stdin":
        return StdinSource()
    return FileSource(spec.removeprefix("file:"), follow=follow, start=start)
