r"""Every wire format is decoded here and nowhere else.

``decode(payload, fmt)`` turns one message (one Kafka record value, say) into
``Decoded(samples, errors)`` and never raises, whatever the bytes: each malformed part of a
message (a line, or one metric of a batch) becomes one reason in ``errors`` and the
well-formed parts are still returned. A message with no usable part at all (not JSON, not
UTF-8) gives a single reason. Reasons name the line ("line 3: missing field set") when the
message has several lines (always for Influx). ``decode_native`` decodes exactly one native
record and raises ``RecordDecodeError`` instead, for training files that stop at a bad line.

Samples and stream ids
----------------------
A ``Sample`` is one named series at one instant: ``name``, canonical ``tags``, ``ts`` (epoch
seconds) and ``values`` (field -> float; a format with one unnamed value uses the field
``""``). Every field is a univariate stream and all fields of a sample form one vector stream::

    stream_id = name + "." + field + tags      (just name + tags when field == "")
    vector_id = name + tags

    cpu,host=a usage_idle=99.5,usage_user=0.3  ->  cpu.usage_idle{host=a}, cpu.usage_user{host=a};
                                                   vector cpu{host=a}
    {"stream": "web-1.cpu", "value": 0.7, ...}       ->  web-1.cpu
    {"stream": "web-1", "values": {"cpu": 0.7}, ...}  ->  web-1.cpu  (the same stream, on purpose)

Canonical tags are ``""`` or ``"{k1=v1,k2=v2}"`` with the keys sorted by code point and the
values as given (no quoting). So that an id maps back to one (name.field, tags) pair, a
backslash escapes ``\ { } , =`` in tag keys and values and ``\ { }`` in names and field
names (``stream_id("a{b}", "", "")`` is ``a\{b\}``); ordinary names never need it. A tag
with an empty value is no tag, as in Prometheus, where an empty label equals an absent one.

Timestamps
----------
Numbers in the JSON formats are epoch seconds, milliseconds, microseconds or nanoseconds by
magnitude: ``|t| < 1e11`` seconds, ``< 1e14`` milliseconds, ``< 1e17`` microseconds,
otherwise nanoseconds. Today is about 1.7e9 s = 1.7e12 ms = 1.7e15 µs = 1.7e18 ns, so a unit
is misread only for instants before 1973-03-03 written in a finer unit, or after the year
5138 in a coarser one. Strings are RFC 3339 (``datetime.fromisoformat``, which also reads a
space for ``T`` and other ISO 8601 forms); a string without an offset is UTC. Every
timestamp must fall in the years 1-9999.

Batch fast paths
----------------
The pipeline decodes a native batch in up to three steps, each leaving what it does not
take to the next, so the answer is always ``decode``'s: ``scan_native`` reads the simplest
plain points (``stream``, ``ts``, ``value``, ASCII, no escapes) straight from the bytes in
jitted code; ``native_points`` reads the other plain points (tags, other members, escapes)
with orjson; ``decode`` reads everything else, one message at a time.

Formats
-------
``native``: one JSON object per line (blank lines ignored)::

    {"stream": "web-1.cpu", "ts": 1732000000, "value": 0.73}
    {"stream": "web-1", "ts": "2024-11-19T07:06:40Z", "values": {"cpu": 0.73, "mem": 0.41},
     "tags": {"dc": "fra"}}

``value`` gives the field ``""``; ``values`` names the fields (non-empty names); ``tags``
is optional (string values).

``influx``: InfluxDB line protocol as Telegraf's influx serializer writes it, one point per
line::

    measurement[,tag_key=tag_value...] field_key=field_value[,...] [timestamp]

Measurement, tags and fields are separated by spaces; commas separate tags and fields.
Escapes: ``\,`` and ``\ `` in the measurement; ``\,`` ``\=`` and ``\ `` in tag keys, tag
values and field keys. Any other backslash is literal, but a backslash before a delimiter
always escapes it (so these tokens cannot end in a backslash; Telegraf trims such
backslashes). Field values are floats (``1``, ``-1.5``, ``.5``, ``1e-3``), integers
(``5i``), unsigned integers (``5u``), booleans (``t``, ``true``, ``False``, ...) or
double-quoted strings in which ``\"`` and ``\\`` are escapes and newlines may appear.
Boolean and string fields are not metrics and are skipped; a line with no numeric field
left is an error. The timestamp is integer nanoseconds; without one the sample gets
``now``. Lines starting with ``#`` are comments; blank lines, leading and trailing
whitespace and CRLF line ends are allowed. NaN and infinity cannot be written.

``telegraf_json``: Telegraf's JSON serializer, a single metric, the batch form
``{"metrics": [...]}``, or one of either per line::

    {"fields": {"usage_idle": 99.5}, "name": "cpu", "tags": {"host": "a"}, "timestamp": 1458229140}

Fields follow the Influx rules (numbers kept, booleans and strings skipped); the timestamp
unit (``json_timestamp_units``) is told by magnitude, or it is an RFC 3339 string
(``json_timestamp_format``).

``prometheus_json``: what prometheus-kafka-adapter writes for each remote-write sample, one
object per line::

    {"timestamp": "1970-01-01T00:00:00Z", "value": "9876543210", "name": "up",
     "labels": {"__name__": "up", "label1": "value1"}}

The value is a string (``"NaN"``, ``"+Inf"`` and ``"-Inf"`` included: non-finite values pass
through, the pipeline counts and drops them); the name is ``name`` or else
``labels.__name__``; the tags are the other labels.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

import numpy as np
import orjson
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros
from numpy.typing import NDArray

from detector.errors import RecordDecodeError

Format = Literal["native", "influx", "telegraf_json", "prometheus_json"]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)


@dataclass(frozen=True, slots=True)
class Sample:
    """One decoded measurement: a named series at one instant with one or more fields."""

    name: str  # native "stream"; Influx/Telegraf measurement; Prometheus metric name
    tags: str  # canonical: "" or "{k1=v1,k2=v2}", keys sorted (see the module docstring)
    ts: float  # epoch seconds
    values: dict[str, float]  # field -> value; {"": v} for formats with one unnamed value


@dataclass(slots=True)
class Decoded:
    """What one message held: its samples, and one reason per part that was malformed."""

    samples: list[Sample]
    errors: list[str]


def decode(payload: bytes, fmt: Format, *, now: float | None = None) -> Decoded:
    """Decode one message; never raises for any payload (see the module docstring).

    ``now`` (epoch seconds, default ``time.time()``) stamps Influx lines without a timestamp.
    A ``fmt`` outside FORMATS is a programming error and raises ValueError.
    """
    if fmt == "influx":
        return _decode_influx(payload, time.time() if now is None else now)
    if fmt == "native":
        return _decode_json(payload, _native_record)
    if fmt == "telegraf_json":
        return _decode_json(payload, _telegraf_record, batch_key="metrics")
    if fmt == "prometheus_json":
        return _decode_json(payload, _prometheus_record)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def decode_native(payload: bytes | str) -> Sample:
    """Exactly one native JSON record; RecordDecodeError (with the reason) on anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RecordDecodeError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    return _native_record(doc)


