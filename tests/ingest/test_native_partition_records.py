"""`NativePartitionRecords` behaves as kafka-python's `PartitionRecords` at every point `take(n)` can stop.

Both are fed the same fetched bytes (several v2 batches, gzip, gaps, control batches, aborted
transactions, legacy message sets) and drained with the same sequence of `take(n)` calls; the
records, `next_fetch_offset`, `leader_epoch`, metrics counters and drain callbacks must match.
"""

from __future__ import annotations

import logging
from collections import namedtuple
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords
from kafka.structs import TopicPartition

from ingest import native_records
from tests.support.record_batches import CODEC_GZIP, Spec, control_batch, legacy_batch, v2_batch

pytest.importorskip("ingest._kafka_records", reason="the native record decoder is not built")

TP = TopicPartition("events", 0)
AbortedTransaction = namedtuple("AbortedTransaction", ["producer_id", "first_offset"])


def make(cls: type, buffer: bytes, fetch_offset: int, **kwargs: Any) -> tuple[Any, list]:
    drained: list = []
    records = cls(fetch_offset, TP, MemoryRecords(buffer), check_crcs=True, on_drain=drained.append, **kwargs)
    return records, drained


def run_takes(cls: type, buffer: bytes, fetch_offset: int, takes: list[int | None], **kwargs: Any) -> list:
    """What a consumer observes: per take, the (offset, value) pairs and the bookkeeping after it.

    As kafka-python's Fetcher, `take` is only called while the records are not drained (truthy).
    """
    records, drained = make(cls, buffer, fetch_offset, **kwargs)
    observed = []
    for n in [*takes, None, None]:
        taken = records.take(n) if records else []
        observed.append(
            ([(r.offset, r.value) for r in taken], records.next_fetch_offset, records.leader_epoch, bool(records))
        )
    observed.append((records.records_read, records.bytes_read, len(drained)))
    return observed


def assert_same(buffer: bytes, fetch_offset: int, takes: list[int | None], **kwargs: Any) -> list:
    stock = run_takes(Fetcher.PartitionRecords, buffer, fetch_offset, takes, **kwargs)
    native = run_takes(native_records.NativePartitionRecords, buffer, fetch_offset, takes, **kwargs)
    assert native == stock
    return native


def values(base: int, count: int) -> list[Spec]:
    return [Spec(None, b"v%d" % (base + i)) for i in range(count)]


MIXED = b"".join(
    [
        v2_batch(values(0, 5), base_offset=0),
        v2_batch(values(5, 300), base_offset=5, codec=CODEC_GZIP),
        v2_batch(values(305, 4), base_offset=310, offset_step=2),  # compacted gaps, last offset 316
        v2_batch([Spec(b"k", None), Spec(None, b"")], base_offset=320),
    ]
)


@pytest.mark.parametrize("takes", [[1, 1, 1], [4], [5], [6], [3, 300, 7], [304], [305], [309], [311], [10_000]])
@pytest.mark.parametrize("fetch_offset", [0, 3, 5, 200, 312, 320, 321, 400])
def test_takes_match_kafka_python_at_every_stop(takes: list[int], fetch_offset: int) -> None:
    """Pins `take` boundaries inside and across batches, seeks into batches, and fetches past the data."""
    assert_same(MIXED, fetch_offset, takes)


@given(takes=st.lists(st.integers(1, 400), max_size=6), fetch_offset=st.integers(0, 330))
def test_takes_match_kafka_python_for_any_sequence(takes: list[int], fetch_offset: int) -> None:
    """Property: any sequence of take sizes from any fetch offset observes the same as stock kafka-python."""
    assert_same(MIXED, fetch_offset, takes)


def test_compacted_last_record_moves_next_fetch_offset_to_the_batch_end() -> None:
    """Pins "v2 preserves the last offset in a batch": the position after draining is last_offset + 1."""
    buffer = v2_batch(values(0, 3), base_offset=0, offset_step=4)  # offsets 0, 4, 8
    observed = assert_same(buffer, 0, [3])
    assert observed[0][1] == 9 and observed[1][1] == 9


TXN = b"".join(
    [
        v2_batch(values(0, 3), base_offset=0),
        v2_batch(values(3, 3), base_offset=3, producer_id=7, transactional=True),
        control_batch(6, producer_id=7, abort=True),
        v2_batch(values(7, 2), base_offset=7, producer_id=8, transactional=True),
        control_batch(9, producer_id=8, abort=False),
        v2_batch(values(10, 2), base_offset=10),
    ]
)


