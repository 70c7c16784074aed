"""End-to-end Kafka throughput and latency of `detector run`, against a bare consumer loop.

Question (from the issue): how many points per second does the daemon take from a pre-filled
topic (1,000,000 points, 10,000 streams, 4 partitions) through decoding, scoring and alert
production, compared with a bare aiokafka consumer loop that only reads and decodes the same
topic, measured in the same run? Goal: daemon >= 0.8 of the bare loop. And what is the latency
from append to alert, p50 and p99, at a steady input rate of half the measured maximum?

Phases, in this order:

1. Broker: ``--bootstrap HOST:PORT``, or one started here with deploy/kafka/kafka.sh in a
   temporary directory and stopped at the end.
2. Pre-fill a fresh input topic (4 partitions) with ``--points`` native JSON records
   ``{"stream": "host-00042.cpu", "ts": ..., "value": ...}``, key = stream id (partitioned by
   the key, as a producer does by default), round robin over ``--streams`` streams, 60 s
   apart in ``ts``, one point in ``--spike-every`` a spike of +50 standard deviations. Every
   partition starts with a *start marker* and ends with an *end marker*: 40 points of a
   stream of its own (its key hashes to that partition) whose last 6 points swing +-50
   standard deviations, so each marker stream alerts (checked: 200 of 200 seeds through the
   pipeline; a lone spike on so young a stream scored below the threshold for 5-25 %).
3. Warm-up daemon (``--no-warmup`` skips it): the real daemon on a small topic of its own
   until its end markers alert, then SIGTERM. It fills the numba cache and runs every code
   path (batch, alerts, final checkpoint) once; its start-up time is reported, not counted.
4. For each of ``--rounds`` rounds:
   a. bare loop, in this process: an AIOKafkaConsumer built by
      ``detector.kafka.clients.group_consumer`` (the daemon's own fetch settings and
      ``max_poll_records``) in a fresh group, ``getmany(timeout_ms=500, max_records=run.
      batch_size)`` as the daemon calls it, ``detector.io.formats.decode(value, "native")``
      for every record (the per-record decoder the issue names; the daemon decodes each
      batch with ``formats.scan_native`` and ``formats.native_points``, the same samples
      for less, and the rest with ``decode``: see bench/README.md), until every partition
      is read to its end; then the same loop decoding each batch as the daemon does
      (``scan_native``, ``native_points`` for what it leaves, ``decode`` for the rest), for
      the like-for-like ratio printed beside the headline;
   b. daemon: ``python -m detector run --config FILE`` as a subprocess (source, sink and
      dead letters in Kafka, retraining off, a fresh group, so a fresh changelog), while
      this process reads the alerts topic.
   Both are timed from the end of their first batch to the end of the topic, which leaves
   out process start-up, the group join and the first batch (numba cache load). The bare
   loop notes the time after decoding its first non-empty ``getmany``, and counts the
   records after it exactly. The daemon's clock starts when the first start-marker alert
   arrives here (the first batch was processed and its alerts sent) and stops when the
   last of the 4 end-marker alerts arrives (every partition processed to its end); its
   count is all records minus ``run.batch_size`` (the most the first batch can hold), so
   the daemon's rate is at most 0.1 % low at 1M points. The alert's trip from the daemon
   to this process (about 10 ms: the producer's linger, the broker, a fetch) is paid at
   both ends and mostly cancels; over a window of seconds it does not matter, over the
   0.1-0.2 s windows of ``--quick`` it does (quick figures are a smoke test, not a result).
   Consumed CPU (user + system) over the timed window is reported for both: near 1.0 core
   means the loop is CPU-bound on its one Python thread. Headline figures are medians over
   the rounds; the ratio is the median of the per-round ratios.
5. Latency, with the last round's daemon still running: a producer here appends at
   ``--latency-rate`` (default: half the measured daemon rate, the median over rounds) for
   ``--latency-seconds``, round robin over the same streams, with the same spikes. Each
   point's ``ts`` carries its append time: ``ts = base + scale * (t_append - t0)`` with
   ``scale`` chosen so that every stream still sees one point per 60 s of ``ts`` (no gap,
   no warm-up again), so an alert's own ``ts`` gives the append time of the point that
   caused it (the producer wakes every 5 ms and stamps that tick's points with the time
   just before it builds and sends them). Latency = the alert's arrival here - that append
   time (both on this process's clock). Then end markers again, and the time from the last
   append to their alerts ("drain") says whether the daemon kept up. The daemon serves
   /metrics (``http.listen = 127.0.0.1:0``); its batch-duration and event-loop-lag
   histograms over the latency phase are reported, to tell a slow batch from a stall
   outside the batch path. ``--dump-latency FILE`` writes every alert's append time and
   latency.
6. SIGTERM; the daemon's final checkpoint; its group's committed offsets must equal the
   topic's end offsets (checked, reported).

The daemon checkpoints every ``--checkpoint-s`` (default 60, the daemon's default), so no
checkpoint falls into the timed window of a 1M-point run; ``--checkpoint-s 1`` puts one
every second into it (each one writes every changed stream's state to the changelog).
Scoring runs with ``scoring.warmup = 20`` (``--warmup``) instead of 100, so that the
streams' spikes (each stream has only 100 points at 1M/10k) raise alerts.

The daemon runs with the directory above bench/ as its working directory, so it imports that
tree's ``detector``; the bare loop imports whatever ``detector`` this interpreter finds (set
PYTHONPATH to the same tree when running from a copy). Every topic and group is named
``kbench-<random>-...``; the topics are deleted at the end unless ``--keep-topics``. The
daemon logs and configs stay in a temporary directory named in the summary (``logs``).

    python bench/kafka_e2e.py                 # 1M points, 10k streams, 20 s of latency
    python bench/kafka_e2e.py --quick         # 50k points, 1k streams, 5 s of latency
    #   --bootstrap HOST:PORT --points --streams --partitions --batch-size --rounds
    #   --latency-seconds --latency-rate --checkpoint-s --warmup --spike-every --no-warmup
    #   --profile FILE (cProfile the measured daemon) --dump-latency FILE --keep-topics
    #   --seed --json (print the JSON summary only)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiokafka
import numba
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from machine import cpu_model, git_revision  # bench/ is the script's directory

from detector.config import KafkaSettings
from detector.io.formats import decode, native_points, scan_native
from detector.kafka import clients
from detector.kafka.topics import wait_for_leaders
from detector.stream.pipeline import MAX_STREAM_ID_BYTES

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
GOAL_RATIO = 0.8  # daemon points/s over bare-loop points/s, from the issue
T0 = 1_700_000_000  # ts of every stream's first point
DT = 60  # seconds of ts between two points of a stream
MARKER_POINTS = 40  # points of a marker stream
MARKER_SWINGS = 6  # its last points: +50, -50, +50, ... standard deviations
NOISE_SD = 1.0
SPIKE_SD = 50.0
POLL_MS = 500  # detector/service/kafka_runner.py _POLL_MS
WAIT_S = 600.0  # bound on every wait for the daemon
HISTOGRAMS = ("detector_batch_duration_seconds", "detector_event_loop_lag_seconds")


# --------------------------------------------------------------------------- the data


def stream_id(i: int) -> str:
    return f"host-{i:05d}.cpu"


def partition_of(key: bytes, partitions: int) -> int:
    """aiokafka's (and the Java client's) default partitioner for a keyed record."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def marker_streams(tag: str, partitions: int) -> list[str]:
    """One marker stream id per partition whose key hashes to that partition."""
    out: list[str | None] = [None] * partitions
    i = 0
    while any(s is None for s in out):
        name = f"bench-{tag}-{i}"
        p = partition_of(name.encode(), partitions)
        if out[p] is None:
            out[p] = name
        i += 1
    return [s for s in out if s is not None]


