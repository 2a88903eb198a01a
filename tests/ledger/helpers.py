"""Building ingest batches for ledger tests, and watching what `verify` digests."""

from collections.abc import Sequence

import pytest

from ledger import IngestBatch, PartitionOffsets, inlined_digest
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


def digested_relations(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The relation `verify`'s digest check reads for each bookkeeping table (filled as it runs): a table read with
    `filename NOT IN (...)` leaves those files' rows undigested."""
    relations: dict[str, str] = {}
    real = inlined_digest._snapshots_to_recheck

    def spy(connection, relation, columns, start, recorded, table):
        relations[table] = relation
        return real(connection, relation, columns, start, recorded, table)

    monkeypatch.setattr(inlined_digest, "_snapshots_to_recheck", spy)
    return relations