@dataclass(slots=True)
class PlainPoints:
    """``native_points``: the plain points of a batch as columns, in message order, and the
    messages that are not plain points."""

    names: list[str]  # the "stream" member
    tags: list[str]  # canonical tags, "" for none
    ts: list[float]  # epoch seconds
    values: list[float]  # the "value" member: the field ""
    index: list[int]  # each point's message, ascending
    other: list[int]  # every other message, ascending: decode() them one by one


def native_points(payloads: Sequence[bytes], indices: Sequence[int] | None = None) -> PlainPoints:
    """The batch fast path of the native format, for the messages that are *plain points*.

    A plain point is one native record on one line (an optional trailing newline): an
    object with a non-empty ``stream``, a numeric ``value`` (no ``values``), a numeric ``ts``
    in seconds or milliseconds after 1970, and no ``tags`` or valid tags. For those,
    ``decode(payload, "native")`` would give exactly one sample ``(name, tags, ts,
    {"": value})`` and no error; this gives the same as columns, without a ``Decoded``,
    ``Sample`` or dict per message and without the per-record checks in between. Anything
    else (several lines, other timestamps, ``values``, malformed) is left to ``decode`` by
    its index in ``other``, so this never decides what an error is. ``indices``: only the
    messages at these (ascending) places, by default all.
    """
    out = PlainPoints([], [], [], [], [], [])
    names, tags, ts, values, index, other = (
        out.names,
        out.tags,
        out.ts,
        out.values,
        out.index,
        out.other,
    )
    loads, malformed = orjson.loads, orjson.JSONDecodeError
    for i in range(len(payloads)) if indices is None else indices:
        payload = payloads[i]
        # A newline inside makes several lines, which decode() reads one by one; any other
        # type (memoryview, bytearray) takes the general path too.
        if type(payload) is not bytes or (
            b"\n" in payload and payload.find(b"\n", 0, len(payload) - 1) >= 0
        ):
            other.append(i)
            continue
        try:
            doc = loads(payload)
        except malformed:
            other.append(i)
            continue
        if type(doc) is not dict:
            other.append(i)
            continue
        # Any: the type() tests below narrow these for the reader, not for mypy.
        name: Any = doc.get("stream")
        t: Any = doc.get("ts")
        value: Any = doc.get("value")
        # type() is, not isinstance: bool is an int subclass and must be refused here.
        t_type, v_type = type(t), type(value)
        if (
            type(name) is not str
            or not name
            or (v_type is not float and v_type is not int)
            or (t_type is not int and t_type is not float)
        ):
            other.append(i)
            continue
        # Three members: exactly these three, so no "values" and no "tags" to look at.
        short = len(doc) == 3
        if not short and "values" in doc:
            other.append(i)
            continue
        # parse_timestamp's rules for the two usual units (NaN fails both comparisons).
        if _MIN_SECONDS <= t < _SECONDS_BELOW:
            seconds = float(t)
        elif _SECONDS_BELOW <= t < _MILLIS_BELOW:
            seconds = t / 1_000
        else:
            other.append(i)
            continue
        raw_tags = None if short else doc.get("tags")
        if raw_tags is None:
            tags.append("")
        else:
            try:
                tags.append(_json_tags(raw_tags, "tags"))
            except RecordDecodeError:
                other.append(i)
                continue
        names.append(name)
        ts.append(seconds)
        values.append(float(value))
        index.append(i)
    return out


@dataclass(frozen=True, slots=True)
class ScannedPoints:
    """``scan_native``: the simplest plain points of a batch, read from the bytes.

    ``ids`` holds the points' stream ids (their ``stream`` members, which need no escaping)
    back to back, ``id_ends[k]`` where point k's id ends; ``index`` is each point's
    message, ascending; ``other`` every other message, ascending."""

    ids: NDArray[np.uint8]
    id_ends: NDArray[np.int64]
    ts: NDArray[np.float64]  # epoch seconds
    values: NDArray[np.float64]
    index: NDArray[np.int64]
    other: list[int]


def scan_native(payloads: Sequence[bytes], max_id_bytes: int) -> ScannedPoints:
    """The plain points of ``native_points`` whose record is of the simplest kind, without
    a Python object per message: an object of exactly the members ``stream``, ``ts`` and
    ``value`` (any order, JSON whitespace between tokens, a newline only at the end), all
    ASCII, the stream a string without escapes, braces or control characters and at most
    ``max_id_bytes`` long, ``ts`` and ``value`` JSON numbers of at most 40 digits and
    decimal magnitude 300 (read as a correct parser reads them: Clinger's fast path or
    Eisel-Lemire in the scan, ``float`` for the few it cannot decide; see ``_number``), and
    ``ts`` in seconds or milliseconds as ``native_points``
    takes it. For such a record ``native_points`` gives the stream id ``stream``, no tags,
    and exactly these ts and value. Anything else is left in ``other``, for
    ``native_points`` and ``decode``: this never decides what an error is.
    """
    n = len(payloads)
    try:
        buf = np.frombuffer(b"".join(payloads), np.uint8)
    except TypeError:  # not all bytes-like: native_points and decode sort them out
        buf = np.empty(0, np.uint8)
        payloads = [b""] * n
    ends = np.cumsum(np.fromiter(map(len, payloads), np.int64, n))
    ids = np.empty(buf.size, np.uint8)
    id_ends = np.empty(n, np.int64)
    ts = np.empty(n, np.float64)
    values = np.empty(n, np.float64)
    index = np.empty(n, np.int64)
    other = np.empty(n, np.int64)
    slow_at = np.empty(2 * n, np.int64)
    slow_spans = np.empty((2 * n, 2), np.int64)
    taken, left, n_slow = _scan_native(
        buf, ends, max_id_bytes, ids, id_ends, ts, values, index, other, slow_at, slow_spans
    )
    out = ScannedPoints(
        ids[: id_ends[taken - 1] if taken else 0],
        id_ends[:taken],
        ts[:taken],
        values[:taken],
        index[:taken],
        other[:left].tolist(),
    )
    if n_slow:
        out = _parse_slow_numbers(out, buf.tobytes(), slow_at[:n_slow], slow_spans[:n_slow])
    return out


