"""Building ingest batches for ledger tests, and watching what `verify` digests."""

import sqlite3
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


def inlined_table(catalog: sqlite3.Connection, table: str) -> str:
    """The SQLite catalog's table holding the ledger table `table`'s inlined rows (its latest schema version)."""
    ((name,),) = catalog.execute(
        "SELECT i.table_name FROM ducklake_inlined_data_tables i JOIN ducklake_table t USING (table_id) "
        "WHERE t.table_name = ? AND t.end_snapshot IS NULL ORDER BY i.schema_version DESC LIMIT 1",
        [table],
    ).fetchall()
    return name
