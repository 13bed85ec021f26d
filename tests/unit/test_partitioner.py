"""The fast partitioner picks exactly the partition aiokafka's (and Java's) default does."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference

from orion_streams.partitioner import Murmur2Partitioner, murmur2, partition_for


def test_murmur2_equals_the_reference_for_keys_of_every_length() -> None:
    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(n)) for n in range(0, 70) for _ in range(20)]
    keys += [str(uuid.UUID(int=rng.getrandbits(128))).encode() for _ in range(500)]
    keys += [b"SKU-001", "Ünïcödé-sku".encode()]
    for key in keys:
        assert murmur2(key) == reference(key), key


def test_the_partitioner_and_partition_for_agree_with_the_default_partitioner() -> None:
    partitions = list(range(12))
    for i in range(2000):
        key = f"order-{i}"
        expected = DefaultPartitioner()(key.encode(), partitions, partitions)
        assert Murmur2Partitioner()(key.encode(), partitions, partitions) == expected
        assert partition_for(key, 12) == expected
    assert Murmur2Partitioner()(None, partitions, [3]) == 3
