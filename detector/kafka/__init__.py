"""Kafka mode: clients, topics, the changelog of per-stream state, the models topic, the
outbox of records not yet acknowledged, and the default partitioner's choice for a key."""
