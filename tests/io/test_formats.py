"""Wire formats: examples of every format and the stream-id scheme, then properties: decode
never raises, Influx lines written Telegraf's way decode back, the fast Influx path agrees
with the slow one."""

from __future__ import annotations

import math
import re
import time
from decimal import Decimal

import numpy as np
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from detector.errors import RecordDecodeError
from detector.io import formats
from detector.io.formats import (
    FORMATS,
    Decoded,
    Sample,
    canonical_tags,
    decode,
    decode_native,
    parse_timestamp,
    stream_id,
    vector_id,
)

NOW = 1_700_000_000.0
JSON_FORMATS = [f for f in FORMATS if f != "influx"]


def decode_one(payload: bytes, fmt: formats.Format) -> Sample:
    decoded = decode(payload, fmt, now=NOW)
    assert decoded.errors == []
    (sample,) = decoded.samples
    return sample


def decode_error(payload: bytes, fmt: formats.Format) -> str:
    decoded = decode(payload, fmt, now=NOW)
    assert decoded.samples == []
    (reason,) = decoded.errors
    return reason


def check_decoded(decoded: Decoded) -> None:
    """What every caller of decode may rely on, whatever the payload."""
    assert isinstance(decoded, Decoded)
    assert all(isinstance(reason, str) and reason for reason in decoded.errors)
    for sample in decoded.samples:
        assert isinstance(sample.name, str) and sample.name
        assert sample.tags == "" or (sample.tags.startswith("{") and sample.tags.endswith("}"))
        assert isinstance(sample.ts, float) and math.isfinite(sample.ts)
        assert sample.values and all(type(v) is float for v in sample.values.values())


# --- stream ids ---------------------------------------------------------------------------


def test_stream_and_vector_ids():
    assert stream_id("cpu", "{host=a}", "usage_idle") == "cpu.usage_idle{host=a}"
    assert vector_id("cpu", "{host=a}") == "cpu{host=a}"
    # A single unnamed value and a named field of the parent name are the same stream.
    assert stream_id("web-1.cpu", "", "") == stream_id("web-1", "", "cpu") == "web-1.cpu"
    assert vector_id("web-1", "") == "web-1"


def test_braces_in_names_are_escaped_so_the_tag_part_stays_findable():
    assert stream_id("a{b=c}", "", "") == r"a\{b=c\}"
    assert stream_id("a", "{b=c}", "") == "a{b=c}"
    assert stream_id("m", "", "f}") == r"m.f\}"
    assert vector_id("C:\\x", "") == r"C:\\x"


def test_canonical_tags_sort_keys_and_escape_delimiters():
    assert canonical_tags({}) == ""
    assert canonical_tags({"z": "1", "a": "x y"}) == "{a=x y,z=1}"
    assert canonical_tags({"k": "a,b=c{d}"}) == r"{k=a\,b\=c\{d\}}"
    # Without escaping the backslash itself these two would share an id.
    first = canonical_tags({"a": "x\\", "b\\": "y"})
    second = canonical_tags({"a": "x,b=y"})
    assert first == r"{a=x\\,b\\=y}" and second == r"{a=x\,b\=y}"


def test_the_same_metric_has_the_same_ids_in_every_format():
    lines = {
        "native": b'{"stream": "cpu", "ts": 1700000000, "tags": {"host": "a"},'
        b' "values": {"idle": 1}}',
        "influx": b"cpu,host=a idle=1 1700000000000000000",
        "telegraf_json": b'{"fields": {"idle": 1}, "name": "cpu", "tags": {"host": "a"},'
        b' "timestamp": 1700000000}',
    }
    samples = [decode_one(payload, fmt) for fmt, payload in lines.items()]
    assert samples[0] == samples[1] == samples[2] == Sample("cpu", "{host=a}", NOW, {"idle": 1.0})
    assert stream_id(samples[0].name, samples[0].tags, "idle") == "cpu.idle{host=a}"


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1700000000, 1700000000.0),
        (1700000000.25, 1700000000.25),
        (1700000000123, 1700000000.123),
        (1700000000123456, 1700000000.123456),
        (1700000000123456789, 1700000000123456789 / 10**9),
        (-1700000000123, -1700000000.123),
        # The thresholds: seconds below 1e11, milliseconds below 1e14, microseconds below 1e17.
        (99_999_999_999, 99_999_999_999.0),
        (100_000_000_000, 100_000_000.0),
        (99_999_999_999_999, 99_999_999_999.999),
        (10**14, 100_000_000.0),
        (10**17 - 1, 99_999_999_999.999999),
        (10**17, 100_000_000.0),
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14T23:13:20+01:00", 1700000000.0),
        ("2023-11-14t22:13:20.5z", 1700000000.5),
        ("2023-11-14T22:13:20.123456789Z", 1700000000.123456),
        ("2023-11-14 22:13:20", 1700000000.0),  # naive means UTC
    ],
)
def test_timestamps(raw, expected):
    assert parse_timestamp(raw) == pytest.approx(expected, abs=1e-6)


