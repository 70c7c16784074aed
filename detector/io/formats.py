"""Every wire format is decoded here and nowhere else.

Native format, one JSON document per line or message:
    {"stream": "web-1.cpu", "ts": 1732000000, "value": 0.73}
    {"stream": "web-1", "ts": "2024-11-19T07:06:40Z", "values": {"cpu": 0.73, "mem": 0.41}}
``ts`` is epoch seconds, epoch milliseconds (any number above 1e11) or RFC 3339.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from detector.errors import RecordDecodeError

# Epoch seconds stay below 1e11 until the year 5138; larger numbers are milliseconds.
_MILLIS_THRESHOLD = 1e11


@dataclass(frozen=True, slots=True)
class Point:
    stream: str
    ts: float  # epoch seconds
    values: dict[str, float]  # field name -> value; {"value": v} for single-value records


def parse_timestamp(raw: object) -> float:
    """Epoch seconds from epoch seconds, epoch milliseconds or an RFC 3339 string."""
    if isinstance(raw, bool):
        raise RecordDecodeError(f"ts is {raw!r}; expected a number or an RFC 3339 string")
    if isinstance(raw, int | float):
        ts = float(raw)
        if not math.isfinite(ts):
            raise RecordDecodeError(f"ts is {raw!r}; expected a finite number")
        return ts / 1000.0 if abs(ts) >= _MILLIS_THRESHOLD else ts
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise RecordDecodeError(f"ts {raw!r} is not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # naive timestamps are taken as UTC
        return parsed.timestamp()
    raise RecordDecodeError(f"ts is {type(raw).__name__}; expected a number or a string")


def _number(name: str, raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RecordDecodeError(f"{name} is {raw!r}; expected a number")
    return float(raw)


def decode_native(payload: bytes | str) -> Point:
    """One native JSON record; RecordDecodeError (with the reason) on anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RecordDecodeError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RecordDecodeError(f"expected a JSON object, got {type(doc).__name__}")
    stream = doc.get("stream")
    if not isinstance(stream, str) or not stream:
        raise RecordDecodeError("stream is missing or not a non-empty string")
    if "ts" not in doc:
        raise RecordDecodeError("ts is missing")
    ts = parse_timestamp(doc["ts"])
    if "value" in doc:
        values = {"value": _number("value", doc["value"])}
    elif isinstance(doc.get("values"), dict) and doc["values"]:
        values = {str(k): _number(f"values.{k}", v) for k, v in doc["values"].items()}
    else:
        raise RecordDecodeError('neither "value" nor a non-empty "values" object is present')
    return Point(stream=stream, ts=ts, values=values)
