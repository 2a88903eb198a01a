"""What one append writes: decoded messages with their source positions, and offsets."""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import msgspec
import pyarrow as pa

from ledger import constants
from ledger.tables import dead_letter_schema
from schemas.decoder import BatchDecoder, DecodedBatch
from schemas.errors import require
from schemas.reason_codes import ReasonCode

# A rejected message: its index in the batch, the reason text, the offending field and the reason code.
DeadLetterReason = tuple[int, str, str | None, ReasonCode]


@dataclass(frozen=True)
class PartitionOffsets:
    """The batch read `topic`/`partition` from `first_offset` up to, not including, `next_offset`."""

    topic: str
    partition: int
    first_offset: int
    next_offset: int

    def __post_init__(self) -> None:
        require(0 <= self.first_offset <= self.next_offset, f"offsets are ordered: {self}")


@dataclass(frozen=True)
class FileSourcePosition:
    """How far a file source (a file or stdin, keyed by `topic`) was read, and what it held up to there.

    `prefix_sha256` is the SHA-256 of its first `prefix_size_bytes` bytes, the bytes of lines before
    `next_offset`: `head -c <prefix_size_bytes> FILE | sha256sum` recomputes it.
    """

    topic: str
    next_offset: int
    prefix_size_bytes: int
    prefix_sha256: str
    source_name: str  # the path as given on the command line, or `-`


class LineDigest(Protocol):
    """The state of a SHA-256 over a source's bytes up to the end of one line (a `hashlib` object)."""

    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class IngestBatch:
    """Raw messages, where each was read from, and what the decoder made of them.

    `decoded` tables carry `message_index` into `values`; every message is either a row of
    one of those tables or one of `decoded.rejections`.
    """

    values: Sequence[bytes | None]  # None: a Kafka record with a null value (a tombstone)
    topics: pa.Array  # string, one per message
    partitions: pa.Array  # int32
    offsets: pa.Array  # int64
    decoded: DecodedBatch
    received_at: datetime
    # Messages read from files or stdin: per message, the SHA-256 of its source up to the end of its
    # line, so that its dead letter is stored once whatever name the content came in under. Empty for Kafka.
    line_digests: Sequence[LineDigest | None] = ()

    @classmethod
    def from_messages(
        cls,
        values: Sequence[bytes | None],
        topics: Sequence[str],
        partitions: Sequence[int],
        offsets: Sequence[int],
        decoder: BatchDecoder,
    ) -> "IngestBatch":
        require(
            len(values) == len(topics) == len(partitions) == len(offsets),
            "a batch has one topic, partition and offset per message",
        )
        return cls(
            values,
            pa.array(topics, pa.string()),
            pa.array(partitions, pa.int32()),
            pa.array(offsets, pa.int64()),
            decoder.decode(values),
            datetime.now(UTC),
        )

    def __len__(self) -> int:
        return len(self.values)


def dead_letter_rows(
    batch: IngestBatch, reasons: Sequence[DeadLetterReason], ingest_batch_id: str
) -> pa.Table:
    """Dead-letter rows for the messages at the given indexes, with their reasons and fields."""
    columns: dict[str, list] = {field.name: [] for field in dead_letter_schema}
    for index, reason, error_field, reason_code in reasons:
        value = batch.values[index]
        raw = bytes(value or b"")  # a null Kafka value (tombstone) is kept as no bytes
        # A file line too long to hold (ingest.sources.LongLine) carries the whole line's size and digest.
        size_bytes, sha256 = getattr(value, "size_bytes", len(raw)), getattr(value, "sha256", None)
        event_id, event_type = _identity(raw)
        columns["kafka_topic"].append(batch.topics[index].as_py())
        columns["kafka_partition"].append(batch.partitions[index].as_py())
        columns["kafka_offset"].append(batch.offsets[index].as_py())
        columns["ingest_batch_id"].append(ingest_batch_id)
        columns["received_at"].append(batch.received_at)
        columns["reason"].append(reason)
        columns["reason_code"].append(str(reason_code))
        columns["error_field"].append(error_field)
        columns["event_id"].append(event_id)
        columns["event_type"].append(event_type)
        columns["raw"].append(raw[: constants.dead_letter_raw_bytes_max])
        columns["raw_size_bytes"].append(size_bytes)
        columns["raw_sha256"].append(sha256 or hashlib.sha256(raw).hexdigest())
    return pa.Table.from_pydict(columns, schema=dead_letter_schema)


class _Identity(msgspec.Struct):
    id: str | None = None
    type: str | None = None


def _identity(raw: bytes) -> tuple[str | None, str | None]:
    """The `id` and `type` of a rejected message, where it has readable ones."""
    try:
        identity = msgspec.json.decode(raw, type=_Identity)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        # msgspec also raises UnicodeDecodeError (invalid UTF-8 in a key) and RecursionError
        # (nesting past Python's recursion limit): a rejected message may be anything.
        return None, None
    return identity.id, identity.type
