"""The local Apache Kafka broker serves kafka-python the way the ingest service will use it."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

if TYPE_CHECKING:
    # Imported for annotations only: importing the module before pytest_plugins registers it
    # would keep pytest from rewriting its asserts.
    from tests.support.kafka_broker import KafkaBroker

# Registers the `kafka_broker` fixture until tests/conftest.py does; a plugin, unlike an imported
# fixture, does not trip ruff's F811 on every test that takes the fixture as a parameter.
pytest_plugins = ("tests.support.kafka_broker",)

PARTITIONS = 6
MESSAGES = 10_000
# Bounds on reading a known number of records back; generous for a busy 2-core machine.
CONSUME_TIMEOUT_S = 30
POLL_TIMEOUT_MS = 500
PRODUCE_TIMEOUT_S = 30


def produce(broker: KafkaBroker, topic: str, keys: range) -> Counter[int]:
    """Produce one small record per key, acks=all, and return how many went to each partition."""
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5, batch_size=64 * 1024
    )
    try:
        futures = [producer.send(topic, key=b"%d" % key, value=b"event-%d" % key) for key in keys]
        producer.flush(timeout=PRODUCE_TIMEOUT_S)
        return Counter(future.get(timeout=PRODUCE_TIMEOUT_S).partition for future in futures)
    finally:
        producer.close()


def consume_all(broker: KafkaBroker, topic: str, expected_total: int) -> dict[int, list[bytes]]:
    """Read every partition from offset 0 with manual assignment until `expected_total` records."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    try:
        assignment = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)
        values: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        total = 0
        deadline_s = time.monotonic() + CONSUME_TIMEOUT_S
        while total < expected_total and time.monotonic() < deadline_s:
            for tp, records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).items():
                values[tp.partition].extend(record.value for record in records)
                total += len(records)
        assert total == expected_total, f"read {total} of {expected_total} records in {CONSUME_TIMEOUT_S} s"
        return values
    finally:
        consumer.close()


def test_ten_thousand_records_over_six_partitions_read_back_exactly(kafka_broker: KafkaBroker) -> None:
    """Pins produce → manual-assignment consume: counts per partition equal end offsets, no record lost."""
    topic = "roundtrip"
    kafka_broker.create_topic(topic, PARTITIONS)

    produced = produce(kafka_broker, topic, range(MESSAGES))
    consumed = consume_all(kafka_broker, topic, MESSAGES)

    assert sum(produced.values()) == MESSAGES
    assert len(produced) == PARTITIONS, f"keys hashed onto only {sorted(produced)}"
    assert {p: len(v) for p, v in consumed.items()} == dict(produced)
    assert kafka_broker.end_offsets(topic) == dict(produced)
    values = sorted(value for values in consumed.values() for value in values)
    assert values == sorted(b"event-%d" % key for key in range(MESSAGES))


def test_records_survive_a_broker_restart_and_traffic_resumes(kafka_broker: KafkaBroker) -> None:
    """Pins durability across stop/start of the broker process: old records stay, new ones append."""
    topic = "restart"
    kafka_broker.create_topic(topic, PARTITIONS)
    before = produce(kafka_broker, topic, range(1_000))

    kafka_broker.restart()

    assert kafka_broker.end_offsets(topic) == dict(before)
    after = produce(kafka_broker, topic, range(1_000, 2_000))
    consumed = consume_all(kafka_broker, topic, 2_000)
    assert {p: len(v) for p, v in consumed.items()} == dict(before + after)
    assert kafka_broker.end_offsets(topic) == dict(before + after)