def test_integer_nanoseconds_keep_float_precision():
    nanos = 1700000000123456789
    assert parse_timestamp(nanos) == nanos / 10**9  # not float(nanos) / 1e9


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (True, "ts is true; expected a number or an RFC 3339 string"),
        (None, "ts is null; expected a number or an RFC 3339 string"),
        ([1], "ts is an array; expected a number or an RFC 3339 string"),
        (math.nan, "ts is nan; expected a finite number"),
        (math.inf, "ts is inf; expected a finite number"),
        (10**400, "ts is an integer of 1329 bits: outside the years 1-9999"),
        (1e30, "ts is 1e+30: outside the years 1-9999"),
        ("yesterday", "ts 'yesterday' is not an RFC 3339 timestamp"),
        ("0001-01-01T00:00:00+01:00", "ts is '0001-01-01T00:00:00+01:00': outside the years"),
    ],
)
def test_bad_timestamps(raw, reason):
    with pytest.raises(RecordDecodeError, match=re.escape(reason)):
        parse_timestamp(raw)


# --- native -------------------------------------------------------------------------------


def test_native_single_value_and_vector_records():
    assert decode_one(b'{"stream": "web-1.cpu", "ts": 1732000000, "value": 0.73}', "native") == (
        Sample("web-1.cpu", "", 1732000000.0, {"": 0.73})
    )
    payload = (
        b'{"stream": "web-1", "ts": "2024-11-19T07:06:40Z", "values": {"cpu": 0.73, "mem": 1},'
        b' "tags": {"dc": "fra", "az": "b", "empty": ""}}'
    )
    assert decode_one(payload, "native") == Sample(
        "web-1", "{az=b,dc=fra}", 1732000000.0, {"cpu": 0.73, "mem": 1.0}
    )


def test_native_timestamp_units_by_magnitude():
    for ts in (1732000000, 1732000000000, 1732000000000000, 1732000000000000000):
        payload = orjson.dumps({"stream": "s", "ts": ts, "value": 1})
        assert decode_one(payload, "native").ts == 1732000000.0


def test_native_message_with_several_lines_keeps_the_good_ones():
    payload = (
        b'{"stream": "a", "ts": 1, "value": 1}\n'
        b"\n"
        b'{"stream": "a", "ts": 2, "value": "high"}\n'
        b'{"stream": "b", "ts": 3, "values": {"x": 2}}\r\n'
        b'{"stream": "c", "ts": 4,\n'
    )
    decoded = decode(payload, "native")
    assert [(s.name, s.ts) for s in decoded.samples] == [("a", 1.0), ("b", 3.0)]
    assert decoded.errors == [
        "line 3: value is 'high'; expected a number",
        "line 5: not JSON (unexpected end of data at column 25)",
    ]


def test_native_pretty_printed_document_is_one_record():
    payload = orjson.dumps({"stream": "s", "ts": 5, "value": 1}, option=orjson.OPT_INDENT_2)
    assert b"\n" in payload
    assert decode_one(payload, "native") == Sample("s", "", 5.0, {"": 1.0})


@pytest.mark.parametrize(
    "payload", [b"\x00\xff\xfe garbage", b"not json\nat all\n", b"{", b"\xc3\x28\n\xa0\xa1"]
)
def test_garbage_is_one_reason(payload):
    for fmt in JSON_FORMATS:
        assert decode_error(payload, fmt).startswith("not JSON (")


def test_empty_and_blank_messages_hold_nothing():
    for fmt in FORMATS:
        assert decode(b"", fmt) == Decoded([], [])
        assert decode(b" \n\r\n\n", fmt) == Decoded([], [])


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"ts": 1, "value": 1}, "stream is missing or not a non-empty string"),
        ({"stream": "", "ts": 1, "value": 1}, "stream is missing or not a non-empty string"),
        ({"stream": "a", "value": 1}, "ts is missing"),
        ({"stream": "a", "ts": "soon", "value": 1}, "ts 'soon' is not an RFC 3339 timestamp"),
        ({"stream": "a", "ts": 1}, 'neither "value" nor a non-empty "values" object is present'),
        ({"stream": "a", "ts": 1, "values": {}}, 'neither "value" nor a non-empty "values"'),
        ({"stream": "a", "ts": 1, "value": True}, "value is true; expected a number"),
        ({"stream": "a", "ts": 1, "value": None}, "value is null; expected a number"),
        ({"stream": "a", "ts": 1, "value": "0.5"}, "value is '0.5'; expected a number"),
        ({"stream": "a", "ts": 1, "value": 1, "values": {"b": 2}}, 'both "value" and "values"'),
        ({"stream": "a", "ts": 1, "values": {"b": [1]}}, "values.b is an array; expected a number"),
        ({"stream": "a", "ts": 1, "values": {"": 1}}, "values has an empty field name"),
        ({"stream": "a", "ts": 1, "value": 1, "tags": {"k": 1}}, "tags.k is 1; expected a string"),
        ({"stream": "a", "ts": 1, "value": 1, "tags": ["k"]}, "tags is an array; expected an obj"),
        ({"stream": "a", "ts": 1, "value": 1, "tags": {"": "v"}}, "tags has an empty key"),
        ([{"stream": "a"}], "expected a JSON object, got an array"),
        ("x" * 100, "expected a JSON object, got a string"),
    ],
)
def test_native_errors(record, reason):
    payload = orjson.dumps(record)
    assert decode_error(payload, "native").startswith(reason)
    assert decode_error(b"\n" + payload + b"\r\n", "native").startswith(reason)  # one line
    with pytest.raises(RecordDecodeError, match="^" + re.escape(reason)):
        decode_native(payload)


