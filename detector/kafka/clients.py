"""aiokafka clients built from ``[kafka]``: one place for addresses, security and timeouts."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from detector.config import KafkaSettings


def connection_options(k: KafkaSettings) -> dict[str, Any]:
    """Options every client shares: brokers, identity, TLS and SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "request_timeout_ms": k.request_timeout_ms,
        "retry_backoff_ms": int(k.retry_backoff_s * 1000),
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        password = k.ssl_password.get_secret_value()
        options["ssl_context"] = create_ssl_context(
            cafile=k.ssl_cafile or None,
            certfile=k.ssl_certfile or None,
            keyfile=k.ssl_keyfile or None,
            password=password or None,
        )
    if k.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = k.sasl_mechanism
        options["sasl_plain_username"] = k.sasl_username
        options["sasl_plain_password"] = k.sasl_password.get_secret_value()
    return options


def group_consumer(k: KafkaSettings, max_records: int) -> AIOKafkaConsumer:
    """The input consumer: a group member with manual commits (offsets follow checkpoints)."""
    return AIOKafkaConsumer(
        **connection_options(k),
        group_id=k.group_id,
        group_instance_id=k.group_instance_id or None,
        enable_auto_commit=False,
        auto_offset_reset=k.auto_offset_reset,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=k.heartbeat_interval_ms,
        max_poll_interval_ms=k.max_poll_interval_ms,
        fetch_max_wait_ms=k.fetch_max_wait_ms,
        max_poll_records=max_records,
        # A deleted and re-created input topic (or added partitions) is noticed, and the
        # group rebalances onto it, within this time (30 s; Kafka's default is 5 minutes).
        metadata_max_age_ms=k.metadata_max_age_ms,
        # Input written transactionally by others is read once committed; aborted never.
        isolation_level="read_committed",
    )


def reader(k: KafkaSettings) -> AIOKafkaConsumer:
    """A consumer outside any group, for the changelog and models topics (assign + seek)."""
    return AIOKafkaConsumer(
        **connection_options(k),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=k.fetch_max_wait_ms,
    )


def producer(k: KafkaSettings, transactional_id: str | None = None) -> AIOKafkaProducer:
    """acks=all and idempotent: an acknowledged record is on every in-sync replica, once."""
    return AIOKafkaProducer(
        **connection_options(k),
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
        linger_ms=5,
        max_batch_size=k.max_batch_bytes,
        compression_type=None,
    )


def admin(k: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(k))
