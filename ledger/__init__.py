"""The append-only ledger on DuckLake: append, read-only queries, verification."""

from ledger.batch import IngestBatch, PartitionOffsets
from ledger.errors import (
    LedgerBusyError,
    LedgerCatalogUnavailableError,
    LedgerError,
    LedgerIntegrityError,
    LedgerNotFoundError,
    LedgerOffsetsFencedError,
    LedgerReadOnlyError,
    LedgerStorageError,
)
from ledger.ledger import AppendResult, Ledger, retrying_contention
from ledger.query import define_views, run_query

__all__ = [
    "AppendResult",
    "IngestBatch",
    "Ledger",
    "LedgerBusyError",
    "LedgerCatalogUnavailableError",
    "LedgerError",
    "LedgerIntegrityError",
    "LedgerNotFoundError",
    "LedgerOffsetsFencedError",
    "LedgerReadOnlyError",
    "LedgerStorageError",
    "PartitionOffsets",
    "define_views",
    "retrying_contention",
    "run_query",
]