def _parse_slow_numbers(
    scanned: ScannedPoints, text: bytes, at: NDArray[np.int64], spans: NDArray[np.int64]
) -> ScannedPoints:
    """The numbers the scan could not read exactly, by float() (correctly rounded, as any
    JSON parser reads them); points whose ts is then outside native_points' units are
    not plain after all."""
    numbers = np.array([float(text[a:b]) for a, b in spans.tolist()], np.float64)
    point, is_value = at >> 1, (at & 1).astype(np.bool_)
    scanned.values[point[is_value]] = numbers[is_value]
    t, with_ts = numbers[~is_value], point[~is_value]
    scanned.ts[with_ts] = np.where(t < _SECONDS_BELOW, t, t / 1_000)
    bad = with_ts[~((t >= _MIN_SECONDS) & (t < _MILLIS_BELOW))]
    if not bad.size:
        return scanned
    keep = np.ones(scanned.index.size, np.bool_)
    keep[bad] = False
    lengths = np.diff(scanned.id_ends, prepend=0)
    return ScannedPoints(
        scanned.ids[np.repeat(keep, lengths)],
        np.cumsum(lengths[keep]),
        scanned.ts[keep],
        scanned.values[keep],
        scanned.index[keep],
        sorted([*scanned.other, *scanned.index[bad].tolist()]),
    )


# Exact powers of ten: 10**k for k <= 22 is a float64 without rounding (5**22 < 2**53).
_POW10 = np.array([10.0**k for k in range(23)], np.float64)
_EXACT_DIGITS = 15  # at most 15 significant digits: the integer they form is exact (< 2**53)
_INT_DIGITS = 18  # a longer integer may not fit 64 bits, which JSON parsers refuse
_FLOAT_DIGITS = 40  # digits, and decimal magnitudes, past which the scan leaves a number
_FLOAT_MAGNITUDE = 300  # (so that no number it takes overflows or underflows)
_NOT_PLAIN = -1  # what the scanning helpers return for anything the fast path leaves
_POW10_MIN, _POW10_MAX = -348, 347  # decimal exponents _eisel_lemire covers


def _mantissas_of_powers_of_ten() -> NDArray[np.uint64]:
    """Row q - _POW10_MIN: the high and low 64 bits of 10**q * 2**(127 - floor(q log2 10)),
    rounded down: 10**q's 128-bit mantissa, top bit set."""
    rows = np.empty((_POW10_MAX - _POW10_MIN + 1, 2), np.uint64)
    for q in range(_POW10_MIN, _POW10_MAX + 1):
        shift = 127 - ((217706 * q) >> 16)  # the exponent formula _eisel_lemire uses
        if q >= 0:
            m = 10**q << shift if shift >= 0 else 10**q >> -shift
        else:
            m = (1 << shift) // 10**-q
        rows[q - _POW10_MIN] = (m >> 64, m & (2**64 - 1))
    return rows


_POW10_MANTISSAS = _mantissas_of_powers_of_ten()
_U32 = np.uint64(0xFFFFFFFF)
_LOW9 = np.uint64(0x1FF)
_FRACTION_BITS = np.uint64((1 << 52) - 1)
_SIGN_BIT = np.uint64(1 << 63)


@njit(cache=True, nogil=True, error_model="numpy")
def _mul_64x64(a, b):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """The 128-bit product of two uint64, as (high, low)."""
    a_lo, a_hi, b_lo, b_hi = a & _U32, a >> np.uint64(32), b & _U32, b >> np.uint64(32)
    p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (p0 >> np.uint64(32)) + (p1 & _U32) + (p2 & _U32)
    high = p3 + (p1 >> np.uint64(32)) + (p2 >> np.uint64(32)) + (mid >> np.uint64(32))
    return high, (mid << np.uint64(32)) | (p0 & _U32)