def test_decode_native_is_one_record():
    assert decode_native('{"stream": "s", "ts": 1, "value": 2}') == Sample("s", "", 1.0, {"": 2.0})
    with pytest.raises(RecordDecodeError, match=r"^not JSON \(unexpected content after document"):
        decode_native(b'{"stream": "s", "ts": 1, "value": 2}\n{"stream": "s"}')


def test_long_values_are_shortened_in_reasons():
    reason = decode_error(orjson.dumps({"stream": "a", "ts": 1, "value": "v" * 10_000}), "native")
    assert len(reason) < 100 and "..." in reason


# --- influx -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "cpu,host=a,cpu=cpu0 usage_idle=99.5,usage_user=0.3 1700000000000000000",
            Sample("cpu", "{cpu=cpu0,host=a}", NOW, {"usage_idle": 99.5, "usage_user": 0.3}),
        ),
        (
            "m a=1,b=-1.5,c=.5,d=1e-3,e=5i,f=5u,g=-7i,h=1.,i=1E+2,j=-0 1",
            Sample(
                "m",
                "",
                1e-9,
                {"a": 1, "b": -1.5, "c": 0.5, "d": 1e-3, "e": 5, "f": 5, "g": -7, "h": 1}
                | {"i": 100, "j": 0},
            ),
        ),
        (
            'm ok=true,flag=F,s="x",v=1,b=t 1000000000',
            Sample("m", "", 1.0, {"v": 1.0}),
        ),
        ("m v=1", Sample("m", "", NOW, {"v": 1.0})),  # no timestamp: now
        ("m v=1 -1500000000", Sample("m", "", -1.5, {"v": 1.0})),
        ("m v=1,v=2 0", Sample("m", "", 0.0, {"v": 2.0})),  # the last of a repeated field
        ("  m   v=1   0  \t", Sample("m", "", 0.0, {"v": 1.0})),
        ("m v=1 0\r", Sample("m", "", 0.0, {"v": 1.0})),
        ("m=x,t=a v=1 0", Sample("m=x", "{t=a}", 0.0, {"v": 1.0})),
        (
            "température,pièce=salon v=21.5 0",
            Sample("température", "{pièce=salon}", 0.0, {"v": 21.5}),
        ),
        # Escapes in measurement, tag keys and values, field keys.
        (
            r"my\ meas\,ure=ment,tag\ key=tag\,val\=ue field\ k\=e\,y=1 0",
            Sample("my meas,ure=ment", r"{tag key=tag\,val\=ue}", 0.0, {"field k=e,y": 1.0}),
        ),
        # A measurement escapes only "," and " "; other backslashes anywhere are literal.
        (r"a\=b v=1 0", Sample(r"a\=b", "", 0.0, {"v": 1.0})),
        (r"disk,path=C:\temp v=1 0", Sample("disk", r"{path=C:\\temp}", 0.0, {"v": 1.0})),
        # A run of backslashes escapes the delimiter after it; one backslash is dropped.
        (r"m,k=a\\,j v=1 0", Sample("m", r"{k=a\\\,j}", 0.0, {"v": 1.0})),
        # Strings hold escaped quotes and backslashes and delimiters; quotes in a tag are literal.
        (
            r'm,q="x" s="a \"q\" \\ , = x",t="",v=2,u="\\" 0',
            Sample("m", '{q="x"}', 0.0, {"v": 2.0}),
        ),
    ],
)
def test_influx_lines(line, expected):
    assert decode_one(line.encode(), "influx") == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("cpu", "missing field set"),
        ("cpu,host=a", "missing field set"),
        ("cpu,host=a  \t", "missing field set"),
        (",host=a v=1", "missing measurement name"),
        ("cpu,host v=1", "tag 'host' has no '='"),
        ("cpu,host= v=1", "tag 'host' has an empty value"),
        ("cpu,=a v=1", "expected a tag key after ','"),
        ("cpu, v=1", "expected a tag key after ','"),
        ("cpu,a=1,a=2 v=1", "duplicate tag 'a'"),
        ("cpu,a=b=c v=1", "unexpected '=' after the tag set"),
        ("cpu v", "field 'v' has no '='"),
        ("cpu v=", "field 'v' has no value"),
        ("cpu v=,w=1", "field 'v' has no value"),
        ("cpu =1", "expected a field key"),
        ("cpu v=1,", "expected a field key"),
        ("cpu v=abc", "field 'v': 'abc' is not a number or a boolean"),
        ("cpu v=1.2.3", "field 'v': '1.2.3' is not a number or a boolean"),
        ("cpu v=nan", "field 'v': 'nan' is not a number or a boolean"),
        ("cpu v=+1", "field 'v': '+1' is not a number or a boolean"),
        ("cpu v=1_000", "field 'v': '1_000' is not a number or a boolean"),
        ("cpu v=1e999", "field 'v': '1e999' is out of range"),
        ("cpu v=9223372036854775808i", "field 'v': '9223372036854775808i' is out of range"),
        ("cpu v=18446744073709551616u", "field 'v': '18446744073709551616u' is out of range"),
        ("cpu v=-1u", "field 'v': '-1u' is not a number or a boolean"),
        ("cpu v=1\t5", "unexpected '\\t' after field 'v'"),
        ('cpu v="a"x', "unexpected 'x' after field 'v'"),
        ('cpu v="unterminated', "field 'v' has an unterminated string"),
        ("cpu v=1 12.5", "timestamp '12.5' is not integer nanoseconds"),
        ("cpu v=1 1 2", "unexpected text after the timestamp"),
        ("cpu v=1 99999999999999999999", "timestamp '99999999999999999999' is out of range"),
        ('cpu s="text"', "no numeric field"),
        ("cpu ok=true,ko=F 1", "no numeric field"),
    ],
)
def test_malformed_influx_lines(line, reason):
    assert decode_error(line.encode(), "influx") == f"line 1: {reason}"


