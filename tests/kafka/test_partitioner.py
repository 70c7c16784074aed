"""The jitted key partitioner picks what Kafka's default partitioner picks."""

from __future__ import annotations

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.kafka.partitioner import key_partitions, murmur2

# Kafka's own test vectors (clients UtilsTest.testMurmur2), as signed Java ints.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def _jitted(key: bytes) -> int:
    return int(murmur2(np.frombuffer(key, np.uint8), 0, len(key)))


@pytest.mark.parametrize(("key", "signed"), JAVA_MURMUR2.items())
def test_murmur2_equals_the_java_clients(key: bytes, signed: int) -> None:
    assert _jitted(key) == signed & 0xFFFFFFFF


@given(st.binary(max_size=64))
def test_murmur2_equals_aiokafkas(key: bytes) -> None:
    assert _jitted(key) == reference_murmur2(key)


@settings(deadline=None)  # the first example loads the jitted partitioner (slow on a busy host)
@given(st.lists(st.binary(max_size=40), max_size=50), st.integers(1, 64))
def test_key_partitions_equal_the_default_partitioners(keys: list[bytes], n: int) -> None:
    every = list(range(n))
    expected = [DefaultPartitioner()(key, every, every) for key in keys]
    got = key_partitions(keys, n)
    assert got.dtype == np.int64
    assert got.tolist() == expected


def test_key_partitions_needs_a_partition() -> None:
    with pytest.raises(ValueError, match="n_partitions is 0"):
        key_partitions([b"a"], 0)
