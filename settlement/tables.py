"""The settlement's append-only ledger tables, declared with `ledger.tables.register_table`.

Each closed epoch appends to all of them in one ledger transaction; nothing is ever updated.
"""

import pyarrow as pa

from ledger.query import register_views
from ledger.tables import register_table
from schemas.arrow import timestamp_type
from settlement.engine.figures import epoch_row_columns
from settlement.views import settlement_view_statements


def _schema(*fields: tuple[str, pa.DataType, bool]) -> pa.Schema:
    return pa.schema([pa.field(name, kind, nullable=nullable) for name, kind, nullable in fields])


_s, _i, _t = pa.string(), pa.int64(), timestamp_type

# One row per closed epoch: its figures (`settlement.engine.figures.EpochFigures`) and when it was closed.
epoch_schema = _schema(
    *((name, _t if name == "closed_at" else _i, False) for name in epoch_row_columns())
)

# Signed double-entry rows: positive debits, negative credits; each entry sums to zero.
posting_schema = _schema(
    ("epoch", _i, False),
    ("entry_id", _s, False),
    ("entry_kind", _s, False),
    ("account", _s, False),
    ("amount_micros", _i, False),
    ("model_id", _s, True),
    ("policy_id", _s, True),
)

payable_schema = _schema(
    ("epoch", _i, False),
    ("recipient", _s, False),
    ("credited_micros", _i, False),  # net credit of the epoch, negative when reversals dominate
    ("amount_micros", _i, False),  # growth of the cumulative payable, never negative
    ("earned_micros", _i, False),  # cumulative net credits
    ("cumulative_micros", _i, False),  # cumulative payable: max over time of earned_micros
    ("receivable_micros", _i, False),  # cumulative_micros - earned_micros, netted against later credits
    ("payout_address", _s, True),
)

suspense_item_schema = _schema(
    ("epoch", _i, False),
    ("event_id", _s, False),
    ("event_time", _t, False),
    ("model_id", _s, False),
    ("payer", _s, False),
    ("compute_provider", _s, False),
    ("fee_micros", _i, False),
    ("source", _s, True),  # with event_id the event's key; NULL in rows of ledger format < 4
)

suspense_release_schema = _schema(
    ("epoch", _i, False),
    ("event_id", _s, False),
    ("outcome", _s, False),  # split | reversed
    ("source", _s, True),  # NULL in rows of ledger format < 4
)

reversal_schema = _schema(
    ("epoch", _i, False),
    ("event_id", _s, False),
    ("original_event_id", _s, False),
    ("outcome", _s, False),  # taken_back | cancelled | dead_letter
    ("fee_micros", _i, True),
    ("settled_snapshot", _i, True),
    ("source", _s, True),  # the reversal's; NULL in rows of ledger format < 4
    ("original_source", _s, True),  # the original's, as resolved; NULL in rows of ledger format < 4
)

settlement_tables: dict[str, tuple[pa.Schema, bool]] = {
    "settlement_epoch": (epoch_schema, True),
    "settlement_posting": (posting_schema, False),
    "settlement_payable": (payable_schema, False),
    "settlement_suspense_item": (suspense_item_schema, False),
    "settlement_suspense_release": (suspense_release_schema, False),
    "settlement_reversal": (reversal_schema, False),
}


def register() -> None:
    """Declare the tables, which the ledger creates on its next open or append, and their analyst views."""
    for name, (schema, inlined) in settlement_tables.items():
        register_table(name, schema, inlined=inlined)
    register_views("settlement", settlement_view_statements)


register()