@pytest.mark.parametrize("isolation", [IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED])
@pytest.mark.parametrize("takes", [[], [2], [3], [4], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
def test_transactions_and_control_batches_as_kafka_python(isolation: Any, takes: list[int]) -> None:
    """Pins read_committed: the aborted batch and both markers are skipped; read_uncommitted keeps the aborted one."""
    observed = assert_same(
        TXN, 0, takes, isolation_level=isolation, aborted_transactions=[AbortedTransaction(7, 3)]
    )
    offsets = [offset for take in observed[:-1] for offset, _ in take[0]]
    aborted = [3, 4, 5] if isolation == IsolationLevel.READ_UNCOMMITTED else []
    assert offsets == [0, 1, 2, *aborted, 7, 8, 10, 11]


@pytest.mark.parametrize("fetch_offset", [0, 2, 3, 6])
@pytest.mark.parametrize("takes", [[1], [2, 2], [4], [100]])
def test_legacy_message_sets_keep_kafka_pythons_path(fetch_offset: int, takes: list[int]) -> None:
    """Pins the magic 0/1 fallback, alone and mixed with v2 batches in one fetch."""
    buffer = legacy_batch([b"a", None, b"c"], 0, magic=1) + legacy_batch([b"d"], 3, magic=0)
    assert_same(buffer, fetch_offset, takes)
    assert_same(buffer + v2_batch(values(4, 3), base_offset=4), fetch_offset, takes)


def test_deserializers_keep_kafka_pythons_records() -> None:
    """Pins the fallback for consumers with deserializers: stock ConsumerRecords, deserialized."""

    class Upper:
        def deserialize(self, topic: str, headers: list, data: bytes | None) -> bytes | None:
            return None if data is None else data.upper()

    buffer = v2_batch(values(0, 3))
    records, _ = make(native_records.NativePartitionRecords, buffer, 0, value_deserializer=Upper())
    taken = records.take(10)
    assert [r.value for r in taken] == [b"V0", b"V1", b"V2"]
    assert type(taken[0]).__name__ == "ConsumerRecord"


def corrupt(buffer: bytes, at: int) -> bytes:
    damaged = bytearray(buffer)
    damaged[at] ^= 0xFF
    return bytes(damaged)


def test_a_corrupt_batch_raises_after_the_records_before_it_as_kafka_python() -> None:
    """Pins error timing: records before a bad batch come first, the CorruptRecordError on the next take."""
    good = v2_batch(values(0, 2), base_offset=0)
    buffer = good + corrupt(v2_batch(values(2, 2), base_offset=2), -3)
    for cls in (Fetcher.PartitionRecords, native_records.NativePartitionRecords):
        records, _ = make(cls, buffer, 0)
        assert [r.offset for r in records.take(10)] == [0, 1]
        with pytest.raises(CorruptRecordError, match="crc"):
            records.take(10)
        assert records.take(10) == []


def test_a_malformed_record_raises_corrupt_record_error() -> None:
    """Pins the error type: the parser's ValueError surfaces as kafka-python's CorruptRecordError."""
    buffer = corrupt(v2_batch(values(0, 2), base_offset=0), -1)  # the last record's header count
    records, _ = make(native_records.NativePartitionRecords, buffer, 0)
    records.check_crcs = False
    with pytest.raises(CorruptRecordError, match=r"invalid record structure.*record 1 of 2"):
        records.take(10)


def test_install_swaps_the_fetchers_partition_records(caplog: pytest.LogCaptureFixture) -> None:
    """Pins the hook: the consumer's fetcher builds NativePartitionRecords, and the decoder in use is logged."""
    consumer = type("Consumer", (), {"_fetcher": type("Fetcher", (), {})()})()
    monkeypatched_logged = native_records._logged
    native_records._logged = False
    try:
        with caplog.at_level(logging.INFO, logger="ingest.native_records"):
            assert native_records.install(consumer) is True
            assert native_records.install(consumer) is True
    finally:
        native_records._logged = monkeypatched_logged
    assert consumer._fetcher.PartitionRecords is native_records.NativePartitionRecords
    assert [r.message for r in caplog.records] == ["kafka record decoder: native (ingest._kafka_records)"]
    assert native_records.decoder_name() == "native"


def test_without_the_extension_install_warns_once_and_leaves_the_consumer_stock(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Pins the fallback: no extension, one WARNING per process, kafka-python's own PartitionRecords."""
    monkeypatch.setattr(native_records, "_import_error", ImportError("No module named 'ingest._kafka_records'"))
    monkeypatch.setattr(native_records, "_logged", False)
    consumers = [type("Consumer", (), {"_fetcher": type("Fetcher", (), {})()})() for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="ingest.native_records"):
        assert [native_records.install(consumer) for consumer in consumers] == [False, False]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "not built" in caplog.records[0].message
    assert all(not hasattr(consumer._fetcher, "PartitionRecords") for consumer in consumers)
    assert native_records.decoder_name() == "kafka-python"


def test_another_kafka_python_release_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Pins the version gate: on a kafka-python other than the one whose record loop the hook copies
    (faked here as 3.0.13), install warns once, naming both versions, and leaves the consumer stock."""
    monkeypatch.setattr(native_records.kafka, "__version__", "3.0.13")
    monkeypatch.setattr(native_records, "_logged", False)
    consumer = type("Consumer", (), {"_fetcher": type("Fetcher", (), {})()})()
    with caplog.at_level(logging.INFO, logger="ingest.native_records"):
        assert native_records.install(consumer) is False
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "kafka-python 3.0.13 is installed" in caplog.records[0].message
    assert f"kafka-python=={native_records.KAFKA_PYTHON_VERSION}" in caplog.records[0].message
    assert not hasattr(consumer._fetcher, "PartitionRecords")
    assert native_records.decoder_name() == "kafka-python"


def test_pyproject_pins_the_kafka_python_the_hook_copies() -> None:
    """Pins the pin: pyproject.toml requires exactly KAFKA_PYTHON_VERSION, and that is what is installed here."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if d.startswith("kafka-python")]
    assert pins == [f"kafka-python=={native_records.KAFKA_PYTHON_VERSION}"]
    assert native_records.kafka.__version__ == native_records.KAFKA_PYTHON_VERSION