@njit(cache=True, nogil=True, error_model="numpy")
def _eisel_lemire(digits, exp10, negative, bits):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """digits * 10**exp10 correctly rounded, by the Eisel-Lemire algorithm (Lemire, "Number
    parsing at a gigabyte per second", 2021; as Go's strconv does it): into bits[0] as the
    float64's bits, returning True; False (bits untouched) in the rare cases it cannot
    decide, and for subnormal or infinite results. digits > 0, below 2**63."""
    if exp10 < _POW10_MIN or exp10 > _POW10_MAX:
        return False
    man = np.uint64(digits)
    clz = leading_zeros(man)  # type: ignore[call-arg,var-annotated]  # a numba intrinsic
    man = man << np.uint64(clz)
    ret_exp2 = np.uint64(((217706 * exp10) >> 16) + 64 + 1023 - clz)
    row = exp10 - _POW10_MIN
    x_hi, x_lo = _mul_64x64(man, _POW10_MANTISSAS[row, 0])
    if x_hi & _LOW9 == _LOW9 and x_lo + man < man:  # the product's error may reach the bits kept
        y_hi, y_lo = _mul_64x64(man, _POW10_MANTISSAS[row, 1])
        merged_hi, merged_lo = x_hi, x_lo + y_hi
        if merged_lo < x_lo:
            merged_hi += np.uint64(1)
        if (
            merged_hi & _LOW9 == _LOW9
            and merged_lo + np.uint64(1) == np.uint64(0)
            and y_lo + man < man
        ):
            return False
        x_hi, x_lo = merged_hi, merged_lo
    msb = x_hi >> np.uint64(63)
    mantissa = x_hi >> (msb + np.uint64(9))
    ret_exp2 -= np.uint64(1) ^ msb
    if (
        x_lo == np.uint64(0)
        and x_hi & _LOW9 == np.uint64(0)
        and mantissa & np.uint64(3) == np.uint64(1)
    ):
        return False  # exactly half-way: ties-to-even needs more than this
    mantissa += mantissa & np.uint64(1)
    mantissa >>= np.uint64(1)
    if mantissa >> np.uint64(53) > np.uint64(0):
        mantissa >>= np.uint64(1)
        ret_exp2 += np.uint64(1)
    if ret_exp2 - np.uint64(1) >= np.uint64(0x7FF - 1):  # subnormal (0 wraps) or infinite
        return False
    result = (ret_exp2 << np.uint64(52)) | (mantissa & _FRACTION_BITS)
    bits[0] = result | _SIGN_BIT if negative else result
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _skip_space(buf, i, end):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    while i < end and (buf[i] == 32 or buf[i] == 9 or buf[i] == 13 or buf[i] == 10):
        i += 1
    return i


@njit(cache=True, nogil=True, error_model="numpy")
def _string_end(buf, i, end):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """buf[i] opens a string: where its closing quote is, or _NOT_PLAIN (no quote, an
    escape or a control character: the general path's to read or refuse)."""
    if i >= end or buf[i] != 34:
        return _NOT_PLAIN
    i += 1
    while i < end:
        c = buf[i]
        if c == 34:
            return i
        if c == 92 or c < 32:
            return _NOT_PLAIN
        i += 1
    return _NOT_PLAIN


@njit(cache=True, nogil=True, error_model="numpy")
def _is_key(buf, start, stop, key):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    if stop - start != len(key):
        return False
    for k in range(len(key)):  # noqa: SIM110 (all() of a generator does not compile in numba)
        if buf[start + k] != key[k]:
            return False
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _number(buf, i, end, bits, as_float):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """A JSON number at buf[i]: (where it ends, its value, exact), or (_NOT_PLAIN, 0.0,
    False) when it is not one or past the scan's limits. exact: the value is what a correct
    parser returns: an integer of at most 15 digits; at most 15 significant digits and a
    decimal exponent within +-22, which is digits * 10**e or digits / 10**-e, one correctly
    rounded operation on exact operands (Clinger's fast path); else, up to 18 digits, what
    _eisel_lemire decides (through bits, whose float64 view is as_float). Otherwise the
    caller parses the text (scan_native)."""
    negative = i < end and buf[i] == 45
    if negative:
        i += 1
    if i >= end or not 48 <= buf[i] <= 57:
        return _NOT_PLAIN, 0.0, False
    digits = 0  # the first significant digits, as an integer (no more than fit 64 bits)
    significant = 0
    exponent = 0  # of the last digit read into `digits`, then of the number
    if buf[i] == 48:  # a leading zero stands alone ("01" is not JSON)
        i += 1
        if i < end and 48 <= buf[i] <= 57:
            return _NOT_PLAIN, 0.0, False
    else:
        while i < end and 48 <= buf[i] <= 57:
            significant += 1
            if significant <= _INT_DIGITS:
                digits = digits * 10 + (buf[i] - 48)
            else:
                exponent += 1
            i += 1
    is_int = True
    if i < end and buf[i] == 46:
        is_int = False
        i += 1
        if i >= end or not 48 <= buf[i] <= 57:
            return _NOT_PLAIN, 0.0, False
        while i < end and 48 <= buf[i] <= 57:
            if significant or buf[i] != 48:
                significant += 1
            if significant <= _INT_DIGITS:
                digits = digits * 10 + (buf[i] - 48)
                exponent -= 1
            i += 1
    if i < end and (buf[i] == 101 or buf[i] == 69):
        is_int = False
        i += 1
        sign = 1
        if i < end and (buf[i] == 43 or buf[i] == 45):
            sign = -1 if buf[i] == 45 else 1
            i += 1
        if i >= end or not 48 <= buf[i] <= 57:
            return _NOT_PLAIN, 0.0, False
        written = 0
        while i < end and 48 <= buf[i] <= 57:
            written = written * 10 + (buf[i] - 48)
            i += 1
            if written > _FLOAT_MAGNITUDE:
                return _NOT_PLAIN, 0.0, False
        exponent += sign * written
    if is_int:
        if significant > _INT_DIGITS:
            return _NOT_PLAIN, 0.0, False
        value = float(digits)
        if significant > _EXACT_DIGITS:
            return i, 0.0, False
        return i, -value if negative and digits else value, True  # the integer -0 is 0
    if digits == 0:  # every digit 0
        return i, -0.0 if negative else 0.0, True
    magnitude = exponent + min(significant, _INT_DIGITS)
    if significant > _FLOAT_DIGITS or not -_FLOAT_MAGNITUDE < magnitude < _FLOAT_MAGNITUDE:
        return _NOT_PLAIN, 0.0, False
    if significant > _EXACT_DIGITS or not -22 <= exponent <= 22:
        if significant <= _INT_DIGITS and _eisel_lemire(digits, exponent, negative, bits):
            return i, as_float[0], True
        return i, 0.0, False
    value = float(digits)
    value = value * _POW10[exponent] if exponent >= 0 else value / _POW10[-exponent]
    return i, -value if negative else value, True


_STREAM_KEY = np.frombuffer(b"stream", np.uint8)
_TS_KEY = np.frombuffer(b"ts", np.uint8)
_VALUE_KEY = np.frombuffer(b"value", np.uint8)


