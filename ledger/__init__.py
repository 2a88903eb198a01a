"""The append-only ledger on DuckLake: append, read-only queries, verification."""

from ledger.batch import IngestBatch, PartitionOffsets
from ledger.errors import (
    LedgerBusyError,
    LedgerError,
    LedgerIntegrityError,
    LedgerNotFoundError,
    LedgerOffsetsFencedError,
    LedgerReadOnlyError,
)
from ledger.ledger import AppendResult, Ledger
from ledger.query import define_views, run_query

__all__ = [
    "AppendResult",
    "IngestBatch",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "LedgerIntegrityError",
    "LedgerNotFoundError",
    "LedgerOffsetsFencedError",
    "LedgerReadOnlyError",
    "PartitionOffsets",
    "define_views",
    "run_query",
]
