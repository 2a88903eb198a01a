"""Building ingest batches for ledger tests."""

from collections.abc import Sequence

from ledger import IngestBatch, PartitionOffsets
from schemas import BatchDecoder

decoder = BatchDecoder()


def batch_of(
    values: Sequence[bytes],
    topic: str = "t",
    partition: int = 0,
    first_offset: int = 0,
    decoder: BatchDecoder = decoder,
):
    """An IngestBatch of `values` read from consecutive offsets, and the offsets it covers."""
    offsets = list(range(first_offset, first_offset + len(values)))
    batch = IngestBatch.from_messages(
        list(values), [topic] * len(values), [partition] * len(values), offsets, decoder
    )
    return batch, [PartitionOffsets(topic, partition, first_offset, first_offset + len(values))]