@njit(cache=True, nogil=True, error_model="numpy")
def _scan_native(buf, ends, max_id, ids, id_ends, ts, values, index, other, slow_at, slow_spans):  # type: ignore[no-untyped-def]  # pragma: no cover - jitted
    """scan_native's loop: returns (points taken, messages left, numbers to parse). Number
    j to parse is buf[slow_spans[j, 0]:slow_spans[j, 1]], point slow_at[j] >> 1's ts (low
    bit 0) or value (1)."""
    taken = left = n_slow = 0
    bits = np.zeros(1, np.uint64)
    as_float = bits.view(np.float64)
    at = 0  # bytes of ids written
    start = 0
    for m in range(ends.shape[0]):
        end = ends[m]
        a = start
        start = end
        plain = a < end
        for k in range(a, end):  # ASCII only, and a newline only as the last byte
            if buf[k] >= 128 or (buf[k] == 10 and k < end - 1):
                plain = False
                break
        i = _skip_space(buf, a, end) if plain else end
        if i >= end or buf[i] != 123:
            plain = False
        i += 1
        seen = 0  # bits: stream, ts, value
        name_start = name_stop = 0
        t = v = 0.0
        ts_from_text = False  # ts is a number _parse_slow_numbers reads
        while plain:
            i = _skip_space(buf, i, end)
            stop = _string_end(buf, i, end)
            if stop == _NOT_PLAIN:
                plain = False
                break
            if _is_key(buf, i + 1, stop, _STREAM_KEY):
                member = 1
            elif _is_key(buf, i + 1, stop, _TS_KEY):
                member = 2
            elif _is_key(buf, i + 1, stop, _VALUE_KEY):
                member = 4
            else:
                member = 0
            if member == 0 or seen & member:  # another member, or one twice
                plain = False
                break
            seen |= member
            i = _skip_space(buf, stop + 1, end)
            if i >= end or buf[i] != 58:
                plain = False
                break
            i = _skip_space(buf, i + 1, end)
            if member == 1:
                stop = _string_end(buf, i, end)
                if stop == _NOT_PLAIN or stop == i + 1 or stop - i - 1 > max_id:
                    plain = False
                    break
                name_start, name_stop = i + 1, stop
                for k in range(name_start, name_stop):  # braces would be escaped in the id
                    if buf[k] == 123 or buf[k] == 125:
                        plain = False
                if not plain:
                    break
                i = stop + 1
            else:
                number_start = i
                i, number, exact = _number(buf, i, end, bits, as_float)
                if i == _NOT_PLAIN:
                    plain = False
                    break
                if member == 2:
                    t = number
                else:
                    v = number
                if not exact:  # its text, for scan_native to parse
                    slow_at[n_slow] = 2 * taken + (member == 4)
                    slow_spans[n_slow, 0] = number_start
                    slow_spans[n_slow, 1] = i
                    n_slow += 1
                    ts_from_text = ts_from_text or member == 2
            i = _skip_space(buf, i, end)
            if i < end and buf[i] == 44:
                i += 1
                continue
            if i >= end or buf[i] != 125 or seen != 7:
                plain = False
            break
        if plain and _skip_space(buf, i + 1, end) != end:
            plain = False
        # native_points' units: seconds, or milliseconds after 1970
        if plain and ts_from_text:
            seconds = 0.0  # for _parse_slow_numbers to read, and to take or leave
        elif plain and _MIN_SECONDS <= t < _SECONDS_BELOW:
            seconds = t
        elif plain and _SECONDS_BELOW <= t < _MILLIS_BELOW:
            seconds = t / 1_000
        else:
            while n_slow > 0 and slow_at[n_slow - 1] >> 1 == taken:  # not taken after all
                n_slow -= 1
            other[left] = m
            left += 1
            continue
        for k in range(name_start, name_stop):
            ids[at] = buf[k]
            at += 1
        id_ends[taken] = at
        ts[taken] = seconds
        values[taken] = v
        index[taken] = m
        taken += 1
    return taken, left, n_slow


def stream_id(name: str, tags: str, field: str) -> str:
    """Id of one field's univariate stream: ``name.field{tags}``, or ``name{tags}`` for ``""``."""
    if field:
        return _id_part(name) + "." + _id_part(field) + tags
    return _id_part(name) + tags


def vector_id(name: str, tags: str) -> str:
    """Id of the vector stream formed by all fields of a sample: ``name{tags}``."""
    return _id_part(name) + tags


_TAG_ESCAPES: Final = str.maketrans({c: "\\" + c for c in "\\{},="})
_ID_ESCAPES: Final = str.maketrans({c: "\\" + c for c in "\\{}"})


def canonical_tags(tags: Mapping[str, str]) -> str:
    """``""`` or ``"{k1=v1,k2=v2}"``: keys sorted, ``\\ { } , =`` escaped with a backslash."""
    if not tags:
        return ""
    items = sorted(tags.items())
    body = ",".join([key + "=" + value for key, value in items])
    # Usually there is nothing to escape: only the delimiters this join put in, and no
    # braces or backslashes. A few scans of the result tell, cheaper than a translate each.
    if (
        body.count("=") != len(items)
        or body.count(",") != len(items) - 1
        or "{" in body
        or "}" in body
        or "\\" in body
    ):
        body = ",".join(
            [
                key.translate(_TAG_ESCAPES) + "=" + value.translate(_TAG_ESCAPES)
                for key, value in items
            ]
        )
    return "{" + body + "}"


def _id_part(part: str) -> str:
    # Escaping braces keeps the tag part of an id findable; the check is cheaper than
    # translate for the names seen in practice, which have nothing to escape.
    if "{" in part or "}" in part or "\\" in part:
        return part.translate(_ID_ESCAPES)
    return part


# --- timestamps ---------------------------------------------------------------------------

# Unit thresholds for numeric timestamps; the module docstring explains the choice.
_SECONDS_BELOW: Final = 1e11
_MILLIS_BELOW: Final = 1e14
_MICROS_BELOW: Final = 1e17
# datetime's range (years 1-9999): anything outside is a unit or producer mistake, and it
# would make datetime.fromtimestamp fail further down the pipeline.
_MIN_SECONDS: Final = -62_135_596_800.0
_MAX_SECONDS: Final = 253_402_300_800.0


