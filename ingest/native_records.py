"""Kafka records decoded natively (`ingest._kafka_records`) inside an otherwise stock kafka-python consumer.

kafka-python parses every record in pure Python (~10 µs a record on this project's machines),
which alone kept ingest below its target. `install(consumer)` swaps the consumer's fetcher's
`PartitionRecords` for `NativePartitionRecords`, which keeps kafka-python's batch-level logic
line for line (CRC check, decompression, read_committed aborted transactions, control batches,
`next_fetch_offset` and `leader_epoch` bookkeeping, metrics, `drain`) and replaces only the
per-record loop with one native call per batch. Everything else (networking, fetch sessions,
groups, offsets) stays kafka-python's. Legacy (magic 0/1) batches, and consumers with key or
value deserializers, keep kafka-python's own per-record path.

Records come back as `Record(offset, value)`; `value` is None for a null value, as kafka-python's.
Without the extension (no C compiler at install time), or with a kafka-python other than the one
pinned (`KAFKA_PYTHON_VERSION`), `install` logs one warning and leaves the consumer stock: same
results, slower.
"""

import logging
from collections.abc import Iterator
from typing import Any

import kafka
import kafka.errors as Errors
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.record.default_records import DefaultRecordBatch

try:
    from ingest._kafka_records import Record, decode_records
except ImportError as error:  # built by `pip install` where a C compiler is available
    Record = decode_records = None  # type: ignore[assignment,misc]
    _import_error: ImportError | None = error
else:
    _import_error = None

log = logging.getLogger(__name__)

# The kafka-python release whose PartitionRecords._unpack_records `_unpack_batches` copies line for line
# (pinned in pyproject.toml). Another release may change that logic (offsets, aborted transactions)
# without renaming anything, and a copy out of step could skip or stall: it falls back to the stock path.
KAFKA_PYTHON_VERSION = "3.0.12"
# Below every offset: once a record is kept, no later one is skipped (kafka-python's dropwhile).
_OFFSET_MIN = -(2**63)
# The private parts of kafka-python this module reads; checked once so that a kafka-python
# release that renames them falls back to the stock path instead of failing at the first fetch.
_BATCH_ATTRIBUTES = ("_buffer", "_pos", "_maybe_uncompress", "records_count", "base_offset")
_logged = False


def decoder_name() -> str:
    """Which record decoder `install` uses in this process: `native` or `kafka-python`."""
    return "native" if _unavailable_reason() is None else "kafka-python"


def _unavailable_reason() -> str | None:
    if _import_error is not None:
        return f"the extension ingest._kafka_records is not built ({_import_error})"
    installed = getattr(kafka, "__version__", "unknown")
    if installed != KAFKA_PYTHON_VERSION:
        return (
            f"kafka-python {installed} is installed, the native decoder copies {KAFKA_PYTHON_VERSION}'s record "
            f"loop; install kafka-python=={KAFKA_PYTHON_VERSION} (pyproject.toml pins it) for the fast path"
        )
    missing = [name for name in _BATCH_ATTRIBUTES if not hasattr(DefaultRecordBatch, name)]
    if missing or not hasattr(Fetcher, "PartitionRecords"):
        lacking = ", ".join(missing) or "PartitionRecords"
        return f"this kafka-python lacks what the native decoder hooks into ({lacking})"
    return None


def install(consumer: Any) -> bool:
    """Decode `consumer`'s record batches natively; False (and the stock path) when that is unavailable.

    The first call in a process logs which decoder is in use: INFO for native, one WARNING for the fallback.
    """
    global _logged
    reason = _unavailable_reason()
    fetcher = getattr(consumer, "_fetcher", None)
    if reason is None and fetcher is None:
        reason = "this kafka-python's consumer has no `_fetcher`"
    if not _logged:
        _logged = True
        if reason is None:
            log.info("kafka record decoder: native (ingest._kafka_records)")
        else:
            log.warning(f"kafka record decoder: kafka-python's pure-Python parser, a slower consume; {reason}")
    if reason is not None:
        return False
    # kafka-python's Fetcher builds `self.PartitionRecords(...)`: an instance attribute overrides the class's.
    fetcher.PartitionRecords = NativePartitionRecords
    return True