def test_influx_message_with_one_bad_line_keeps_the_rest():
    payload = (
        b"# written by telegraf\ncpu v=1 1\n\nmem v=2 2\r\nbroken\n"
        b'  # indented "comment"\ndisk v=3 3\n'
    )
    decoded = decode(payload, "influx", now=NOW)
    assert [s.name for s in decoded.samples] == ["cpu", "mem", "disk"]
    assert decoded.errors == ["line 5: missing field set"]


def test_influx_string_fields_may_span_lines():
    payload = b'log msg="first\nsecond, third=3",level=2i 5\nnext,t="a v=1 6\nlast v=1 7'
    decoded = decode(payload, "influx", now=NOW)
    assert decoded.errors == []
    assert decoded.samples == [
        Sample("log", "", 5e-9, {"level": 2.0}),
        Sample("next", '{t="a}', 6e-9, {"v": 1.0}),
        Sample("last", "", 7e-9, {"v": 1.0}),
    ]


def test_influx_unterminated_string_costs_only_its_own_line():
    payload = b'a v=1 1\nb s="open,v=2 2\nc v=3 3'
    decoded = decode(payload, "influx", now=NOW)
    assert [s.name for s in decoded.samples] == ["a", "c"]
    assert decoded.errors == ["line 2: field 's' has an unterminated string"]


def test_influx_lines_that_are_not_utf8():
    decoded = decode(b"cpu v=1 1\n\xff\xfe v=2\nmem v=3 3", "influx", now=NOW)
    assert [s.name for s in decoded.samples] == ["cpu", "mem"]
    assert decoded.errors == ["line 2: not UTF-8 (byte 0)"]
    assert decode(b"\xff\xfe\n\xc3\x28", "influx").errors == ["not UTF-8 text"]


def test_influx_without_timestamp_defaults_to_the_clock():
    before = time.time()
    (sample,) = decode(b"cpu v=1", "influx").samples
    assert before <= sample.ts <= time.time()


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        decode(b"", "csv")


# --- telegraf_json ------------------------------------------------------------------------

TELEGRAF_CPU = {
    "fields": {"usage_idle": 99.5, "usage_user": 1, "state": "ok", "up": True},
    "name": "cpu",
    "tags": {"cpu": "cpu0", "host": "a"},
    "timestamp": 1458229140,
}


def test_telegraf_metric_batch_and_lines():
    expected = Sample(
        "cpu", "{cpu=cpu0,host=a}", 1458229140.0, {"usage_idle": 99.5, "usage_user": 1.0}
    )
    assert decode_one(orjson.dumps(TELEGRAF_CPU), "telegraf_json") == expected
    batch = decode(orjson.dumps({"metrics": [TELEGRAF_CPU, TELEGRAF_CPU]}), "telegraf_json")
    assert batch == Decoded([expected, expected], [])
    lines = orjson.dumps(TELEGRAF_CPU) + b"\n" + orjson.dumps({"metrics": [TELEGRAF_CPU]})
    assert decode(lines, "telegraf_json") == Decoded([expected, expected], [])


@pytest.mark.parametrize(
    "timestamp",
    [1458229140, 1458229140000, 1458229140000000, 1458229140000000000, "2016-03-17T15:39:00Z"],
)
def test_telegraf_timestamp_units(timestamp):
    metric = TELEGRAF_CPU | {"timestamp": timestamp}
    assert decode_one(orjson.dumps(metric), "telegraf_json").ts == 1458229140.0


