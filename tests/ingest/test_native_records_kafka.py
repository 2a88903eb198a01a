"""A real KafkaConsumer with the native record decoder reads what stock kafka-python reads, from a real broker.

Records with keys, headers and null values, a transaction that aborts and one that commits, and
a seek into the middle of a batch are read by a stock consumer and by one with
`NativePartitionRecords` installed, under read_committed and read_uncommitted.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ingest import native_records

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

pytest_plugins = ("tests.support.kafka_broker",)
pytest.importorskip("ingest._kafka_records", reason="the native record decoder is not built")

# Bounds on producing and reading back a few hundred records; generous for a busy 2-core machine.
CONSUME_TIMEOUT_S = 60
PRODUCE_TIMEOUT_S = 30
POLL_TIMEOUT_MS = 200


def consume(
    broker: KafkaBroker, topic: str, *, native: bool, isolation: str, start: int = 0, max_records: int = 7
) -> tuple[list[tuple[int, bytes | None]], int]:
    """(offset, value) of partition 0 from `start` until the position reaches the end, and that position."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False, isolation_level=isolation
    )
    try:
        partition = TopicPartition(topic, 0)
        if native:
            assert native_records.install(consumer)
        consumer.assign([partition])
        consumer.seek(partition, start)
        end = consumer.end_offsets([partition])[partition]
        read: list[tuple[int, bytes | None]] = []
        deadline_s = time.monotonic() + CONSUME_TIMEOUT_S
        while consumer.position(partition) < end:
            assert time.monotonic() < deadline_s, f"read {len(read)} records up to {consumer.position(partition)}"
            for records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=max_records).values():
                assert all(type(record).__name__ == ("Record" if native else "ConsumerRecord") for record in records)
                read += [(record.offset, record.value) for record in records]
        return read, consumer.position(partition)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def transactional_topic(kafka_broker: KafkaBroker) -> str:
    """One partition: plain records (keys, headers, nulls), an aborted transaction, a committed one, plain again."""
    topic = "native-records-transactions"
    kafka_broker.create_topic(topic, 1)
    plain = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, linger_ms=20)
    for i in range(40):
        headers = [("trace", b"%d" % i)] if i % 3 == 0 else []
        plain.send(topic, key=b"k%d" % i if i % 2 else None, value=None if i % 10 == 9 else b"plain-%d" % i,
                   headers=headers, partition=0)  # fmt: skip
    plain.flush(timeout=PRODUCE_TIMEOUT_S)
    transactional = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, transactional_id="native-test")
    transactional.init_transactions()
    transactional.begin_transaction()
    for i in range(25):
        transactional.send(topic, value=b"aborted-%d" % i, partition=0)
    transactional.flush(timeout=PRODUCE_TIMEOUT_S)
    transactional.abort_transaction()
    transactional.begin_transaction()
    for i in range(15):
        transactional.send(topic, value=b"committed-%d" % i, partition=0)
    transactional.commit_transaction()
    transactional.close()
    for i in range(10):
        plain.send(topic, value=b"after-%d" % i, partition=0)
    plain.flush(timeout=PRODUCE_TIMEOUT_S)
    plain.close()
    return topic


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_transactions_read_as_stock_kafka_python(kafka_broker: KafkaBroker, transactional_topic: str,
                                                 isolation: str) -> None:  # fmt: skip
    """Pins isolation on a real broker: aborted records only under read_uncommitted, markers never, nulls kept."""
    stock = consume(kafka_broker, transactional_topic, native=False, isolation=isolation)
    native = consume(kafka_broker, transactional_topic, native=True, isolation=isolation)
    assert native == stock
    values = [value for _, value in native[0]]
    aborted = [value for value in values if value and value.startswith(b"aborted-")]
    assert len(aborted) == (25 if isolation == "read_uncommitted" else 0)
    assert sum(1 for value in values if value and value.startswith(b"committed-")) == 15
    assert values.count(None) == 4
    assert len(values) == 40 + 15 + 10 + len(aborted)


@pytest.mark.slow
@pytest.mark.parametrize("start", [1, 13, 41, 60])
def test_seek_into_the_middle_of_a_batch_returns_exactly_the_records_from_there(
    kafka_broker: KafkaBroker, transactional_topic: str, start: int
) -> None:
    """Pins the skip below the fetch offset: the first record returned is the one sought, as stock."""
    stock = consume(kafka_broker, transactional_topic, native=False, isolation="read_committed", start=start)
    native = consume(kafka_broker, transactional_topic, native=True, isolation="read_committed", start=start)
    assert native == stock
    assert native[0][0][0] >= start
    assert all(offset >= start for offset, _ in native[0])


@pytest.mark.slow
def test_one_large_batch_sought_mid_way(kafka_broker: KafkaBroker) -> None:
    """Pins a single 2,000-record gzip batch read from offset 777 in polls of 500 records."""
    topic = "native-records-one-batch"
    kafka_broker.create_topic(topic, 1)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, linger_ms=1_000,
                             batch_size=4 * 1024 * 1024, compression_type="gzip")  # fmt: skip
    for i in range(2_000):
        producer.send(topic, value=b'{"n": %d}' % i, partition=0)
    producer.flush(timeout=PRODUCE_TIMEOUT_S)
    producer.close()
    stock = consume(kafka_broker, topic, native=False, isolation="read_uncommitted", start=777, max_records=500)
    native = consume(kafka_broker, topic, native=True, isolation="read_uncommitted", start=777, max_records=500)
    assert native == stock
    assert [offset for offset, _ in native[0]] == list(range(777, 2_000))
    assert native[1] == 2_000
