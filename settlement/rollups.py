"""An epoch's new metered events from the appends' rollups (`metered_rollup`, ledger format 13), where that is exact.

The events path (`ledger_io.read_inputs`) reads every new event. This one reads the rollup rows the same appends
wrote (one per model, provider, source and event hour an append touched) and turns each into one weighted row
that routes, bills its model and counts as its events do (`splits.event_count_column`). The payers are billed from
the events' payer and fee columns, read in the same pass as the id check (rollups name no payer: a payer column
in their key would make them nearly as many as the events). A (model, event hour) cell is
read from its raw events instead when the rollups cannot be exact for it:

- an event id of the cell is stored twice (the cheap hash-count check of the events path finds it; the events of
  every cell holding a copy are read, so the exact deduplication keeps the same copy);
- the model's route changes inside the cell's event-time span (a policy taking effect mid-hour), or is
  incomplete there (its events go to suspense one by one), or the model has no route;
- a reversal in this epoch names an event of the cell (a cancellation drops that one event).

The whole epoch falls back to the events (`None`) unless the range's rollups count and sum exactly its stored
events: not so when an append of the range wrote none (appended before format 13) or a file was added behind the
ledger's back. Compaction may have summed the rollup rows of an epoch window (ledger.compaction), which this reads
alike.
"""

from dataclasses import dataclass

import duckdb
import polars as pl

from ledger import recorder
from ledger.tables import rollup_schema, rollup_table
from settlement.engine.epochs import held_schema
from settlement.engine.policies import Resolution
from settlement.engine.splits import event_columns, event_count_column

_cell = ["model_id", "event_hour"]


@dataclass(frozen=True)
class RollupEvents:
    """The epoch's new events as weighted rows, and how many cells were read from rollups and from events."""

    events: pl.LazyFrame  # event_columns + event_count_column; rollup rows have a null event_id and payer
    payer_fees: pl.DataFrame  # payer, fee_micros (Int128): what the new events bill each payer, deduplicated
    rollup_cells: int
    event_cells: int


def events_from_rollups(
    connection: duckdb.DuckDBPyConnection,
    new_metered_files: pl.DataFrame,
    prior_closing: int,
    closing: int,
    resolution: Resolution,
    new_originals: pl.DataFrame,
) -> RollupEvents | None:
    """The new events of the snapshot range (`prior_closing`, `closing`] from rollups, or None when the range's
    rollups do not count and sum its stored events exactly (`weighted_events`). `new_metered_files` are the
    range's metered files (`files_as_of`, filtered); `new_originals` the metered events this epoch's reversals name
    that arrived in the range."""
    rollup_files = recorder.files_as_of(connection, rollup_table, closing).filter(pl.col("snapshot") > prior_closing)
    columns = rollup_schema.names
    rollups = (
        recorder.scan_parquet(rollup_files["path"].to_list(), extra_columns="ignore").select(columns).collect()
        if rollup_files.height
        else pl.from_arrow(rollup_schema.empty_table())
    )
    return weighted_events(rollups, _scan_events(new_metered_files["path"].to_list()), resolution, new_originals)  # type: ignore[arg-type]