def test_telegraf_bad_metric_in_a_batch_is_named_by_index():
    metrics = [TELEGRAF_CPU, TELEGRAF_CPU | {"fields": {"state": "ok"}}, {"name": "x"}]
    decoded = decode(orjson.dumps({"metrics": metrics}), "telegraf_json")
    assert [s.name for s in decoded.samples] == ["cpu"]
    assert decoded.errors == ["metrics[1]: no numeric field", "metrics[2]: timestamp is missing"]
    assert decode_error(b'{"metrics": {}}', "telegraf_json") == (
        "metrics is an object; expected an array"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": ""}, "name is missing or not a non-empty string"),
        ({"fields": {}}, "fields is empty"),
        ({"fields": [1]}, "fields is an array; expected an object"),
        ({"fields": {"v": None}}, "fields.v is null; expected a number"),
        ({"fields": {"": 1}}, "fields has an empty field name"),
        ({"timestamp": "now"}, "timestamp 'now' is not an RFC 3339 timestamp"),
        ({"tags": {"host": 5}}, "tags.host is 5; expected a string"),
    ],
)
def test_telegraf_errors(change, reason):
    assert decode_error(orjson.dumps(TELEGRAF_CPU | change), "telegraf_json") == reason


# --- prometheus_json ----------------------------------------------------------------------

PROMETHEUS_UP = {
    "timestamp": "1970-01-01T00:00:00Z",
    "value": "9876543210",
    "name": "up",
    "labels": {"__name__": "up", "label1": "value1", "label2": "value2"},
}


def test_prometheus_adapter_sample():
    assert decode_one(orjson.dumps(PROMETHEUS_UP), "prometheus_json") == Sample(
        "up", "{label1=value1,label2=value2}", 0.0, {"": 9876543210.0}
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [("NaN", math.nan), ("+Inf", math.inf), ("-Inf", -math.inf), ("-0.25", -0.25), ("1e-05", 1e-5)],
)
def test_prometheus_values_pass_non_finite_through(value, expected):
    sample = decode_one(orjson.dumps(PROMETHEUS_UP | {"value": value}), "prometheus_json")
    (got,) = sample.values.values()
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_prometheus_name_from_labels_and_empty_labels_dropped():
    record = {
        "timestamp": "2023-11-14T22:13:20Z",
        "value": "1",
        "labels": {"__name__": "http_requests_total", "code": "200", "path": ""},
    }
    assert decode_one(orjson.dumps(record), "prometheus_json") == Sample(
        "http_requests_total", "{code=200}", NOW, {"": 1.0}
    )


def test_prometheus_one_sample_per_line():
    payload = orjson.dumps(PROMETHEUS_UP) + b"\n" + orjson.dumps(PROMETHEUS_UP | {"value": "x"})
    decoded = decode(payload, "prometheus_json")
    assert len(decoded.samples) == 1
    assert decoded.errors == ["line 2: value 'x' is not a number"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"value": " 1"}, "value ' 1' is not a number"),
        ({"value": "1_000"}, "value '1_000' is not a number"),
        ({"value": True}, "value is true; expected a number"),
        (
            {"name": None, "labels": {}},
            'the metric name is missing (no "name", no labels.__name__)',
        ),
        ({"labels": {"a": 1}}, "labels.a is 1; expected a string"),
    ],
)
def test_prometheus_errors(change, reason):
    assert decode_error(orjson.dumps(PROMETHEUS_UP | change), "prometheus_json") == reason


@pytest.mark.parametrize("key", ["timestamp", "value"])
def test_prometheus_required_keys(key):
    record = {k: v for k, v in PROMETHEUS_UP.items() if k != key}
    assert decode_error(orjson.dumps(record), "prometheus_json") == f"{key} is missing"


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=400)
@given(st.binary(max_size=300), st.sampled_from(FORMATS))
def test_decode_never_raises_on_arbitrary_bytes(payload, fmt):
    check_decoded(decode(payload, fmt, now=NOW))


LINE_PROTOCOL_PIECES = st.sampled_from(
    ["cpu", "a", "=", "==", ",", " ", "  ", "\\", '"', "\n", "\r\n", "\t", "#", "1", "-1.5e3",
     "5i", "7u", "t", "false", "x=1", "h=a", "é", "123456789012345678901"]
)  # fmt: skip


@settings(max_examples=400)
@given(st.lists(LINE_PROTOCOL_PIECES, max_size=30).map("".join))
def test_decode_never_raises_on_line_protocol_like_text(text):
    check_decoded(decode(text.encode(), "influx", now=NOW))


JSON_KEYS = st.sampled_from(
    ["stream", "ts", "value", "values", "tags", "name", "fields", "timestamp", "metrics",
     "labels", "__name__", ""]
)  # fmt: skip
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "NaN", "+Inf", "1.5", "2023-11-14T22:13:20Z", "x"])
    | st.text(max_size=5)
)
JSON_DOCUMENTS = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(JSON_KEYS, children, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=400)
@given(st.lists(JSON_DOCUMENTS, min_size=1, max_size=3), st.sampled_from(JSON_FORMATS))
def test_decode_never_raises_on_arbitrary_json(documents, fmt):
    payload = b"\n".join(orjson.dumps(doc) for doc in documents)
    check_decoded(decode(payload, fmt))


@settings(max_examples=200)
@given(JSON_DOCUMENTS)
def test_native_value_of_any_json_type_is_a_float_or_an_error(value):
    try:
        sample = decode_native(orjson.dumps({"stream": "s", "ts": 1, "value": value}))
    except RecordDecodeError:
        return
    assert type(sample.values[""]) is float


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decode_native_raises_nothing_but_record_decode_error(payload):
    try:
        sample = decode_native(payload)
    except RecordDecodeError:
        return
    check_decoded(Decoded([sample], []))


