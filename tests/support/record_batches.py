"""Kafka record batches built with kafka-python's own builders, and the two ways to parse them.

`stock_records` is kafka-python's per-record iteration, the reference; `native_records` runs
`ingest._kafka_records.decode_records` on each batch's decompressed records section.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c

CODEC_NONE = 0
CODEC_GZIP = 1
BATCH_BYTES_MAX = 64 * 1024 * 1024
TIMESTAMP_MS = 1_750_000_000_000
OFFSET_MIN = -(2**63)


class Spec(NamedTuple):
    """One record to write: key and value (None for null), headers as (key, value or None)."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


def v2_batch(
    specs: Sequence[Spec],
    base_offset: int = 0,
    codec: int = CODEC_NONE,
    offset_step: int = 1,
    producer_id: int = -1,
    transactional: bool = False,
) -> bytes:
    """One magic-2 batch whose records sit at `base_offset`, `base_offset + offset_step`, ..."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=transactional, producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1, base_sequence=0 if producer_id >= 0 else -1,
        batch_size=BATCH_BYTES_MAX,
    )  # fmt: skip
    for index, spec in enumerate(specs):
        metadata = builder.append(index * offset_step, TIMESTAMP_MS + index, spec.key, spec.value, list(spec.headers))
        assert metadata is not None, "the builder refused a record"
    buffer = builder.build()
    # Producers write base offset 0 and the broker assigns it; it is outside the CRC.
    struct.pack_into(">q", buffer, 0, base_offset)
    return bytes(buffer)


def control_batch(base_offset: int, producer_id: int, abort: bool) -> bytes:
    """A transaction marker as the broker writes it: one control record, key (version 0, type)."""
    buffer = bytearray(
        v2_batch(
            [Spec(struct.pack(">hh", 0, 0 if abort else 1), b"\x00\x00\x00\x00\x00\x00")],
            base_offset, producer_id=producer_id, transactional=True,
        )
    )  # fmt: skip
    attributes_at = DefaultRecordBatch.ATTRIBUTES_OFFSET
    (attributes,) = struct.unpack_from(">h", buffer, attributes_at)
    struct.pack_into(">h", buffer, attributes_at, attributes | DefaultRecordBatch.CONTROL_MASK)
    crc = calc_crc32c(memoryview(buffer)[attributes_at:])
    struct.pack_into(">I", buffer, DefaultRecordBatch.CRC_OFFSET, crc)
    return bytes(buffer)


def legacy_batch(values: Sequence[bytes | None], base_offset: int, magic: int = 1) -> bytes:
    """A magic 0 or 1 message set (uncompressed), one message per value."""
    builder = MemoryRecordsBuilder(magic=magic, compression_type=CODEC_NONE, batch_size=BATCH_BYTES_MAX,
                                   offset=base_offset)
    for value in values:
        assert builder.append(TIMESTAMP_MS if magic else None, None, value) is not None
    builder.close()
    return bytes(builder.buffer())


def stock_records(buffer: bytes) -> list[tuple[int, bytes | None]]:
    """Every record of every batch, as kafka-python iterates them."""
    records = MemoryRecords(buffer)
    parsed = []
    while (batch := records.next_batch()) is not None:
        parsed += [(record.offset, record.value) for record in batch]
    return parsed


def records_section(batch: DefaultRecordBatch) -> memoryview:
    """The decompressed records section of `batch`, where kafka-python's own parser starts."""
    batch._maybe_uncompress()
    return memoryview(batch._buffer)[batch._pos :]


def native_records(buffer: bytes, min_offset: int = OFFSET_MIN) -> list[tuple[int, bytes | None]]:
    """Every record of every batch, parsed by `ingest._kafka_records`."""
    from ingest._kafka_records import decode_records

    records = MemoryRecords(buffer)
    parsed: list[tuple[int, bytes | None]] = []
    while (batch := records.next_batch()) is not None:
        kept, _, _ = decode_records(records_section(batch), batch.records_count, batch.base_offset, min_offset)
        parsed += [(record.offset, record.value) for record in kept]
        if kept:
            min_offset = OFFSET_MIN
    return parsed
