"""Each append's metered events rolled up (table `metered_rollup`, ledger format 13).

An append writes, in its own transaction, one row per (model, compute provider, source, event hour) its
metered events touch: the exact fee sum, the event count and the least and greatest event time. Settlement may
close an epoch from these rows instead of the events (`settlement.rollups`); the events stay the reference.
"""

import pyarrow as pa
import pyarrow.compute as pc

from ledger.tables import rollup_schema
from schemas.errors import require
from schemas.limits import fee_micros_max

metered_table = "inference_metered"
rollup_keys = ["model_id", "compute_provider", "source", "event_hour"]


def rollup_rows(events: pa.Table, ingest_batch_id: str) -> pa.Table:
    """The rollup rows of metered event rows (`event_time`, `fee_micros` and the key columns but the hour) that the
    append `ingest_batch_id` writes."""
    # A group's sum stays within int64: at most this many events, each at most fee_micros_max.
    require(events.num_rows * fee_micros_max < 2**63, f"an append of {events.num_rows} events fits an int64 fee sum")
    hours = pc.floor_temporal(events.column("event_time"), unit="hour")
    keyed = pa.table(
        {
            **{k: events.column(k) for k in rollup_keys[:-1]},
            "event_hour": hours,
            "fee_micros": events.column("fee_micros"),
            "event_time": events.column("event_time"),
        }
    )
    grouped = keyed.group_by(rollup_keys, use_threads=False).aggregate(
        [("fee_micros", "sum"), ("fee_micros", "count"), ("event_time", "min"), ("event_time", "max")]
    )
    columns = {
        **{k: grouped.column(k) for k in rollup_keys},
        "fee_micros": grouped.column("fee_micros_sum"),
        "event_count": grouped.column("fee_micros_count"),
        "event_time_min": grouped.column("event_time_min"),
        "event_time_max": grouped.column("event_time_max"),
        "ingest_batch_id": pa.repeat(pa.scalar(ingest_batch_id, pa.string()), grouped.num_rows),
    }
    return pa.table(columns).cast(rollup_schema)