# Telegraf's influx serializer: which characters it escapes where, and how it writes values.
def _escape(text: str, delimiters: str) -> str:
    return "".join("\\" + c if c in delimiters else c for c in text)


def _field_value(value: object, fixed_notation: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):  # (int, suffix)
        return f"{value[0]}{value[1]}"
    assert isinstance(value, float)
    # Go's FormatFloat(v, 'f', -1, 64) is the shortest round-trip digits, never an exponent.
    return format(Decimal(repr(value)), "f") if fixed_notation else repr(value)


# Control characters are excluded: Telegraf writes a tab as backslash-t, which no parser
# turns back. A trailing backslash cannot be written (Telegraf trims it), nor can a
# measurement start with "#" (the line would be a comment).
TOKENS = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(
    lambda s: not s.endswith("\\")
)
FIELD_VALUES = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.tuples(st.integers(-(2**63), 2**63 - 1), st.just("i"))
    | st.tuples(st.integers(0, 2**64 - 1), st.just("u"))
    | st.booleans()
    | st.text(max_size=8)
)
METRICS = st.tuples(
    TOKENS.filter(lambda s: not s.startswith("#")),
    st.dictionaries(TOKENS, TOKENS, max_size=3),
    st.dictionaries(TOKENS, FIELD_VALUES, min_size=1, max_size=4),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
)


@settings(max_examples=300)
@given(st.lists(METRICS, min_size=1, max_size=3))
def test_influx_lines_written_by_telegraf_decode_back(metrics):
    lines, expected = [], []
    for name, tags, fields, nanos, fixed_notation in metrics:
        numeric = {
            key: float(value[0]) if isinstance(value, tuple) else value
            for key, value in fields.items()
            if isinstance(value, float | tuple)
        }
        assume(numeric)
        head = _escape(name, ", ") + "".join(
            f",{_escape(k, ',= ')}={_escape(v, ',= ')}" for k, v in sorted(tags.items())
        )
        field_set = ",".join(
            f"{_escape(k, ',= ')}={_field_value(v, fixed_notation)}" for k, v in fields.items()
        )
        lines.append(f"{head} {field_set}" + ("" if nanos is None else f" {nanos}"))
        ts = NOW if nanos is None else nanos / 10**9
        expected.append(Sample(name, canonical_tags(tags), ts, numeric))
    decoded = decode("\n".join(lines).encode(), "influx", now=NOW)
    assert decoded == Decoded(expected, [])


SIMPLE_LINE_PIECES = st.sampled_from(
    ["cpu", "a", "=", ",", " ", "  ", "\t", "\r", "#", "1", ".5", "-", "e3", "5i", "7u", "T",
     "true", "x=1", "h=a", "1700000000000000000", "é"]
)  # fmt: skip
WORDS = st.sampled_from(["cpu", "a", "h", "é", "m=x"])
VALUES = st.sampled_from(
    ["1", "-1.5", ".5", "1e3", "1.", "5i", "7u", "-3i", "t", "true", "F", "abc", "", "1.2.3", "nan"]
)


@st.composite
def simple_lines(draw: st.DrawFn) -> str:
    """Influx lines without backslashes or quotes, mostly well-formed, some slightly broken."""
    tags = draw(st.lists(st.tuples(WORDS, WORDS), max_size=3))
    fields = draw(st.lists(st.tuples(WORDS, VALUES), min_size=1, max_size=3))
    line = (
        draw(WORDS)
        + "".join(f",{k}={v}" for k, v in tags)
        + draw(st.sampled_from([" ", "  "]))
        + ",".join(f"{k}={v}" for k, v in fields)
        + draw(st.sampled_from(["", " 0", " -5", " 1700000000000000000", "  12", " 1.5"]))
        + draw(st.sampled_from(["", " ", "\t", "\r"]))
    )
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(SIMPLE_LINE_PIECES) + line[at:]
    return line


@settings(max_examples=500)
@given(simple_lines() | st.lists(SIMPLE_LINE_PIECES, max_size=20).map("".join))
def test_influx_fast_path_agrees_with_the_slow_path(line):
    stripped = line.strip(" \t\r")
    assume(stripped and not stripped.startswith("#"))
    fast = formats._lp_fast(stripped, NOW)
    slow, _ = formats._lp_slow(line, 0, NOW)
    if fast is not None:
        assert fast == slow


# --- the native batch fast path -------------------------------------------------------------


def agrees_with_decode(payloads: list[bytes]) -> formats.PlainPoints:
    """native_points gives, for each plain point, what decode() gives (one sample, no error)."""
    plain = formats.native_points(payloads)
    assert sorted(plain.index + plain.other) == list(range(len(payloads)))
    assert plain.index == sorted(plain.index) and plain.other == sorted(plain.other)
    columns = zip(plain.index, plain.names, plain.tags, plain.ts, plain.values, strict=True)
    for i, name, tags, ts, value in columns:
        expected = Decoded([Sample(name, tags, ts, {"": value})], [])
        assert decode(payloads[i], "native") == expected
        assert type(ts) is float and type(value) is float
    return plain


