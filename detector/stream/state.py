"""Per-stream state of one model group and one partition, as struct-of-arrays tables.

Row ``slot_of[stream]`` of every array belongs to ``stream``; there is never a Python object
per stream, so the scoring kernel reads and writes whole batches of rows. What one row holds:

    h, c        (layers, H)     the LSTM's hidden and cell state
    x_mean      (D,)            running mean of the raw input (robust EWMA)
    x_var       (D,)            running variance of the raw input
    pred        (D,)            the prediction of the next input, in normalised units
    ring        (W, n_inputs)   the last W model inputs (normalised values, calendar features)
    err         (ERR_COLUMNS,)  error and interval statistics, columns named below
    err_ring    (E,)            dynamic threshold only: the last E smoothed errors (E = 0 otherwise)
    last_ts     ()              timestamp of the last accepted point, epoch seconds
    seen        ()              points accepted since the stream started (or was reset)
    hist        ()              bit k: the point k steps ago exceeded the threshold
    cooldown    ()              points left before the stream may alert again
    last_seen   ()              wall-clock time of the last point, for idle eviction (not saved)

The ring's write position is ``seen % W``, so it needs no column of its own.

Capacity grows by doubling (amortised O(1) per new stream, no copy per stream) up to
``max_streams``; beyond that new streams are refused and counted, so a cardinality explosion
upstream costs a counter, not the process. Freed rows are reused.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from detector.errors import StateFormatError

# Columns of ``err``.
ERR_SMOOTH = 0  # s_t: EWMA of the prediction error
ERR_MEAN = 1  # mean of the normal-error distribution (zscore: of s_t; likelihood: of e_t)
ERR_VAR = 2  # its variance
ERR_COUNT = 3  # updates of ERR_MEAN/ERR_VAR so far (early EWMA weights are 1/count)
ERR_SHORT = 4  # likelihood: short-term mean of e_t
ERR_EPS = 5  # dynamic: the current threshold on s_t (0 until first computed)
DT_MEAN = 6  # the stream's usual interval between points, seconds (EWMA)
ERR_COLUMNS = 7

_INITIAL_CAPACITY = 1024


class TableLayout(NamedTuple):
    """Sizes of every row; two tables with the same layout can exchange state."""

    layers: int
    hidden: int
    n_values: int  # D: values per point (1 unless the group uses the vector layout)
    n_inputs: int  # D plus calendar features
    buffer_len: int  # W
    error_window: int  # E (dynamic threshold), 0 otherwise
    dtype: str  # "float32" or "float64"


# (name, row shape given a layout, dtype given a layout); the serialised field order.
def _row_fields(layout: TableLayout) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    f = np.dtype(layout.dtype)
    return [
        ("h", (layout.layers, layout.hidden), f),
        ("c", (layout.layers, layout.hidden), f),
        ("x_mean", (layout.n_values,), f),
        ("x_var", (layout.n_values,), f),
        ("pred", (layout.n_values,), f),
        ("ring", (layout.buffer_len, layout.n_inputs), f),
        ("err", (ERR_COLUMNS,), f),
        ("err_ring", (layout.error_window,), f),
        ("last_ts", (), np.dtype(np.float64)),
        ("seen", (), np.dtype(np.int64)),
        ("hist", (), np.dtype(np.uint32)),
        ("cooldown", (), np.dtype(np.int32)),
    ]


# Versioned header of serialised state: magic, format version, the layout.
_MAGIC = b"DST"
_VERSION = 1
_HEADER = struct.Struct("<3sBHHHHIIB")  # magic, version, L, H, D, n_inputs, W, E, dtype code
_DTYPE_CODES = {"float32": 4, "float64": 8}
_COUNT = struct.Struct("<I")
_KEY_LEN = struct.Struct("<H")


class StreamStateTable:
    """State of every stream of one model group in one partition."""

    __slots__ = (
        "_free",
        "_keys",
        "c",
        "cooldown",
        "err",
        "err_ring",
        "h",
        "hist",
        "last_seen",
        "last_ts",
        "layout",
        "max_streams",
        "pred",
        "refused",
        "ring",
        "seen",
        "slot_of",
        "x_mean",
        "x_var",
    )

    h: NDArray[np.floating]
    c: NDArray[np.floating]
    x_mean: NDArray[np.floating]
    x_var: NDArray[np.floating]
    pred: NDArray[np.floating]
    ring: NDArray[np.floating]
    err: NDArray[np.floating]
    err_ring: NDArray[np.floating]
    last_ts: NDArray[np.float64]
    seen: NDArray[np.int64]
    hist: NDArray[np.uint32]
    cooldown: NDArray[np.int32]
    last_seen: NDArray[np.float64]

    def __init__(
        self, layout: TableLayout, max_streams: int, initial_capacity: int = _INITIAL_CAPACITY
    ) -> None:
        if layout.dtype not in _DTYPE_CODES:
            raise ValueError(f"dtype is {layout.dtype!r}; expected 'float32' or 'float64'")
        if max_streams < 1:
            raise ValueError(f"max_streams is {max_streams}; expected at least 1")
        self.layout = layout
        self.max_streams = max_streams
        self.slot_of: dict[str, int] = {}
        self._keys: list[str | None] = []  # slot -> stream, None for a free slot
        self._free: list[int] = []
        self.refused = 0  # new streams turned away because the table was full
        capacity = max(1, min(initial_capacity, max_streams))
        for name, row, dtype in _row_fields(layout):
            setattr(self, name, np.zeros((capacity, *row), dtype))
        self.last_seen = np.zeros(capacity, np.float64)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, stream: object) -> bool:
        return stream in self.slot_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.slot_of)

    def __repr__(self) -> str:
        return (
            f"StreamStateTable(streams={len(self)}, capacity={self.capacity}, "
            f"max_streams={self.max_streams}, refused={self.refused})"
        )

    @property
    def capacity(self) -> int:
        return int(self.h.shape[0])

    # ------------------------------------------------------------------ slots

    def slots(self, streams: Sequence[str], now: float) -> NDArray[np.int64]:
        """The row of each stream, creating rows for new streams; -1 where refused.

        A refused stream (the table is at ``max_streams``) is counted in ``refused`` for
        each of its points; its points never reach the kernel.
        """
        out = np.empty(len(streams), np.int64)
        slot_of = self.slot_of
        for i, stream in enumerate(streams):
            slot = slot_of.get(stream)
            if slot is None:
                slot = self._allocate(stream)
            out[i] = slot
        self.last_seen[out[out >= 0]] = now
        return out

    def _allocate(self, stream: str) -> int:
        if len(self.slot_of) >= self.max_streams:
            self.refused += 1
            return -1
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._keys)
            if slot >= self.capacity:
                self._grow(slot + 1)
            self._keys.append(None)
        self._clear(slot)
        self._keys[slot] = stream
        self.slot_of[stream] = slot
        return slot

    def _grow(self, needed: int) -> None:
        capacity = min(max(needed, 2 * self.capacity), self.max_streams)
        for name in (*(f[0] for f in _row_fields(self.layout)), "last_seen"):
            old = getattr(self, name)
            # zeros, not empty: the untouched tail stays unbacked by memory until used.
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def _clear(self, slot: int) -> None:
        for name, _row, _dtype in _row_fields(self.layout):
            getattr(self, name)[slot] = 0

    def remove(self, stream: str) -> None:
        slot = self.slot_of.pop(stream)
        self._keys[slot] = None
        self._free.append(slot)

    def evict_idle(self, now: float, ttl_s: float) -> list[str]:
        """Forget streams without a point for more than ``ttl_s`` seconds; returns them."""
        used = len(self._keys)
        idle = np.flatnonzero(self.last_seen[:used] < now - ttl_s)
        evicted = []
        for slot in idle.tolist():
            stream = self._keys[slot]
            if stream is not None:
                self.remove(stream)
                evicted.append(stream)
        return evicted

    # ------------------------------------------------------------------ serialisation

    def _header(self) -> bytes:
        lay = self.layout
        return _HEADER.pack(
            _MAGIC,
            _VERSION,
            lay.layers,
            lay.hidden,
            lay.n_values,
            lay.n_inputs,
            lay.buffer_len,
            lay.error_window,
            _DTYPE_CODES[lay.dtype],
        )

    def _row_bytes(self, slot: int) -> bytes:
        return b"".join(
            getattr(self, name)[slot].tobytes() for name, _r, _d in _row_fields(self.layout)
        )

    def _load_row(self, slot: int, data: memoryview) -> None:
        offset = 0
        for name, row, dtype in _row_fields(self.layout):
            size = int(np.prod(row, dtype=np.int64)) * dtype.itemsize
            values = np.frombuffer(data[offset : offset + size], dtype=dtype)
            getattr(self, name)[slot] = values.reshape(row)
            offset += size

    def row_size(self) -> int:
        """Bytes of one serialised row (without header or key)."""
        return sum(
            int(np.prod(row, dtype=np.int64)) * dtype.itemsize
            for _n, row, dtype in _row_fields(self.layout)
        )

    def stream_bytes(self, stream: str) -> bytes:
        """One stream's state as versioned bytes (a changelog record's value)."""
        return self._header() + self._row_bytes(self.slot_of[stream])

    def restore_stream(self, stream: str, data: bytes, now: float) -> None:
        """Load bytes from :meth:`stream_bytes` into ``stream``'s row (created if new).

        Raises StateFormatError if the bytes are damaged or were written for another layout.
        """
        view = self._check_header(memoryview(data), what=f"state of stream {stream!r}")
        if len(view) != self.row_size():
            raise StateFormatError(
                f"state of stream {stream!r} has {len(view)} bytes after its header; "
                f"expected {self.row_size()}"
            )
        slot = self.slots([stream], now)[0]
        if slot < 0:
            raise StateFormatError(f"table is full ({self.max_streams} streams); {stream!r}")
        self._load_row(int(slot), view)

    def to_bytes(self) -> bytes:
        """Every stream's state: header, count, then (key length, key, row) per stream."""
        parts = [self._header(), _COUNT.pack(len(self.slot_of))]
        for stream, slot in self.slot_of.items():
            key = stream.encode()
            parts += [_KEY_LEN.pack(len(key)), key, self._row_bytes(slot)]
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls, data: bytes, max_streams: int, now: float, layout: TableLayout | None = None
    ) -> StreamStateTable:
        """Rebuild a table from :meth:`to_bytes`; ``layout``, when given, must match."""
        view = memoryview(data)
        if len(view) < _HEADER.size:
            raise StateFormatError(f"table state is {len(view)} bytes, shorter than its header")
        found = _layout_from_header(view[: _HEADER.size], "table state")
        if layout is not None and layout != found:
            raise StateFormatError(f"table state has layout {found}; expected {layout}")
        table = cls(found, max_streams)
        view = view[_HEADER.size :]
        if len(view) < _COUNT.size:
            raise StateFormatError("table state is truncated before its stream count")
        (count,) = _COUNT.unpack(view[: _COUNT.size])
        offset = _COUNT.size
        row_size = table.row_size()
        for i in range(count):
            if len(view) < offset + _KEY_LEN.size:
                raise StateFormatError(f"table state is truncated at stream {i} of {count}")
            (key_len,) = _KEY_LEN.unpack(view[offset : offset + _KEY_LEN.size])
            offset += _KEY_LEN.size
            end = offset + key_len + row_size
            if len(view) < end:
                raise StateFormatError(f"table state is truncated at stream {i} of {count}")
            try:
                stream = bytes(view[offset : offset + key_len]).decode()
            except UnicodeDecodeError:
                raise StateFormatError(f"table state: stream {i} has a corrupt key") from None
            slot = table.slots([stream], now)[0]
            if slot < 0:
                raise StateFormatError(f"table state holds more than {max_streams} streams")
            table._load_row(int(slot), view[offset + key_len : end])
            offset = end
        if offset != len(view):
            raise StateFormatError(f"table state has {len(view) - offset} stray trailing bytes")
        return table

    def _check_header(self, view: memoryview, what: str) -> memoryview:
        if len(view) < _HEADER.size:
            raise StateFormatError(f"{what} is {len(view)} bytes, shorter than its header")
        found = _layout_from_header(view[: _HEADER.size], what)
        if found != self.layout:
            raise StateFormatError(f"{what} has layout {found}; this table has {self.layout}")
        return view[_HEADER.size :]


def _layout_from_header(header: memoryview, what: str) -> TableLayout:
    magic, version, L, H, D, n_in, W, E, code = _HEADER.unpack(header)
    if magic != _MAGIC:
        raise StateFormatError(f"{what} does not start with {_MAGIC!r}; not detector state")
    if version != _VERSION:
        raise StateFormatError(f"{what} has format version {version}; this build reads {_VERSION}")
    dtypes = {v: k for k, v in _DTYPE_CODES.items()}
    if code not in dtypes:
        raise StateFormatError(f"{what} has unknown dtype code {code}")
    return TableLayout(L, H, D, n_in, W, E, dtypes[code])
