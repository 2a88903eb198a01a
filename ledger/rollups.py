"""Each append's metered events rolled up (tables `metered_rollup`, ledger format 13, and `metered_payer_rollup`,
format 16).

An append writes, in its own transaction, one row per (model, compute provider, source, event hour) its
metered events touch: the exact fee sum, the event count and the least and greatest event time; and one row per
payer: the fee sum and the event count. Settlement may close an epoch from these rows instead of the events
(`settlement.rollups`); the events stay the reference.

Each metered rollup row also carries its key group's id bounds (format 16): the least and greatest event id of the
append's metered rows of its source, and whether no event id of that source is among them twice. Two groups of one
source whose bounds do not overlap share no event (nor do groups of two sources: an event is its source and id),
which is how the close knows no event is stored twice without reading the ids (`settlement.rollups`).
"""

import pyarrow as pa
import pyarrow.compute as pc

from ledger.tables import payer_rollup_schema, rollup_schema
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
    rows = pa.table(columns).join(_group_bounds(events), keys="source", use_threads=False)
    return rows.select(rollup_schema.names).cast(rollup_schema)


def _group_bounds(events: pa.Table) -> pa.Table:
    """Per source, the key group's id bounds: the least and greatest event id of the source's rows, and whether no
    event id of the source is among them twice."""
    keys = pa.table({"source": events.column("source"), "event_id": events.column("event_id")})
    bounds = keys.group_by("source", use_threads=False).aggregate(
        [("event_id", "min"), ("event_id", "max"), ("event_id", "count"), ("event_id", "count_distinct")]
    )
    unique = pc.equal(bounds.column("event_id_count"), bounds.column("event_id_count_distinct"))
    return pa.table(
        {
            "source": bounds.column("source"),
            "group_event_id_min": bounds.column("event_id_min"),
            "group_event_id_max": bounds.column("event_id_max"),
            "group_keys_unique": unique,
        }
    )


def payer_rollup_rows(events: pa.Table, ingest_batch_id: str) -> pa.Table:
    """The payer rollup rows of metered event rows (`payer`, `fee_micros`) that the append `ingest_batch_id`
    writes: the fee sum and the event count per payer."""
    require(events.num_rows * fee_micros_max < 2**63, f"an append of {events.num_rows} events fits an int64 fee sum")
    grouped = events.select(["payer", "fee_micros"]).group_by("payer", use_threads=False).aggregate(
        [("fee_micros", "sum"), ("fee_micros", "count")]
    )
    columns = {
        "payer": grouped.column("payer"),
        "fee_micros": grouped.column("fee_micros_sum"),
        "event_count": grouped.column("fee_micros_count"),
        "ingest_batch_id": pa.repeat(pa.scalar(ingest_batch_id, pa.string()), grouped.num_rows),
    }
    return pa.table(columns).cast(payer_rollup_schema)