def level(s: int) -> float:
    return 100.0 + 10.0 * (s % 7)


def point(stream: str, ts: str, value: float) -> bytes:
    """A native record, as compact as orjson writes it (about 8x faster to build here)."""
    return ('{"stream":"%s","ts":%s,"value":%.4f}' % (stream, ts, value)).encode()  # noqa: UP031


def marker_records(
    names: list[str], rng: np.random.Generator
) -> Iterator[tuple[int, bytes, bytes]]:
    swings = [0.0] * (MARKER_POINTS - MARKER_SWINGS)
    swings += [SPIKE_SD * (1 - 2 * (i % 2)) for i in range(MARKER_SWINGS)]
    for p, name in enumerate(names):
        noise = rng.normal(0.0, NOISE_SD, MARKER_POINTS).tolist()
        for k in range(MARKER_POINTS):
            yield p, name.encode(), point(name, str(T0 + DT * k), 10.0 + noise[k] + swings[k])


@dataclass
class Layout:
    """The streams: ids, keys, partitions (by key) and levels."""

    points: int
    streams: int
    partitions: int
    spike_every: int
    ids: list[str] = field(init=False)
    keys: list[bytes] = field(init=False)
    part: list[int] = field(init=False)
    levels: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [stream_id(s) for s in range(self.streams)]
        self.keys = [i.encode() for i in self.ids]
        self.part = [partition_of(k, self.partitions) for k in self.keys]
        self.levels = [level(s) for s in range(self.streams)]

    @property
    def per_stream(self) -> int:
        return -(-self.points // self.streams)

    def noise(self, rng: np.random.Generator, n: int) -> tuple[list[float], int]:
        """n deviations from the level (spikes included) and the number of spikes."""
        spikes = rng.random(n) < 1.0 / self.spike_every
        noise = rng.normal(0.0, NOISE_SD, n) + np.where(spikes, SPIKE_SD, 0.0)
        return noise.tolist(), int(spikes.sum())

    def records(
        self, first: int, noise: list[float], ts: Callable[[int, int], str]
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """Points ``first``, ``first + 1``, ... round robin over the streams; point j goes to
        stream j % streams with ``ts(j, k)``, k = j // streams its index in the stream."""
        S, ids, keys, part, levels = self.streams, self.ids, self.keys, self.part, self.levels
        for i, dev in enumerate(noise):
            j = first + i
            s = j % S
            yield part[s], keys[s], point(ids[s], ts(j, j // S), levels[s] + dev)

    def bulk(self, rng: np.random.Generator) -> Iterator[tuple[int, bytes, bytes]]:
        """``points`` records, round robin over the streams, ts 60 s apart per stream."""
        chunk = 10_000
        for first in range(0, self.points, chunk):
            noise, _ = self.noise(rng, min(chunk, self.points - first))
            yield from self.records(first, noise, lambda _j, k: str(T0 + DT * k))


# --------------------------------------------------------------------------- Kafka helpers


def send_batches(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[int, bytes, bytes]]
) -> Iterator[Any]:
    """Coroutines sending ``records`` (partition, key, value) as one batch per partition and
    fill; await each in order (each returns the batch's delivery future)."""
    open_: dict[int, Any] = {}
    for p, key, value in records:
        batch = open_.get(p)
        if batch is None:
            batch = open_[p] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            yield producer.send_batch(batch, topic, partition=p)
            batch = open_[p] = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    for p, batch in open_.items():
        yield producer.send_batch(batch, topic, partition=p)


async def produce(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[int, bytes, bytes]]
) -> int:
    n = 0
    futures = []

    def counted() -> Iterator[tuple[int, bytes, bytes]]:
        nonlocal n
        for r in records:
            n += 1
            yield r

    for send in send_batches(producer, topic, counted()):
        futures.append(await send)
        if len(futures) >= 256:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    return n


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        await wait_for_leaders(admin, names)
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    async with consumer:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        end = await consumer.end_offsets(tps)
    return {tp.partition: o for tp, o in end.items()}


async def committed_offsets(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in got.items()}


WATCHERS: list[AlertWatcher] = []


class AlertWatcher:
    """Reads an alerts topic from its start in the background; notes each alert's arrival."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.alerts: list[tuple[float, str, float]] = []  # (arrival, stream, ts)
        self.pid: int | None = None  # the daemon's: its CPU seconds are noted at each arrival
        self.cpu: dict[float, float] = {}  # arrival -> the daemon's CPU seconds then
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_beginning(*self.tps)
        self._task = asyncio.create_task(self._run())
        WATCHERS.append(self)

    async def _run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=200)
            arrival = time.time()
            if batches and self.pid is not None:
                with contextlib.suppress(OSError):
                    self.cpu[arrival] = cpu_seconds(self.pid)
            for records in batches.values():
                for r in records:
                    doc = orjson.loads(r.value)
                    self.alerts.append((arrival, doc["stream"], float(doc["ts"])))
            if batches:
                self._changed.set()

    async def wait_for(
        self, streams: set[str], proc: subprocess.Popen[bytes], log: Path, within: float
    ) -> list[float]:
        """Arrival of the first alert of each of ``streams`` (in the order of arrival)."""
        deadline = time.monotonic() + within
        while True:
            seen: dict[str, float] = {}
            for arrival, stream, _ts in self.alerts:
                if stream in streams and stream not in seen:
                    seen[stream] = arrival
            if len(seen) == len(streams):
                return sorted(seen.values())
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited ({proc.returncode}):\n{tail(log)}")
            if time.monotonic() > deadline:
                missing = sorted(streams - set(seen))
                raise SystemExit(f"no alert of {missing} within {within:.0f} s:\n{tail(log)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


# --------------------------------------------------------------------------- processes


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def histograms(url: str, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Cumulative bucket counts {le: count} of the named histograms on a /metrics page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    out: dict[str, dict[str, float]] = {n: {} for n in names}
    for line in text.splitlines():
        for n in names:
            if line.startswith(f"{n}_bucket{{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[n][le] = float(line.rsplit(" ", 1)[1])
    return out


def slow_counts(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], over: str
) -> dict[str, Any]:
    """Per histogram: observations in between, and how many of them exceeded ``over`` s."""
    out: dict[str, Any] = {}
    for name, buckets in after.items():
        total = buckets.get("+Inf", 0.0) - before.get(name, {}).get("+Inf", 0.0)
        upto = buckets.get(over, 0.0) - before.get(name, {}).get(over, 0.0)
        slower = [
            le
            for le in buckets
            if le != "+Inf" and buckets[le] - before.get(name, {}).get(le, 0.0) < total
        ]
        out[name.removeprefix("detector_")] = {
            "count": int(total),
            f"over_{over}s": int(total - upto),
            "largest_le_exceeded": max(slower, key=float) if slower else None,
        }
    return out


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(line)
            if isinstance(doc, dict) and doc.get("event") == event:
                out.append(doc)
    return out


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def kafka_options(bootstrap: str) -> dict[str, Any]:
    """[kafka] keys shared by the daemon and the bare loop (fetch settings: defaults)."""
    return {"bootstrap_servers": bootstrap, "client_id": "kafka-e2e"}


def write_config(path: Path, args: argparse.Namespace, names: dict[str, str]) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "run": {
            "source": "kafka",
            "sink": "kafka",
            "dead_letter": "kafka",
            "batch_size": args.batch_size,
            "instance": "kafka-e2e",
        },
        "state": {"interval_s": args.checkpoint_s, "grace_s": 120.0},
        "scoring": {"warmup": args.warmup},
        "kafka": {
            **kafka_options(args.bootstrap),
            "group_id": names["group"],
            "input_topic": names["input"],
            "alerts_topic": names["alerts"],
            "dead_letter_topic": names["dead_letter"],
            "models_topic": names["models"],
            "partitions": args.partitions,
        },
        "retraining": {"enabled": False},
        "log": {"format": "json"},
        "http": {"listen": "127.0.0.1:0"},  # /metrics: batch durations and loop lag
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


STARTED: list[Daemon] = []  # killed before the topics are deleted, whatever happened


@dataclass
class Daemon:
    config: Path
    log: Path
    profile: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> Daemon:
        cmd = [sys.executable]
        if self.profile:
            cmd += ["-m", "cProfile", "-o", self.profile]
        cmd += ["-m", "detector", "run", "--config", str(self.config)]
        self._out = self.log.open("ab")
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._out, cwd=REPO)  # noqa: S603
        STARTED.append(self)
        return self

    def stop(self) -> tuple[int, float]:
        """SIGTERM, wait; (exit code, seconds from the signal to the exit)."""
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(WAIT_S)
        self._out.close()
        return code, time.monotonic() - t

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)


# --------------------------------------------------------------------------- phases


async def bare_loop(
    args: argparse.Namespace, topic: str, ends: dict[int, int], batch_decode: bool = False
) -> dict[str, Any]:
    """Read ``topic`` to ``ends`` and decode every record: per record with ``decode`` (the
    issue's bare loop) or, with ``batch_decode``, per batch as the daemon does
    (``scan_native``, ``native_points`` for what it leaves, then ``decode``)."""
    k = KafkaSettings(
        **kafka_options(args.bootstrap), group_id=f"{topic}-bare-{uuid.uuid4().hex[:6]}"
    )
    consumer = clients.group_consumer(k, args.batch_size)
    consumer.subscribe([topic])
    await consumer.start()
    position = dict.fromkeys(ends, 0)
    records = samples = counted = 0
    t0 = cpu0 = None
    started = time.monotonic()
    try:
        while any(position[p] < ends[p] for p in ends):
            batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=args.batch_size)
            n = 0
            for tp, recs in batches.items():
                payloads = [r.value if r.value is not None else b"" for r in recs]
                if batch_decode:
                    scanned = scan_native(payloads, MAX_STREAM_ID_BYTES)
                    samples += len(scanned.index)
                    if scanned.other:
                        plain = native_points(payloads, scanned.other)
                        samples += len(plain.names)
                        for i in plain.other:
                            samples += len(decode(payloads[i], "native").samples)
                else:
                    for payload in payloads:
                        samples += len(decode(payload, "native").samples)
                n += len(recs)
                if recs:
                    position[tp.partition] = recs[-1].offset + 1
            records += n
            if t0 is None:
                if n:
                    t0, cpu0 = time.perf_counter(), time.process_time()
            else:
                counted += n
            if time.monotonic() - started > WAIT_S:
                raise SystemExit(f"bare loop: topic not read within {WAIT_S:.0f} s")
        t1, cpu1 = time.perf_counter(), time.process_time()
    finally:
        await consumer.stop()
    assert t0 is not None and cpu0 is not None
    seconds = t1 - t0
    return {
        "records": records,
        "samples": samples,
        "timed_records": counted,
        "seconds": seconds,
        "points_per_s": counted / seconds,
        "cpu_cores": (cpu1 - cpu0) / seconds,
        "join_and_first_batch_s": t0 - started,  # perf_counter and monotonic: both monotonic
    }


async def run_daemon_until_markers(
    args: argparse.Namespace,
    names: dict[str, str],
    start_markers: list[str],
    end_markers: list[str],
    work: Path,
    label: str,
    profile: str | None = None,
) -> tuple[Daemon, AlertWatcher, dict[str, Any]]:
    """Start a daemon on names["input"]; return once every end marker alerted."""
    await create_topics(args.bootstrap, [names["alerts"]], args.partitions)
    watcher = AlertWatcher(args.bootstrap, names["alerts"], args.partitions)
    await watcher.start()
    config = write_config(work / f"{label}.toml", args, names)
    daemon = Daemon(config, work / f"{label}.log", profile).start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    watcher.pid = pid
    firsts = await watcher.wait_for(set(start_markers), daemon.proc, daemon.log, WAIT_S)
    lasts = await watcher.wait_for(set(end_markers), daemon.proc, daemon.log, WAIT_S)
    t0, t1 = firsts[0], lasts[-1]
    cpu0, cpu1 = watcher.cpu.get(t0, 0.0), watcher.cpu.get(t1, 0.0)
    return (
        daemon,
        watcher,
        {
            "startup_to_first_alert_s": t0 - daemon.started,
            "seconds": t1 - t0,
            "cpu_cores": (cpu1 - cpu0) / max(t1 - t0, 1e-6),
            "rss_mib": rss_mib(pid),
        },
    )


async def finish_daemon(
    args: argparse.Namespace, daemon: Daemon, watcher: AlertWatcher, names: dict[str, str]
) -> dict[str, Any]:
    await watcher.stop()
    code, stop_s = daemon.stop()
    final = log_events(daemon.log, "final_checkpoint_saved")
    ends = await end_offsets(args.bootstrap, names["input"], args.partitions)
    committed = await committed_offsets(args.bootstrap, names["group"])
    finished = log_events(daemon.log, "run_finished")
    return {
        "exit_code": code,
        "sigterm_to_exit_s": stop_s,
        "final_checkpoint_s": final[-1].get("seconds") if final else None,
        "final_checkpoint_states": final[-1].get("states") if final else None,
        "committed_at_end": all(committed.get(p, -1) == o for p, o in ends.items()),
        "counters": {
            k: finished[-1].get(k)
            for k in ("messages", "points", "alerts", "decode_errors", "out_of_order", "gap_resets")
        }
        if finished
        else None,
    }


async def warmup_daemon(args: argparse.Namespace, prefix: str, work: Path) -> dict[str, Any]:
    names = topic_names(f"{prefix}warm-")
    await create_topics(args.bootstrap, [names["input"]], args.partitions)
    starts = marker_streams("warm-start", args.partitions)
    ends = marker_streams("warm-end", args.partitions)
    rng = np.random.default_rng(args.seed + 1)
    small = Layout(2000, 100, args.partitions, 50)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks=1, max_batch_size=1 << 20)
    async with producer:
        await produce(producer, names["input"], marker_records(starts, rng))
        await produce(producer, names["input"], small.bulk(rng))
        await produce(producer, names["input"], marker_records(ends, rng))
    daemon, watcher, got = await run_daemon_until_markers(args, names, starts, ends, work, "warmup")
    try:
        done = await finish_daemon(args, daemon, watcher, names)
    finally:
        daemon.kill()
    return {"startup_to_first_alert_s": got["startup_to_first_alert_s"], **done}


def topic_names(prefix: str) -> dict[str, str]:
    return {
        "input": f"{prefix}input",
        "alerts": f"{prefix}alerts",
        "dead_letter": f"{prefix}dead-letter",
        "models": f"{prefix}models",
        "group": f"{prefix}group",
    }


async def latency_phase(
    args: argparse.Namespace,
    layout: Layout,
    names: dict[str, str],
    daemon: Daemon,
    watcher: AlertWatcher,
    rate: float,
) -> dict[str, Any]:
    S = layout.streams
    rng = np.random.default_rng(args.seed + 2)
    base_ts = T0 + DT * (layout.per_stream + 1)
    scale = DT * rate / S  # ts seconds per second of wall time: one point per stream per DT
    ends = marker_streams("lat-end", args.partitions)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks=1, max_batch_size=1 << 20)
    first_alert = len(watcher.alerts)
    url = next((e.get("url") for e in log_events(daemon.log, "http_listening")), None)
    before = await asyncio.to_thread(histograms, url, HISTOGRAMS) if url else {}
    assert daemon.proc is not None
    cpu0, own0 = cpu_seconds(daemon.proc.pid), time.process_time()
    async with producer:
        wall0 = time.time()
        sent = spikes = 0
        behind = 0
        futures = []
        while (now := time.time()) - wall0 < args.latency_seconds:
            due = min(int((now - wall0) * rate) - sent, S - 1)  # a stream at most once per tick
            behind = max(behind, int((now - wall0) * rate) - sent - due)
            if due > 0:
                ts = repr(base_ts + scale * (now - wall0))  # every point of this tick
                noise, n_spikes = layout.noise(rng, due)
                spikes += n_spikes
                recs = layout.records(sent, noise, functools.partial(same_ts, ts))
                for send in send_batches(producer, names["input"], recs):
                    futures.append(await send)
                sent += due
                if len(futures) > 1000:
                    for f in futures:
                        if f.done():
                            f.result()  # raises if a batch was not delivered
                    futures = [f for f in futures if not f.done()]
            await asyncio.sleep(0.005)
        last_append = time.time()
        await asyncio.gather(*futures)
        own1 = time.process_time()
        await produce(producer, names["input"], marker_records(ends, rng))
    elapsed = last_append - wall0
    lasts = await watcher.wait_for(set(ends), daemon.proc, daemon.log, WAIT_S)
    cpu1 = watcher.cpu.get(lasts[-1]) or cpu_seconds(daemon.proc.pid)
    pairs = [
        (wall0 + (ts - base_ts) / scale, arrival)
        for arrival, stream, ts in watcher.alerts[first_alert:]
        if stream.startswith("host-") and ts >= base_ts
    ]
    if args.dump_latency:  # one line per alert: seconds since the first append, latency
        text = "".join(f"{a - wall0:.4f} {arrival - a:.4f}\n" for a, arrival in sorted(pairs))
        await asyncio.to_thread(Path(args.dump_latency).write_text, text)
    latencies = sorted(arrival - appended for appended, arrival in pairs)
    return {
        "rate_target": rate,
        "rate_achieved": sent / elapsed,
        "seconds": elapsed,
        "points": sent,
        "spikes": spikes,
        "alerts": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "max_ms": 1000 * latencies[-1] if latencies else None,
        "drain_s": lasts[-1] - last_append,
        "producer_behind_max": behind,
        "producer_cpu_cores": (own1 - own0) / elapsed,
        "daemon_cpu_cores": (cpu1 - cpu0) / (lasts[-1] - wall0),
        "daemon_histograms": slow_counts(
            before, await asyncio.to_thread(histograms, url, HISTOGRAMS), "0.1"
        )
        if url
        else None,
    }


def same_ts(ts: str, _j: int, _k: int) -> str:
    return ts


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


# --------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    prefix = f"kbench-{uuid.uuid4().hex[:8]}-"
    work = Path(tempfile.mkdtemp(prefix="kafka-e2e-"))
    layout = Layout(args.points, args.streams, args.partitions, args.spike_every)
    summary: dict[str, Any] = {
        "benchmark": "kafka_e2e",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "numba": numba.__version__,
        "settings": {
            k: getattr(args, k)
            for k in (
                "points",
                "streams",
                "partitions",
                "batch_size",
                "rounds",
                "checkpoint_s",
                "warmup",
                "spike_every",
                "latency_seconds",
            )
        },
        "logs": str(work),
    }
    try:
        if not args.no_warmup:
            say("warm-up daemon (numba cache, every code path once) ...")
            summary["warmup_daemon"] = await warmup_daemon(args, prefix, work)
            startup = summary["warmup_daemon"]["startup_to_first_alert_s"]
            say(f"  start-up to first alert {startup:.1f} s (not counted)")

        names = topic_names(prefix)
        await create_topics(args.bootstrap, [names["input"]], args.partitions)
        starts = marker_streams("start", args.partitions)
        ends_m = marker_streams("end", args.partitions)
        say(f"pre-filling {names['input']}: {args.points:,} points, {args.streams:,} streams ...")
        t = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        producer = AIOKafkaProducer(
            bootstrap_servers=args.bootstrap, acks=1, max_batch_size=1 << 20
        )
        async with producer:
            n = await produce(producer, names["input"], marker_records(starts, rng))
            n += await produce(producer, names["input"], layout.bulk(rng))
            n += await produce(producer, names["input"], marker_records(ends_m, rng))
        ends = await end_offsets(args.bootstrap, names["input"], args.partitions)
        assert sum(ends.values()) == n, (ends, n)
        summary["topic"] = {"records": n, "end_offsets": ends, "fill_s": time.perf_counter() - t}
        say(f"  {n:,} records in {summary['topic']['fill_s']:.1f} s; per partition {ends}")

        rounds = []
        daemon: Daemon | None = None
        watcher: AlertWatcher | None = None
        run_names = names
        for r in range(args.rounds):
            say(f"round {r + 1}/{args.rounds}: bare loop ...")
            bare = await bare_loop(args, names["input"], ends)
            say(
                f"  bare   {bare['points_per_s']:>10,.0f} points/s  ({bare['timed_records']:,}"
                f" records in {bare['seconds']:.2f} s, {bare['cpu_cores']:.2f} cores)"
            )
            bare_batch = await bare_loop(args, names["input"], ends, batch_decode=True)
            say(
                f"  bare, batch decode {bare_batch['points_per_s']:>10,.0f} points/s"
                f"  ({bare_batch['cpu_cores']:.2f} cores)"
            )
            say(f"round {r + 1}/{args.rounds}: daemon ...")
            run_names = {
                **names,
                "alerts": f"{prefix}alerts-{r}",
                "dead_letter": f"{prefix}dead-letter-{r}",
                "group": f"{prefix}group-{r}",
            }
            last = r == args.rounds - 1
            daemon, watcher, got = await run_daemon_until_markers(
                args,
                run_names,
                starts,
                ends_m,
                work,
                f"daemon-{r}",
                args.profile if last else None,
            )
            timed = n - args.batch_size
            got["timed_records"] = timed
            got["points_per_s"] = timed / got["seconds"]
            say(
                f"  daemon {got['points_per_s']:>10,.0f} points/s  (~{timed:,} records in"
                f" {got['seconds']:.2f} s, {got['cpu_cores']:.2f} cores, RSS"
                f" {got['rss_mib'] or 0:.0f} MiB; start-up to first alert"
                f" {got['startup_to_first_alert_s']:.1f} s, not counted)"
            )
            rounds.append(
                {
                    "bare": bare,
                    "bare_batch": bare_batch,
                    "daemon": got,
                    "ratio": got["points_per_s"] / bare["points_per_s"],
                    "ratio_batch": got["points_per_s"] / bare_batch["points_per_s"],
                }
            )
            if not last:
                try:
                    got["finish"] = await finish_daemon(args, daemon, watcher, run_names)
                finally:
                    daemon.kill()
        summary["rounds"] = rounds
        bare_rate = statistics.median(x["bare"]["points_per_s"] for x in rounds)
        daemon_rate = statistics.median(x["daemon"]["points_per_s"] for x in rounds)
        ratio = statistics.median(x["ratio"] for x in rounds)
        summary.update(
            bare_points_per_s=bare_rate,
            bare_batch_points_per_s=statistics.median(
                x["bare_batch"]["points_per_s"] for x in rounds
            ),
            daemon_points_per_s=daemon_rate,
            ratio=ratio,
            ratio_batch=statistics.median(x["ratio_batch"] for x in rounds),
            goal_ratio=GOAL_RATIO,
            goal_met=ratio >= GOAL_RATIO,
        )

        assert daemon is not None and watcher is not None
        try:
            rate = args.latency_rate or daemon_rate / 2
            say(f"latency: {rate:,.0f} points/s for {args.latency_seconds:g} s ...")
            lat = await latency_phase(args, layout, run_names, daemon, watcher, rate)
            summary["latency"] = lat
            if lat["alerts"]:
                say(
                    f"  append->alert p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms,"
                    f" max {lat['max_ms']:.0f} ms over {lat['alerts']:,} alerts"
                    f" ({lat['spikes']:,} spikes in {lat['points']:,} points at"
                    f" {lat['rate_achieved']:,.0f}/s); drain {lat['drain_s']:.2f} s;"
                    f" daemon {lat['daemon_cpu_cores']:.2f} cores, producer"
                    f" {lat['producer_cpu_cores']:.2f}"
                )
            else:
                say("  no alerts in the latency phase")
            for name, h in (lat["daemon_histograms"] or {}).items():
                say(
                    f"  daemon {name}: {h['count']:,} observations, {h['over_0.1s']} over 0.1 s,"
                    f" largest bucket bound exceeded {h['largest_le_exceeded']} s"
                )
            summary["rounds"][-1]["daemon"]["finish"] = fin = await finish_daemon(
                args, daemon, watcher, run_names
            )
            say(
                f"  SIGTERM: exit {fin['exit_code']} after {fin['sigterm_to_exit_s']:.1f} s,"
                f" final checkpoint {fin['final_checkpoint_s']} s"
                f" ({fin['final_checkpoint_states']} states); committed offsets at the end:"
                f" {fin['committed_at_end']}"
            )
        finally:
            daemon.kill()
    finally:
        summary["loadavg_end"] = os.getloadavg()
        for started in STARTED:
            started.kill()  # a daemon whose topics are deleted spins on metadata errors
        for watcher_ in WATCHERS:
            with contextlib.suppress(Exception):
                await watcher_.stop()
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(args.bootstrap, prefix)
    return summary


def start_broker(directory: str) -> str:
    out = subprocess.run(  # noqa: S603
        [str(KAFKA_SH), "start", "--dir", directory, "--owner-pid", str(os.getpid())],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def stop_broker(directory: str) -> None:
    stop = [str(KAFKA_SH), "stop", "--dir", directory]
    subprocess.run(stop, capture_output=True, check=False)  # noqa: S603


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", help="HOST:PORT of a running broker (default: start one)")
    p.add_argument("--points", type=int, help="default 1,000,000 (--quick: 50,000)")
    p.add_argument("--streams", type=int, help="default 10,000 (--quick: 1,000)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=1024, help="run.batch_size (both sides)")
    p.add_argument("--rounds", type=int, default=3, help="bare loop + daemon, this many times")
    p.add_argument("--latency-seconds", type=float, help="default 20 (--quick: 5)")
    p.add_argument("--latency-rate", type=float, help="points/s (default: half the daemon's)")
    p.add_argument("--checkpoint-s", type=float, default=60.0, help="state.interval_s")
    p.add_argument("--warmup", type=int, default=20, help="scoring.warmup")
    p.add_argument("--spike-every", type=int, default=1000, help="one point in N is a spike")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up daemon")
    p.add_argument("--profile", help="cProfile the measured daemon into this file")
    p.add_argument("--dump-latency", help="write 'append_s latency_s' per alert to this file")
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="50k points, 1k streams, 5 s latency")
    p.add_argument("--json", action="store_true", help="print the JSON summary only")
    args = p.parse_args(argv)
    quick = {"points": 50_000, "streams": 1_000, "latency_seconds": 5.0}
    full = {"points": 1_000_000, "streams": 10_000, "latency_seconds": 20.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.points < args.streams or args.streams < 1:
        p.error("--points must be at least --streams (every stream needs points)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say: Callable[[str], None] = (lambda _line: None) if args.json else print
    broker_dir = None
    if not args.bootstrap:
        broker_dir = tempfile.mkdtemp(prefix="kafka-e2e-broker-")
        say(f"starting a broker in {broker_dir} ...")
        args.bootstrap = start_broker(broker_dir)
    try:
        summary = asyncio.run(bench(args, say))
    finally:
        if broker_dir is not None:
            stop_broker(broker_dir)
    summary["broker"] = "started here" if broker_dir else args.bootstrap
    if args.json:
        print(json.dumps(summary))
        return 0
    lat = summary.get("latency", {})
    verdict = "met" if summary["goal_met"] else "NOT met"
    print(json.dumps(summary))
    p50 = "-" if lat.get("p50_ms") is None else f"{lat['p50_ms']:.0f}"
    p99 = "-" if lat.get("p99_ms") is None else f"{lat['p99_ms']:.0f}"
    print(
        f"kafka_e2e {args.points:,} points {args.streams:,} streams {args.partitions} partitions:"
        f" bare {summary['bare_points_per_s']:,.0f} points/s, daemon"
        f" {summary['daemon_points_per_s']:,.0f} points/s, ratio daemon/bare"
        f" {summary['ratio']:.2f} (goal >= {GOAL_RATIO}: {verdict}); against a bare loop that"
        f" decodes by batch as the daemon does ({summary['bare_batch_points_per_s']:,.0f}"
        f" points/s): {summary['ratio_batch']:.2f};"
        f" latency at {lat.get('rate_achieved', 0):,.0f} points/s: p50 {p50} ms, p99 {p99} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
