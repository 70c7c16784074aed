"""Kafka mode: clients, topics, the changelog of per-stream state, and the models topic."""