def weighted_events(
    rollups: pl.DataFrame,
    events: pl.LazyFrame,
    resolution: Resolution,
    new_originals: pl.DataFrame,
    count_check: bool = True,
) -> RollupEvents | None:
    """The epoch's new events as weighted rows: the `rollups` of the cells where they are exact, the raw `events`
    (every new event, scanned only where needed) of the others, deduplicated as the events path does.
    `resolution` is the registry at the closing snapshot; `new_originals` the new events this epoch's reversals
    name. None when the rollups do not count and sum exactly the stored events (an append of the range wrote none,
    or a file was added behind the ledger's back);
    `count_check` False only for a benchmark that plans from rollups with no events stored."""
    key = pl.struct("source", "event_id").hash()
    counts, payer_fees = pl.collect_all(
        [events.select(pl.len(), key.n_unique()), events.group_by("payer").agg(_fees())]
    )
    # The rollups must count and sum exactly the stored events: not so when an append of the range wrote none (before
    # format 13) or a file was added behind the ledger's back.
    stored = (counts.item(0, 0), int(payer_fees["fee_micros"].sum() or 0))
    rolled = (int(rollups["event_count"].sum() or 0), int(rollups["fee_micros"].cast(pl.Int128).sum() or 0))
    if count_check and stored != rolled:
        return None
    dirty = pl.concat(
        [
            _duplicated_cells(events, *counts.row(0)),
            _unsteady_cells(rollups, resolution),
            new_originals.select("model_id", _hour("event_time")),
        ]
    ).unique()
    clean = rollups.join(dirty, on=_cell, how="anti")
    parts = [
        clean.lazy().select(
            pl.lit(None, pl.String).alias("event_id"),
            "source",
            pl.col("event_time_max").alias("event_time"),
            "model_id",
            pl.lit(None, pl.String).alias("payer"),
            "compute_provider",
            "fee_micros",
            pl.col("event_count").alias(event_count_column),
        )
    ]
    if dirty.height:
        raw = (
            events.select(event_columns)
            .with_columns(_hour("event_time"))
            .join(dirty.lazy(), on=_cell, how="semi")
            .select(event_columns)
        )
        rows, distinct = raw.select(pl.len(), key.n_unique()).collect().row(0)
        if rows != distinct:  # as the events path deduplicates: of ids stored twice, the least row in column order
            kept = raw.sort(event_columns).unique(["source", "event_id"], keep="first", maintain_order=True)
            # The payers' sums over every stored row, less the copies the deduplication drops.
            dropped = raw.group_by("payer").agg(_fees()).with_columns(pl.col("fee_micros") * -1)
            payer_fees = pl.concat([payer_fees, dropped.collect(), kept.group_by("payer").agg(_fees()).collect()])
            payer_fees = payer_fees.group_by("payer").agg(pl.col("fee_micros").sum())
            raw = kept
        parts.append(raw.with_columns(pl.lit(1, pl.Int64).alias(event_count_column)))
    return RollupEvents(pl.concat(parts), payer_fees, clean.select(_cell).unique().height, dirty.height)


def _fees() -> pl.Expr:
    return pl.col("fee_micros").cast(pl.Int128).sum()


def _hour(column: str) -> pl.Expr:
    return pl.col(column).dt.truncate("1h").alias("event_hour")


def _scan_events(paths: list[str]) -> pl.LazyFrame:
    if not paths:
        return pl.LazyFrame(schema={c: held_schema[c] for c in event_columns})
    return recorder.scan_parquet(paths, extra_columns="ignore").select(event_columns)


def _duplicated_cells(scan: pl.LazyFrame, rows: int, distinct: int) -> pl.DataFrame:
    """The (model, hour) cells holding a copy of an event id stored more than once (by 64-bit hash: a collision
    only sends a cell to its events, which deduplicate exactly). `rows`, `distinct`: the scan's row count and
    distinct id hashes (equal: no id is stored twice)."""
    key = pl.struct("source", "event_id").hash().alias("key_hash")
    if rows == distinct:
        return pl.DataFrame(schema={"model_id": pl.String, "event_hour": pl.Datetime("us", "UTC")})
    keyed = scan.select(key, "model_id", _hour("event_time"))
    repeated = keyed.group_by("key_hash").len().filter(pl.col("len") > 1).select("key_hash")
    return keyed.join(repeated, on="key_hash", how="semi").select(_cell).unique().collect()


def _unsteady_cells(rollups: pl.DataFrame, resolution: Resolution) -> pl.DataFrame:
    """The cells whose model has no complete route for the whole of the cell's event-time span."""
    spans = rollups.group_by(_cell).agg(pl.col("event_time_min").min(), pl.col("event_time_max").max())
    segments = resolution.segments.select("model_id", "segment_start", "complete").sort("segment_start")
    # The segment in force at the span's first event (None: the model has no route then).
    first = spans.sort("event_time_min").join_asof(
        segments,
        left_on="event_time_min",
        right_on="segment_start",
        by="model_id",
        strategy="backward",
        check_sortedness=False,  # both sorted by time, globally (and so within each model)
    )
    incomplete = first.filter(pl.col("complete").is_null() | ~pl.col("complete")).select(_cell)
    # A segment starting after the first event and at or before the last one: the route changes inside the cell.
    changing = (
        spans.join(segments, on="model_id")
        .filter(
            (pl.col("segment_start") > pl.col("event_time_min")) & (pl.col("segment_start") <= pl.col("event_time_max"))
        )
        .select(_cell)
    )
    return pl.concat([incomplete, changing]).unique()