def test_native_points_takes_plain_records_and_leaves_the_rest_to_decode():
    plain_ones = [
        b'{"stream":"web-1.cpu","ts":1700000000,"value":0.73}',
        b'{"stream": "a", "ts": 1700000000123, "value": 5}',  # milliseconds, an int value
        b'{"value": -1.5, "ts": 1.5, "stream": "a", "note": "x"}',  # other members ignored
        b'{"stream":"a","ts":1,"value":1,"tags":{"dc":"fra","a":""}}',
        b'{"stream":"a","ts":1,"value":1,"tags":null}\n',  # a trailing newline
        b'{"stream":"a{b}","ts":-62135596800,"value":1e308}',
    ]
    other_ones = [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[1]",
        b'{"stream":"a","ts":1,"value":1}\n{"stream":"a","ts":2,"value":2}',
        b'{"stream":\n"abc"\n,"ts":1,"value":2}',  # decode() reads line 2 on its own
        b'{"stream":"a","ts":"2024-01-01T00:00:00Z","value":1}',  # RFC 3339
        b'{"stream":"a","ts":1700000000000000,"value":1}',  # microseconds
        b'{"stream":"a","ts":-1e11,"value":1}',
        b'{"stream":"a","ts":true,"value":1}',
        b'{"stream":"a","ts":1,"value":true}',
        b'{"stream":"a","ts":1,"value":"1"}',
        b'{"stream":"","ts":1,"value":1}',
        b'{"stream":"a","ts":1,"value":1,"values":{"x":1}}',
        b'{"stream":"a","ts":1,"values":{"x":1}}',
        b'{"stream":"a","ts":1,"value":1,"tags":{"dc":1}}',
        b'{"stream":"a","ts":1,"value":1,"tags":{"":"x"}}',
    ]
    payloads = [p for pair in zip(plain_ones, other_ones, strict=False) for p in pair]
    payloads += other_ones[len(plain_ones) :]
    plain = agrees_with_decode(payloads)
    assert [payloads[i] for i in plain.index] == plain_ones
    assert [payloads[i] for i in plain.other] == other_ones
    assert plain.tags[3] == "{dc=fra}" and plain.ts[1] == 1_700_000_000.123
    assert formats.native_points([memoryview(plain_ones[0])]).other == [0]  # bytes only


NUMBERS = st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats(
    allow_nan=False, allow_infinity=False
)
PLAIN_KEYS = st.sampled_from(["stream", "ts", "value", "values", "tags", "x"])
PLAIN_LIKE = st.builds(
    lambda base, changes, dropped: {k: v for k, v in (base | changes).items() if k not in dropped},
    st.fixed_dictionaries(
        {
            "stream": st.sampled_from(["s", "a{b}", "é"]),
            "ts": st.sampled_from([1, -1e11, 1e11, 1e14 - 1, 1e14, 1.5, -62135596801]) | NUMBERS,
            "value": NUMBERS,
        },
        optional={"tags": st.dictionaries(st.sampled_from(["a", "", "b"]), st.text(max_size=2))},
    ),
    st.dictionaries(PLAIN_KEYS, JSON_DOCUMENTS, max_size=2) | st.just({}),
    st.sets(PLAIN_KEYS, max_size=1),
)


@settings(max_examples=400)
@given(st.lists(PLAIN_LIKE, max_size=6), st.sampled_from([b"", b"\n", b" ", b"\n\n"]))
def test_native_points_agrees_with_decode(documents, end):
    agrees_with_decode([orjson.dumps(doc) + end for doc in documents])


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), max_size=4))
def test_native_points_agrees_with_decode_on_arbitrary_bytes(payloads):
    agrees_with_decode(payloads)


# --- scan_native: the simplest plain points straight from the bytes -------------------------


def scan_agrees(payloads: list[bytes]) -> formats.ScannedPoints:
    """Each point scan_native takes is native_points' point of that message, bit for bit,
    under the stream id its name gives; it takes only untagged points of names that need no
    escaping, and leaves every other message (in order) to native_points and decode."""
    scanned = formats.scan_native(payloads, 1024)
    index = scanned.index.tolist()
    assert sorted(index + scanned.other) == list(range(len(payloads)))
    assert index == sorted(index) and scanned.other == sorted(scanned.other)
    plain = formats.native_points(payloads)
    columns = zip(plain.names, plain.tags, plain.ts, plain.values, strict=True)
    by_message = dict(zip(plain.index, columns, strict=True))
    start = 0
    for k, i in enumerate(index):
        end = int(scanned.id_ends[k])
        name, tags, ts, value = by_message[i]
        assert bytes(scanned.ids[start:end]).decode() == formats.stream_id(name, "", "") == name
        assert tags == ""
        assert math.copysign(1, scanned.ts[k]) == math.copysign(1, ts) and scanned.ts[k] == ts
        assert math.copysign(1, scanned.values[k]) == math.copysign(1, value)
        assert scanned.values[k] == value
        start = end
    return scanned