def parse_timestamp(raw: object, *, what: str = "ts") -> float:
    """Epoch seconds from a number (unit by magnitude) or an RFC 3339 string.

    RecordDecodeError names ``what`` (the field the timestamp came from) and the problem.
    """
    if isinstance(raw, str):
        try:
            # RFC 3339 allows a lower-case "t" and "z"; fromisoformat does not.
            parsed = datetime.fromisoformat(raw.upper())
        except ValueError:
            raise RecordDecodeError(f"{what} {_show(raw)} is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise RecordDecodeError(f"{what} is {_show(raw)}; expected a finite number")
        magnitude = abs(raw)
        if magnitude >= 1e21:  # past the year 9999 in any unit; keeps huge ints from dividing
            raise RecordDecodeError(f"{what} is {_show(raw)}: outside the years 1-9999")
        # int / int is correctly rounded, so integer nanoseconds lose nothing beyond float's
        # own precision.
        if magnitude < _SECONDS_BELOW:
            ts = float(raw)
        elif magnitude < _MILLIS_BELOW:
            ts = raw / 1_000
        elif magnitude < _MICROS_BELOW:
            ts = raw / 1_000_000
        else:
            ts = raw / 1_000_000_000
    else:
        raise RecordDecodeError(f"{what} is {_show(raw)}; expected a number or an RFC 3339 string")
    if not _MIN_SECONDS <= ts <= _MAX_SECONDS:
        raise RecordDecodeError(f"{what} is {_show(raw)}: outside the years 1-9999")
    return ts


# --- JSON formats -------------------------------------------------------------------------

_SHOW_CHARS: Final = 40


def _show(raw: object) -> str:
    """A JSON value for an error message: short, and never the whole of a large value."""
    if isinstance(raw, dict):
        return "an object"
    if isinstance(raw, list):
        return "an array"
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return repr(raw) if len(raw) <= _SHOW_CHARS else repr(raw[:_SHOW_CHARS]) + "..."
    if isinstance(raw, int) and raw.bit_length() > 64:
        return f"an integer of {raw.bit_length()} bits"  # repr refuses past 4300 digits
    text = repr(raw)
    return text if len(text) <= _SHOW_CHARS else text[:_SHOW_CHARS] + "..."


def _clip(key: str) -> str:
    return key if len(key) <= _SHOW_CHARS else key[:_SHOW_CHARS] + "..."


def _decode_json(
    payload: bytes, record: Callable[[object], Sample], *, batch_key: str | None = None
) -> Decoded:
    samples: list[Sample] = []
    errors: list[str] = []
    for entry in _json_documents(payload):
        if isinstance(entry, str):
            errors.append(entry)
            continue
        label, doc = entry
        if batch_key is not None and isinstance(doc, dict) and batch_key in doc:
            batch = doc[batch_key]
            if not isinstance(batch, list):
                errors.append(f"{label}{batch_key} is {_show(batch)}; expected an array")
                continue
            parts = [(f"{label}{batch_key}[{i}]: ", item) for i, item in enumerate(batch)]
        else:
            parts = [(label, doc)]
        for where, item in parts:
            try:
                samples.append(record(item))
            except RecordDecodeError as exc:
                errors.append(f"{where}{exc}")
    return Decoded(samples, errors)


def _json_documents(payload: bytes) -> list[tuple[str, object] | str]:
    """In message order, a (label, document) pair per JSON document or a reason per line
    that is not JSON.

    A message is one JSON document per line; if no line is JSON, the whole message is tried
    as one (pretty-printed) document before it is called garbage, with one reason. Labels
    name the line only when the message has several.
    """
    lines = [(n, line) for n, line in enumerate(payload.split(b"\n"), start=1) if line.strip()]
    if not lines:
        return []
    if len(lines) > 1:
        entries: list[tuple[str, object] | str] = []
        for number, line in lines:
            try:
                entries.append((f"line {number}: ", orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                entries.append(f"line {number}: not JSON ({exc.msg} at column {exc.colno})")
        if not all(isinstance(entry, str) for entry in entries):
            return entries
    try:
        return [("", orjson.loads(payload))]
    except orjson.JSONDecodeError as exc:
        return [f"not JSON ({exc})"]


_JSON_TYPES: Final = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _object(doc: object) -> dict[str, object]:
    if not isinstance(doc, dict):
        kind = _JSON_TYPES.get(type(doc), "null" if doc is None else "a number")
        raise RecordDecodeError(f"expected a JSON object, got {kind}")
    return doc


def _name(doc: dict[str, object], key: str) -> str:
    name = doc.get(key)
    if not isinstance(name, str) or not name:
        raise RecordDecodeError(f"{key} is missing or not a non-empty string")
    return name


def _required(doc: dict[str, object], key: str) -> object:
    if key not in doc:
        raise RecordDecodeError(f"{key} is missing")
    return doc[key]


def _json_tags(raw: object, what: str, *, skip: str = "") -> str:
    """Canonical tags from an optional JSON object of strings; empty values are no tag."""
    if raw is None:
        return ""
    if not isinstance(raw, dict):
        raise RecordDecodeError(f"{what} is {_show(raw)}; expected an object of strings")
    tags: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise RecordDecodeError(f"{what}.{_clip(key)} is {_show(value)}; expected a string")
        if not key:
            raise RecordDecodeError(f"{what} has an empty key")
        if value and key != skip:
            tags[key] = value
    return canonical_tags(tags)


def _json_number(raw: object, what: str) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)  # orjson gives no int beyond 64 bits, so this cannot overflow
    raise RecordDecodeError(f"{what} is {_show(raw)}; expected a number")


def _native_record(doc: object) -> Sample:
    record = _object(doc)
    name = _name(record, "stream")
    ts = parse_timestamp(_required(record, "ts"))
    tags = _json_tags(record.get("tags"), "tags")
    if "value" in record:
        if "values" in record:
            raise RecordDecodeError('both "value" and "values" are present')
        return Sample(name, tags, ts, {"": _json_number(record["value"], "value")})
    fields = record.get("values")
    if not isinstance(fields, dict) or not fields:
        raise RecordDecodeError('neither "value" nor a non-empty "values" object is present')
    values: dict[str, float] = {}
    for key, raw in fields.items():
        if not key:
            raise RecordDecodeError("values has an empty field name")
        values[key] = _json_number(raw, f"values.{_clip(key)}")
    return Sample(name, tags, ts, values)


def _telegraf_record(doc: object) -> Sample:
    metric = _object(doc)
    name = _name(metric, "name")
    ts = parse_timestamp(_required(metric, "timestamp"), what="timestamp")
    tags = _json_tags(metric.get("tags"), "tags")
    fields = _required(metric, "fields")
    if not isinstance(fields, dict):
        raise RecordDecodeError(f"fields is {_show(fields)}; expected an object")
    if not fields:
        raise RecordDecodeError("fields is empty")
    values: dict[str, float] = {}
    for key, raw in fields.items():
        if not key:
            raise RecordDecodeError("fields has an empty field name")
        if isinstance(raw, bool | str):
            continue  # Telegraf's boolean and string fields are not metrics (as in Influx)
        values[key] = _json_number(raw, f"fields.{_clip(key)}")
    if not values:
        raise RecordDecodeError("no numeric field")
    return Sample(name, tags, ts, values)


# Go's strconv.FormatFloat writes these; ParseFloat also reads the other spellings.
_NON_FINITE: Final = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}
_DECIMAL: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _prometheus_record(doc: object) -> Sample:
    sample = _object(doc)
    labels = sample.get("labels")
    name = sample.get("name")
    if not isinstance(name, str) or not name:
        name = labels.get("__name__") if isinstance(labels, dict) else None
        if not isinstance(name, str) or not name:
            raise RecordDecodeError('the metric name is missing (no "name", no labels.__name__)')
    ts = parse_timestamp(_required(sample, "timestamp"), what="timestamp")
    tags = _json_tags(labels, "labels", skip="__name__")
    raw = _required(sample, "value")
    if isinstance(raw, str):
        value = _NON_FINITE.get(raw.lower())
        if value is None:
            # float() alone would also take "1_000", " 1" and non-ASCII digits.
            if not _DECIMAL.fullmatch(raw):
                raise RecordDecodeError(f"value {_show(raw)} is not a number")
            value = float(raw)
    else:
        value = _json_number(raw, "value")
    return Sample(name, tags, ts, {"": value})


# --- Influx line protocol -----------------------------------------------------------------

# Tokens run to an unescaped delimiter. A run of backslashes escapes the character after it,
# as in the InfluxDB grammar; unescaping then drops one backslash before each delimiter.
_LP_MEASUREMENT: Final = re.compile(r"(?:[^\\, \n]|\\+[^\n]?)+")
_LP_KEY: Final = re.compile(r"(?:[^\\,= \n]|\\+[^\n]?)+")  # tag key, tag value, field key
_LP_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_LP_VALUE: Final = re.compile(r"[^, \t\r\n]*")
_LP_TIMESTAMP: Final = re.compile(r"[^ \t\r\n]*")
_LP_SPACES: Final = re.compile(r" *")
_LP_BLANK: Final = re.compile(r"[ \t\r]*")
_LP_LINE_END: Final = re.compile(r"[ \t\r]*(?:\n|\Z)")
_LP_FLOAT: Final = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_LP_INTEGER: Final = re.compile(r"-?\d+", re.ASCII)
_LP_BOOLEANS: Final = frozenset(
    ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE")
)
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1


class _Malformed(Exception):
    """A line-protocol syntax error at offset ``at``; parsing resumes on the next line."""

    def __init__(self, reason: str, at: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.at = at


def _decode_influx(payload: bytes, now: float) -> Decoded:
    samples: list[Sample] = []
    errors: list[str] = []
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        salvaged = _utf8_lines(payload, errors)
        if salvaged is None:
            return Decoded(samples, errors)
        text = salvaged
    offset = 0
    resume = 0  # where the slow path stopped: a string field may have spanned lines
    for number, line in enumerate(text.split("\n"), start=1):
        start = offset
        offset += len(line) + 1
        if start < resume:
            continue
        result: Sample | str | None
        if "\\" in line or '"' in line:
            result, resume = _lp_slow(text, start, now)
        else:
            stripped = line.strip(" \t\r")
            if not stripped or stripped[0] == "#":
                continue
            result = _lp_fast(stripped, now)
            if result is None:
                result, _ = _lp_slow(text, start, now)  # to word the reason
        if isinstance(result, Sample):
            samples.append(result)
        elif result is not None:
            errors.append(f"line {number}: {result}")
    return Decoded(samples, errors)


def _utf8_lines(payload: bytes, errors: list[str]) -> str | None:
    """The text with lines that are not UTF-8 blanked (one reason each), or None when no
    line is (one reason for the message)."""
    lines: list[str] = []
    bad: list[str] = []
    for number, raw in enumerate(payload.split(b"\n"), start=1):
        try:
            lines.append(raw.decode())
        except UnicodeDecodeError as exc:
            lines.append("")
            bad.append(f"line {number}: not UTF-8 (byte {exc.start})")
    if not any(line.strip() for line in lines):
        errors.append("not UTF-8 text")
        return None
    errors.extend(bad)
    return "\n".join(lines)


def _lp_fast(line: str, now: float) -> Sample | None:
    """The sample on a stripped, non-comment line without backslashes or quotes, by string
    methods alone; None for anything unusual, which the slow path then decodes or words."""
    head, _, rest = line.partition(" ")
    field_text, _, ts_text = rest.lstrip(" ").partition(" ")
    ts_text = ts_text.lstrip(" ")
    if not field_text or " " in ts_text:
        return None
    name, *tag_texts = head.split(",")
    if not name:
        return None
    tags: dict[str, str] = {}
    for tag_text in tag_texts:
        key, _, value = tag_text.partition("=")
        if not key or not value or "=" in value or key in tags:
            return None
        tags[key] = value
    values: dict[str, float] = {}
    try:
        for field in field_text.split(","):
            key, _, raw = field.partition("=")
            if not key or not raw:
                return None
            number = _lp_number(raw)
            if number is not None:
                values[key] = number
        ts = _lp_timestamp(ts_text) if ts_text else now
    except RecordDecodeError:
        return None
    if not values:
        return None
    return Sample(name, canonical_tags(tags), ts, values)


def _lp_slow(text: str, start: int, now: float) -> tuple[Sample | str | None, int]:
    """Decode the line at ``text[start]`` with every escaping rule.

    Returns the sample, the reason the line is malformed, or None for a blank or comment
    line, and the offset of the next line (several lines on when a string held newlines).
    """
    try:
        return _lp_parse(text, start, now)
    except _Malformed as exc:
        end = text.find("\n", exc.at)
        return exc.reason, len(text) if end < 0 else end + 1


def _lp_parse(text: str, start: int, now: float) -> tuple[Sample | None, int]:
    i = _lp_end(_LP_BLANK, text, start)
    if i == len(text) or text[i] == "\n" or text[i] == "#":
        end = text.find("\n", i)
        return None, len(text) if end < 0 else end + 1
    match = _LP_MEASUREMENT.match(text, i)
    if match is None:
        raise _Malformed("missing measurement name", i)
    name = _lp_unescape(match.group(), "\\,", "\\ ")
    i = match.end()

    tags: dict[str, str] = {}
    while text.startswith(",", i):
        match = _LP_KEY.match(text, i + 1)
        if match is None:
            raise _Malformed("expected a tag key after ','", i)
        key = _lp_unescape(match.group(), "\\,", "\\=", "\\ ")
        i = match.end()
        if not text.startswith("=", i):
            raise _Malformed(f"tag {_clip(key)!r} has no '='", i)
        match = _LP_KEY.match(text, i + 1)
        if match is None:
            raise _Malformed(f"tag {_clip(key)!r} has an empty value", i)
        if key in tags:
            raise _Malformed(f"duplicate tag {_clip(key)!r}", i)
        tags[key] = _lp_unescape(match.group(), "\\,", "\\=", "\\ ")
        i = match.end()
    if _LP_LINE_END.match(text, i):
        raise _Malformed("missing field set", i)
    if not text.startswith(" ", i):
        raise _Malformed(f"unexpected {text[i]!r} after the tag set", i)
    i = _lp_end(_LP_SPACES, text, i)

    values: dict[str, float] = {}
    while True:
        match = _LP_KEY.match(text, i)
        if match is None:
            raise _Malformed("expected a field key", i)
        key = _lp_unescape(match.group(), "\\,", "\\=", "\\ ")
        i = match.end()
        if not text.startswith("=", i):
            raise _Malformed(f"field {_clip(key)!r} has no '='", i)
        i += 1
        if text.startswith('"', i):
            match = _LP_STRING.match(text, i)
            if match is None:
                raise _Malformed(f"field {_clip(key)!r} has an unterminated string", i)
            i = match.end()  # string fields are not metrics
        else:
            end = _lp_end(_LP_VALUE, text, i)
            if end == i:
                raise _Malformed(f"field {_clip(key)!r} has no value", i)
            try:
                number = _lp_number(text[i:end])
            except RecordDecodeError as exc:
                raise _Malformed(f"field {_clip(key)!r}: {exc}", i) from None
            if number is not None:
                values[key] = number
            i = end
        if not text.startswith(",", i):
            break
        i += 1

    line_end = _LP_LINE_END.match(text, i)
    if line_end is not None:
        ts = now
    elif text.startswith(" ", i):
        i = _lp_end(_LP_SPACES, text, i)
        end = _lp_end(_LP_TIMESTAMP, text, i)
        try:
            ts = _lp_timestamp(text[i:end])
        except RecordDecodeError as exc:
            raise _Malformed(str(exc), i) from None
        line_end = _LP_LINE_END.match(text, end)
        if line_end is None:
            raise _Malformed("unexpected text after the timestamp", end)
    else:
        raise _Malformed(f"unexpected {text[i]!r} after field {_clip(key)!r}", i)
    if not values:
        raise _Malformed("no numeric field", i)
    return Sample(name, canonical_tags(tags), ts, values), line_end.end()


def _lp_end(pattern: re.Pattern[str], text: str, i: int) -> int:
    """Where a match at ``i`` ends, for patterns that also match the empty string."""
    match = pattern.match(text, i)
    return i if match is None else match.end()


def _lp_unescape(token: str, *escapes: str) -> str:
    if "\\" not in token:
        return token
    # One left-to-right pass per escape equals a single combined pass: dropping a backslash
    # before one delimiter cannot create an escape of another.
    for escape in escapes:
        token = token.replace(escape, escape[1])
    return token


def _lp_number(raw: str) -> float | None:
    """A numeric field value (``raw`` non-empty) as a float, None for a boolean;
    RecordDecodeError for anything else."""
    suffix = raw[-1]
    if suffix == "i" or suffix == "u":
        digits = raw[:-1]
        if not _LP_INTEGER.fullmatch(digits) or (suffix == "u" and digits[0] == "-"):
            raise RecordDecodeError(f"{_show(raw)} is not a number or a boolean")
        largest = _INT64_MAX if suffix == "i" else _UINT64_MAX
        if not _int_within(digits, _INT64_MIN, largest):
            raise RecordDecodeError(f"{_show(raw)} is out of range")
        return float(int(digits))
    if _LP_FLOAT.fullmatch(raw):
        value = float(raw)
        if math.isinf(value):
            raise RecordDecodeError(f"{_show(raw)} is out of range")
        return value
    if raw in _LP_BOOLEANS:
        return None
    raise RecordDecodeError(f"{_show(raw)} is not a number or a boolean")


def _lp_timestamp(raw: str) -> float:
    if not _LP_INTEGER.fullmatch(raw):
        raise RecordDecodeError(f"timestamp {_show(raw)} is not integer nanoseconds")
    if not _int_within(raw, _INT64_MIN, _INT64_MAX):
        raise RecordDecodeError(f"timestamp {_show(raw)} is out of range")
    return int(raw) / 1_000_000_000  # int / int: correctly rounded


def _int_within(digits: str, smallest: int, largest: int) -> bool:
    # Length first: int() of thousands of digits is slow, and refused past 4300.
    return len(digits) <= 21 and smallest <= int(digits) <= largest
