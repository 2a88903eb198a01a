"""The settlement's append-only ledger tables, declared with `ledger.tables.register_table`.

Each closed epoch appends to all of them in one ledger transaction; nothing is ever updated.
"""

import pyarrow as pa

from ledger.query import register_views
from ledger.tables import register_table
from schemas.arrow import timestamp_type
from settlement.engine.figures import epoch_row_columns
from settlement.views import settlement_view_statements


def table_schema(*fields: tuple[str, pa.DataType, bool]) -> pa.Schema:
    """A settlement table's Arrow schema from (name, type, nullable) triples, in column order."""
    return pa.schema([pa.field(name, kind, nullable=nullable) for name, kind, nullable in fields])


_string, _int64, _timestamp = pa.string(), pa.int64(), timestamp_type


def chain_sync_schema(subject: str, counted: str, *extra: tuple[str, pa.DataType, bool]) -> pa.Schema:
    """A chain sync cursor table's schema (`registry_sync`, `holder_sync`): one row per block range of the contract
    named in `subject` read into the ledger, with how many of its logs (`counted`) were stored, then `extra`."""
    return table_schema(
        ("chain_id", _int64, False),
        (subject, _string, False),
        ("from_block", _int64, False),
        ("to_block", _int64, False),
        ("to_block_hash", _string, False),  # checked by the next run: a deeper reorganisation stops it
        ("to_block_time", _timestamp, False),  # close-epoch compares it with the epoch's latest event time
        (counted, _int64, False),
        *extra,
        ("synced_at", _timestamp, False),
    )


# One row per closed epoch: its figures (`settlement.engine.figures.EpochFigures`) and when it was closed.
epoch_schema = table_schema(
    *((name, _timestamp if name == "closed_at" else _int64, False) for name in epoch_row_columns())
)

# Signed double-entry rows: positive debits, negative credits; each entry sums to zero.
posting_schema = table_schema(
    ("epoch", _int64, False),
    ("entry_id", _string, False),
    ("entry_kind", _string, False),
    ("account", _string, False),
    ("amount_micros", _int64, False),
    ("model_id", _string, True),
    ("policy_id", _string, True),
)

payable_schema = table_schema(
    ("epoch", _int64, False),
    ("recipient", _string, False),
    ("credited_micros", _int64, False),  # net credit of the epoch, negative when reversals dominate
    ("amount_micros", _int64, False),  # growth of the cumulative payable, never negative
    ("earned_micros", _int64, False),  # cumulative net credits
    ("cumulative_micros", _int64, False),  # cumulative payable: max over time of earned_micros
    ("receivable_micros", _int64, False),  # cumulative_micros - earned_micros, netted against later credits
    ("payout_address", _string, True),
)

suspense_item_schema = table_schema(
    ("epoch", _int64, False),
    ("event_id", _string, False),
    ("event_time", _timestamp, False),
    ("model_id", _string, False),
    ("payer", _string, False),
    ("compute_provider", _string, False),
    ("fee_micros", _int64, False),
    ("source", _string, True),  # with event_id the event's key; NULL in rows of ledger format < 4
)

suspense_release_schema = table_schema(
    ("epoch", _int64, False),
    ("event_id", _string, False),
    ("outcome", _string, False),  # split | reversed
    ("source", _string, True),  # NULL in rows of ledger format < 4
)

reversal_schema = table_schema(
    ("epoch", _int64, False),
    ("event_id", _string, False),
    ("original_event_id", _string, False),
    ("outcome", _string, False),  # taken_back | cancelled | dead_letter
    ("fee_micros", _int64, True),
    ("settled_snapshot", _int64, True),
    ("source", _string, True),  # the reversal's; NULL in rows of ledger format < 4
    ("original_source", _string, True),  # the original's, as resolved; NULL in rows of ledger format < 4
)

# One row per data file of `inference_metered`, recorded by the close that first reconciled it (ledger format 19): its
# path relative to the table's folder (as `data_file_arrivals` names it), the events and fee sum read from it, and the
# SHA-256 the ledger recorded for it (NULL for a file added without one). The reconciliation's events_vs_epoch reads
# these instead of the file, after checking them against the catalog's row count and the recorded SHA-256.
file_sum_table = "settlement_file_sum"
file_sum_schema = table_schema(
    ("epoch", _int64, False),
    ("path", _string, False),
    ("event_count", _int64, False),
    ("fee_micros", _int64, False),
    ("sha256", _string, True),
)

settlement_tables: dict[str, tuple[pa.Schema, bool]] = {
    "settlement_epoch": (epoch_schema, True),
    "settlement_posting": (posting_schema, False),
    "settlement_payable": (payable_schema, False),
    "settlement_suspense_item": (suspense_item_schema, False),
    "settlement_suspense_release": (suspense_release_schema, False),
    "settlement_reversal": (reversal_schema, False),
    file_sum_table: (file_sum_schema, False),
}


def register() -> None:
    """Declare the tables, which the ledger creates on its next open or append, and their analyst views."""
    for name, (schema, inlined) in settlement_tables.items():
        register_table(name, schema, inlined=inlined)
    register_views("settlement", settlement_view_statements)