def test_scan_native_takes_the_simplest_records_and_leaves_the_rest():
    taken = [
        b'{"stream":"web-1.cpu","ts":1700000000,"value":0.73}',
        b'{"stream": "a", "ts": 1700000000123, "value": 5}\n',  # ms, an int, a newline at the end
        b' {\t"value" : -1.5e-3 ,"ts":1.5,\r"stream":"a"} ',  # any order, JSON whitespace
        b'{"stream":"a","ts":-62135596800,"value":-0}',  # the integer -0 is 0
        b'{"stream":"a","ts":1e3,"value":-0.0}',
        b'{"stream":"a","ts":1700000000.1234567,"value":0.30000000000000004}',  # 17 digits
        b'{"stream":"a","ts":1,"value":123456789012345678}',  # 18 digits: float() rounds
        b'{"stream":"a","ts":1,"value":1234567890123456789012.5}',  # past 18: parsed as text
    ]
    left = [
        b"",
        b"{}",
        b'{"stream":"a","ts":1,"value":1,"tags":null}',  # tags: native_points' to read
        b'{"stream":"a","ts":1,"value":1,"note":"x"}',  # another member
        b'{"stream":"a","ts":1,"value":1,"value":2}',  # a member twice
        b'{"stream":"a{b}","ts":1,"value":1}',  # an id that escapes braces
        b'{"stream":"\\u0061","ts":1,"value":1}',  # an escape
        b'{"stream":"\xc3\xa9","ts":1,"value":1}',  # not ASCII
        b'{"stream":"","ts":1,"value":1}',
        b'{"stream":"a","ts":01,"value":1}',  # not JSON
        b'{"stream":"a","ts":1,"value":1.}',
        b'{"stream":"a","ts":1,"value":1,}',
        b'{"stream":"a","ts":1,"value":1}x',
        b'{"stream":"a","ts":1,\n"value":1}',  # a newline inside
        b'{"stream":"a","ts":1,"value":true}',
        b'{"stream":"a","ts":1,"value":"1"}',
        b'{"stream":"a","ts":1,"value":12345678901234567890}',  # may not fit 64 bits
        b'{"stream":"a","ts":1,"value":1e400}',
        b'{"stream":"a","ts":1,"value":1.7976931348623157e308}',  # past 1e300: left
        b'{"stream":"a","ts":1,"value":5e-324}',  # subnormal
        b'{"stream":"a","ts":1700000000000000,"value":1}',  # microseconds
        b'{"stream":"a","ts":1700000000000000.5,"value":1}',  # so, read as text
        b'{"stream":"a","ts":-1e11,"value":1}',
        b'{"stream":"' + b"x" * 1025 + b'","ts":1,"value":1}',  # longer than the limit
    ]
    payloads = [p for pair in zip(taken, left, strict=False) for p in pair] + left[len(taken) :]
    scanned = scan_agrees(payloads)
    assert [payloads[i] for i in scanned.index.tolist()] == taken
    assert [payloads[i] for i in scanned.other] == left
    assert scanned.ts[1] == 1_700_000_000.123 and scanned.values[6] == 1.2345678901234568e17
    assert formats.scan_native([], 1024).index.size == 0
    assert formats.scan_native(["not bytes"], 1024).other == [0]  # type: ignore[list-item]


def test_scan_native_reads_numbers_as_a_correct_parser_does():
    """Every finite double, written as orjson writes it (shortest round trip, up to 17
    digits), and decimal texts of up to 19 digits come back exactly."""
    rng = np.random.default_rng(5)
    doubles = rng.integers(0, 2**64, 20_000, dtype=np.uint64).view(np.float64)
    texts = [orjson.dumps(v) for v in doubles[np.isfinite(doubles)].tolist()]
    for _ in range(20_000):
        digits = str(int(rng.integers(1, 10 ** int(rng.integers(1, 20)), dtype=np.uint64)))
        at = int(rng.integers(0, len(digits) + 1))
        text = digits[:at] + "." + digits[at:] if 0 < at < len(digits) else digits
        texts.append(f"{text}e{int(rng.integers(-330, 301))}".encode())
    payloads = [b'{"stream":"s","ts":1,"value":' + t + b"}" for t in texts]
    scanned = scan_agrees(payloads)
    assert scanned.index.size > 0.95 * len(payloads)  # only subnormals and overflows left


@settings(max_examples=400)
@given(st.lists(PLAIN_LIKE, max_size=6), st.sampled_from([b"", b"\n", b" ", b"\n\n", b"\t\r"]))
def test_scan_native_agrees_with_native_points(documents, end):
    scan_agrees([orjson.dumps(doc) + end for doc in documents])


@settings(max_examples=400)
@given(
    st.lists(
        st.builds(
            lambda v, ts: b'{"stream":"s","ts":' + ts + b',"value":' + v + b"}",
            st.from_regex(rb"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?\Z"),
            st.sampled_from([b"1", b"1700000000.5", b"1700000000123", b"1e11", b"99999999999.99"]),
        ),
        max_size=8,
    )
)
def test_scan_native_agrees_on_any_json_number(payloads):
    scan_agrees(payloads)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=60), max_size=4))
def test_scan_native_agrees_on_arbitrary_bytes(payloads):
    scan_agrees(payloads)