class NativePartitionRecords(Fetcher.PartitionRecords):
    """kafka-python's PartitionRecords with a native per-batch record parser and a list-slicing `take`.

    `record_iterator` is a generator over batches: each step leaves the next batch's kept records in
    `_chunk`, from which `take` slices; it ends by setting the final `next_fetch_offset` and draining,
    exactly where kafka-python's record generator does.
    """

    def __init__(
        self, fetch_offset: int, tp: Any, records: Any, key_deserializer: Any = None, value_deserializer: Any = None,
        **kwargs: Any,
    ) -> None:
        self._native = key_deserializer is None and value_deserializer is None
        self._chunk: list = []
        self._chunk_index = 0
        self._batches: Iterator[bool] | None = None
        super().__init__(fetch_offset, tp, records, key_deserializer, value_deserializer, **kwargs)
        if self._native:
            # The base class wrapped our batch generator in its per-record skip; ours skips in C.
            self.record_iterator = self._batches

    def _unpack_records(self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any) -> Iterator:
        if not self._native:
            return super()._unpack_records(tp, records, key_deserializer, value_deserializer)
        self._batches = self._unpack_batches(tp, records)
        return self._batches

    def take(self, n: int | None = None) -> list:
        """Up to `n` records (all when None); `next_fetch_offset` is past the last one returned."""
        if not self._native:
            return super().take(n)
        self._maybe_raise_next_inline_exception()
        taken: list = []
        try:
            while self.record_iterator is not None and (n is None or len(taken) < n):
                chunk, start = self._chunk, self._chunk_index
                if start < len(chunk):
                    stop = len(chunk) if n is None else min(len(chunk), start + n - len(taken))
                    taken += chunk if start == 0 and stop == len(chunk) else chunk[start:stop]
                    self._chunk_index = stop
                    self.next_fetch_offset = chunk[stop - 1].offset + 1
                elif next(self.record_iterator, None) is None:
                    break  # drained, or the generator died on an error raised before
        except Exception as error:
            # As kafka-python's take: records read before the error are returned, the error comes next time.
            if not taken:
                raise
            self._next_inline_exception = error
        return taken

    def _unpack_batches(self, tp: Any, records: Any) -> Iterator[bool]:
        # Line for line kafka-python KAFKA_PYTHON_VERSION's Fetcher.PartitionRecords._unpack_records, but for the
        # per-record loop, which is one `decode_records` call per v2 batch.
        floor = self.fetch_offset
        batch = records.next_batch()
        last_batch = None
        while batch is not None:
            last_batch = batch

            if self.check_crcs and not batch.validate_crc():
                raise Errors.CorruptRecordError(
                    f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} failed crc check"
                )

            if batch.magic == 2:
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        log.debug(
                            "Skipping aborted record batch from partition %s with producer_id %s and offsets %s to %s",
                            self.topic_partition, producer_id, batch.base_offset, batch.last_offset,
                        )
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue

                # Control batches hold one record saying whether a transaction committed or aborted;
                # consumers never see them.
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue

                chunk, body_bytes, last_offset = self._decode_batch(batch, floor)
            else:
                chunk, body_bytes, last_offset = self._decode_legacy_batch(batch, floor)

            self.bytes_read += body_bytes
            if chunk:
                floor = _OFFSET_MIN
                self._chunk, self._chunk_index = chunk, 0
                yield True
            elif last_offset >= 0:
                # Every record was below the fetch offset: kafka-python has moved past them too.
                self.next_fetch_offset = last_offset + 1
            batch = records.next_batch()
        # Message format v2 preserves the last offset of a batch even when compaction removed its last
        # record: fetching from the batch's next offset avoids fetching the same batch again and again.
        if last_batch and last_batch.magic == 2:
            self.next_fetch_offset = last_batch.next_offset
        self.drain()

    def _decode_batch(self, batch: DefaultRecordBatch, floor: int) -> tuple[list, int, int]:
        batch._maybe_uncompress()
        section = memoryview(batch._buffer)[batch._pos :]
        try:
            decoded = decode_records(section, batch.records_count, batch.base_offset, floor)
        except ValueError as error:
            raise Errors.CorruptRecordError(
                f"Found invalid record structure in the batch of partition {self.topic_partition}"
                f" at offset {batch.base_offset}: {error}"
            ) from error
        finally:
            section.release()
        self.records_read += batch.records_count
        return decoded

    def _decode_legacy_batch(self, batch: Any, floor: int) -> tuple[list, int, int]:
        chunk: list = []
        body_bytes, last_offset = 0, -1
        for record in batch:
            if self.check_crcs and not record.validate_crc():
                raise Errors.CorruptRecordError(
                    f"Record for partition {self.topic_partition} at offset {record.offset} failed crc check"
                )
            self.records_read += 1
            body_bytes += record.size_in_bytes
            last_offset = record.offset
            if record.offset < floor and not chunk:
                continue
            chunk.append(Record((record.offset, record.value)))
        return chunk, body_bytes, last_offset
