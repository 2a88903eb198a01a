"""An epoch's new metered events from the appends' rollups (ledger formats 13 and 16), where that is exact.

The events path (`ledger_io.read_inputs`) reads every new event. This one reads the rollup rows the same appends
wrote and no event at all unless a cell needs them:

- `metered_rollup`: one row per model, provider, source and event hour an append touched; the rows of the cells
  settled from rollups are summed per model, provider and route segment into weighted rows that route, bill their
  model and count as their events do (`splits.event_count_column`, `_clean_rows`);
- `metered_payer_rollup`: one row per payer an append billed (fee sum, count), which bills the payers (rollups keyed
  by payer as well would be nearly as many as the events: 10,000 payers x 1,000 models x 50 providers).

No event stored twice, without reading the ids. The events path drops a (source, event id) stored twice in the
range (a same-id resend with another event time, which ingest's dedup does not look for, or a range two racing
writers appended). Each rollup row carries its key group's id bounds: the least and greatest event id of its source
in the append that wrote it (or in the appends a compaction summed into it) and whether no id of that source is in
the group twice (`ledger.rollups`). Two groups of one source whose [least, greatest] id ranges do not overlap cannot
share an event, nor can groups of two sources; a duplicate's two copies lie in one group (then not unique) or in
two groups of its source whose ranges both hold its id (so they overlap). The close therefore reads from the events
every cell of every group that is not unique or overlaps another group of its source in the range (sorted by least
id, a running greatest id), which deduplicates there exactly as the events path does. This is exact for any ids.
It is fast when each source's ids grow with arrival (ULIDs, UUIDv7, counters of fixed width), so its appends'
ranges do not overlap. With random ids (UUIDv4), or several writers appending one source's interleaved ids at once,
the groups overlap and their cells are read from the events: as slow as the events path, never wrong.

A (model, event hour) cell is also read from its raw events when:

- the model's route changes inside the cell's event-time span (a policy taking effect mid-hour), or is
  incomplete there (its events go to suspense one by one), or the model has no route;
- a reversal in this epoch names an event of the cell (a cancellation drops that one event).

The payers' sums are the payer rollups' less, in the cells read from events, what the deduplication drops.

The whole epoch falls back to the events (`None`) unless the range's rollups are complete: the model rollups and the
payer rollups each count exactly the stored events (the files' row counts, from their Parquet footers) and agree on
the fee sum, and every row has its group bounds. Not so when an append of the range wrote none (appended before
format 13 or 16) or a file was added behind the ledger's back. The events' fees themselves are not re-read: the
files' recorded checksums (`royalty verify`) are what proves their content. Compaction may have summed the rollup
rows of an epoch window (ledger.compaction: one key group per merged file), which this reads alike.
"""

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import polars as pl
import pyarrow as pa

from ledger import recorder
from ledger.tables import payer_rollup_schema, payer_rollup_table, rollup_schema, rollup_table
from settlement.engine.epochs import held_schema
from settlement.engine.policies import Resolution
from settlement.engine.splits import event_columns, event_count_column

_cell = ["model_id", "event_hour"]
# A rollup row's key group (ledger.rollups): its source, the append (or compaction) that wrote it, its id bounds.
_group = ["source", "ingest_batch_id", "group_event_id_min", "group_event_id_max", "group_keys_unique"]


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
    prior_metered_files: pl.DataFrame | None = None,
) -> RollupEvents | None:
    """The new events of the snapshot range (`prior_closing`, `closing`] from rollups, or None when the range's
    rollups are not complete (`weighted_events`). `new_metered_files` are the range's metered files (`files_as_of`,
    filtered); `new_originals` the metered events this epoch's reversals name that arrived in the range;
    `prior_metered_files` the metered files of earlier epochs, with their recorded id bounds
    (`ledger_io.earlier_files`): the cells of every key group whose id range an earlier file's bounds reach are read
    from the events, and their rows whose (source, id) an earlier epoch stored are dropped
    (`ledger_io.stored_before_range`), as the events path drops them."""
    from settlement.ledger_io import stored_before_range  # (ledger_io imports this module)

    rollups = _read_range(connection, rollup_table, rollup_schema, prior_closing, closing)
    payer_rollups = _read_range(connection, payer_rollup_table, payer_rollup_schema, prior_closing, closing).collect()
    events = _scan_events(new_metered_files["path"].to_list())
    if prior_metered_files is None or prior_metered_files.is_empty():
        return weighted_events(rollups, events, resolution, new_originals, payer_rollups)
    reached = _groups_earlier_files_reach(rollups, prior_metered_files)
    return weighted_events(
        rollups, events, resolution, new_originals, payer_rollups,
        earlier=(reached, lambda raw: stored_before_range(raw, prior_metered_files)),
    )  # fmt: skip


def _groups_earlier_files_reach(rollups: pl.LazyFrame, prior_files: pl.DataFrame) -> pl.DataFrame:
    """The key groups (`_group` columns) of `rollups` whose [least, greatest] id range meets the recorded id bounds
    of an earlier file (every group when an earlier file has none recorded, or a group has no bounds): the groups
    that may hold a copy of an event an earlier epoch stored. With ids growing with arrival, only a group holding a
    resend of an older id. No file is opened: the bounds are the catalog's."""
    groups = rollups.select(_group).unique().collect()
    if prior_files.is_empty() or groups.is_empty():
        return groups.clear()
    if "least" not in prior_files.columns:
        return groups
    unbounded = prior_files.select(pl.col("least", "greatest").null_count()).sum_horizontal().item()
    if unbounded:
        return groups
    # Files sorted by least id with the greatest id so far: a group meets a file iff among the files starting at or
    # before its greatest id, the greatest id reached is at or after its least id.
    files = prior_files.select("least", "greatest").sort("least").with_columns(pl.col("greatest").cum_max())
    starts = files["least"].search_sorted(groups["group_event_id_max"].fill_null(""), side="right")
    reach = files["greatest"].gather((starts - 1).clip(lower_bound=0))
    meets = (starts > 0) & (reach >= groups["group_event_id_min"].fill_null(""))
    return groups.filter(meets | groups["group_event_id_min"].is_null() | groups["group_event_id_max"].is_null())


def files_holding_ids_between(prior_files: pl.DataFrame, least: str, greatest: str) -> pl.DataFrame:
    """Those of `prior_files` that may hold an event id in [`least`, `greatest`]: all but the files whose recorded
    id bounds (`ledger_io.earlier_files`) miss the range; all of them when no bounds came with them."""
    if "least" not in prior_files.columns:
        return prior_files
    return recorder.files_holding_between(prior_files, prior_files, least, greatest)


def _read_range(
    connection: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, prior_closing: int, closing: int
) -> pl.LazyFrame:
    """The rows of the rollup `table` appended in (`prior_closing`, `closing`], as a scan (each use reads only the
    columns it needs); a column a file lacks is null."""
    files = recorder.files_as_of(connection, table, closing).filter(pl.col("snapshot") > prior_closing)
    empty = pl.from_arrow(schema.empty_table())
    if not files.height:
        return empty.lazy()  # type: ignore[union-attr]
    rows = recorder.scan_parquet(
        files["path"].to_list(),
        schema=empty.schema,  # type: ignore[union-attr]
        extra_columns="ignore",
        missing_columns="insert",
    )
    return rows.select(schema.names)


def weighted_events(
    rollups: pl.DataFrame | pl.LazyFrame,
    events: pl.LazyFrame,
    resolution: Resolution,
    new_originals: pl.DataFrame,
    payer_rollups: pl.DataFrame,
    count_check: bool = True,
    earlier: tuple[pl.DataFrame, Callable[[pl.LazyFrame], pl.DataFrame]] | None = None,
) -> RollupEvents | None:
    """The epoch's new events as weighted rows: the `rollups` of the cells where they are exact, the raw `events`
    (every new event, scanned only in the cells that need them) of the others, deduplicated as the events path
    does; the payers billed from `payer_rollups`. `resolution` is the registry at the closing snapshot;
    `new_originals` the new events this epoch's reversals name. None when the rollups are not complete (see the
    module docstring); `count_check` False only for a benchmark that plans from rollups with no events stored.
    `earlier`: the key groups that may hold a copy of an event an earlier epoch stored, and a function giving the
    (source, event_id) pairs of given events that an earlier epoch stored (`events_from_rollups`).

    `rollups` may be a scan of the rollup files: each step reads the columns it needs in one streaming pass (the
    totals, the key groups and the cells' spans together), never the whole table into memory."""
    rollups = rollups.lazy()
    totals, groups, spans = pl.collect_all([_totals(rollups), rollups.select(_group).unique(), _cell_spans(rollups)])
    if not _complete(totals, payer_rollups, events if count_check else None):
        return None
    payer_fees = payer_rollups.group_by("payer").agg(_fees())
    cells = _cell_segments(spans, resolution)
    dirty = pl.concat(
        [
            _shared_group_cells(rollups, groups),
            _group_cells(rollups, earlier[0] if earlier else groups.clear()),
            _unsteady_cells(cells, resolution),
            new_originals.select("model_id", _hour("event_time")),
        ]
    ).unique()
    clean_cells = cells.join(dirty, on=_cell, how="anti").select(*_cell, "segment_start")
    parts = [_clean_rows(rollups, clean_cells, dirty).lazy()]
    if dirty.height:
        key = pl.struct("source", "event_id").hash()
        raw = (
            events.select(event_columns)
            .with_columns(_hour("event_time"))
            .join(dirty.lazy(), on=_cell, how="semi")
            .select(event_columns)
            .collect()
        )
        kept = raw
        if kept.height != kept.select(key.n_unique()).item():  # the events path's choice: the least row in column order
            kept = kept.sort(event_columns).unique(["source", "event_id"], keep="first", maintain_order=True)
        stored_before = earlier[1](kept.lazy()) if earlier and earlier[0].height else None
        if stored_before is not None and stored_before.height:  # paid in the epoch their first copy arrived in
            kept = kept.join(stored_before, on=["source", "event_id"], how="anti")
        if kept.height != raw.height:
            # The payer rollups count every stored row: less the copies dropped.
            dropped = raw.group_by("payer").agg(_fees()).with_columns(pl.col("fee_micros") * -1)
            payer_fees = pl.concat([payer_fees, dropped, kept.group_by("payer").agg(_fees())])
            payer_fees = payer_fees.group_by("payer").agg(pl.col("fee_micros").sum())
            raw = kept
        parts.append(raw.lazy().with_columns(pl.lit(1, pl.Int64).alias(event_count_column)))
    return RollupEvents(pl.concat(parts), payer_fees, clean_cells.height, dirty.height)


def _clean_rows(rollups: pl.LazyFrame, clean_cells: pl.DataFrame, dirty: pl.DataFrame) -> pl.DataFrame:
    """The rollup rows of the `clean_cells` (each with the start of the route segment in force over its whole span;
    `dirty`: the other cells) as weighted rows summed per model, provider and route segment. Every event of such a sum
    routes, splits and bills as the sum does (one route over the segment, and no payer or event id on the row), and
    the sum's time, its latest event's, lies in the segment too: far fewer rows to plan than the rollup rows (one per
    model, provider, source, hour and key group). Only the rows of a model whose clean cells lie in several segments
    are joined to their cells' segments; the others are summed per model and provider."""
    columns = [*_cell, "compute_provider", "event_time_max", "fee_micros", "event_count"]
    rows = rollups.select(columns)
    if dirty.height:
        rows = rows.join(dirty.lazy(), on=_cell, how="anti")
    segments = clean_cells.group_by("model_id").agg(pl.col("segment_start").n_unique().alias("segments"))
    several = segments.filter(pl.col("segments") > 1)
    sums = [pl.col("event_time_max").max(), pl.col("fee_micros").sum(), pl.col("event_count").sum()]
    if not several.height:
        summed = rows.group_by("model_id", "compute_provider").agg(sums).collect()
    else:
        in_several = pl.col("model_id").is_in(several["model_id"].implode())
        summed = pl.concat(
            pl.collect_all(
                [
                    rows.filter(~in_several).group_by("model_id", "compute_provider").agg(sums),
                    rows.filter(in_several)
                    .join(clean_cells.lazy(), on=_cell)
                    .group_by("model_id", "compute_provider", "segment_start")
                    .agg(sums)
                    .drop("segment_start"),
                ]
            )
        )
    return summed.select(
        pl.lit(None, pl.String).alias("event_id"),
        pl.lit(None, pl.String).alias("source"),
        pl.col("event_time_max").alias("event_time"),
        "model_id",
        pl.lit(None, pl.String).alias("payer"),
        "compute_provider",
        "fee_micros",
        pl.col("event_count").alias(event_count_column),
    )


def _totals(rollups: pl.LazyFrame) -> pl.LazyFrame:
    """One row: the rows lacking a group bound (`unbounded`), and the event count and fee sum of every row."""
    return rollups.select(
        pl.sum_horizontal(pl.col(_group).null_count()).alias("unbounded"),
        pl.col("event_count").sum(),
        pl.col("fee_micros").cast(pl.Int128).sum(),
    )


def _complete(totals: pl.DataFrame, payer_rollups: pl.DataFrame, events: pl.LazyFrame | None) -> bool:
    """Whether the model rollups (`totals`: `_totals`) and the payer rollups each count every stored event (`events`:
    their files, whose row count comes from the footers; None: not checked) and agree on the fees, and every rollup
    row has its group bounds."""
    bounded = totals["unbounded"].item() == 0
    counted = {int(totals["event_count"].item() or 0), int(payer_rollups["event_count"].sum() or 0)}
    fees = {
        int(totals["fee_micros"].item() or 0),
        int(payer_rollups["fee_micros"].cast(pl.Int128).sum() or 0),
    }
    if events is not None:
        counted.add(events.select(pl.len()).collect().item())
    return bounded and len(counted) == 1 and len(fees) == 1


def _shared_group_cells(rollups: pl.LazyFrame, groups: pl.DataFrame) -> pl.DataFrame:
    """The (model, hour) cells of every key group (of `groups`, the rollups' distinct `_group` rows) that may share an
    event id: a group not unique in itself, or whose id range overlaps another's of its source (sorted by least id, a
    group starting at or before the greatest id of those before it overlaps one of them)."""
    groups = groups.sort("source", "group_event_id_min", "group_event_id_max")
    before = pl.col("group_event_id_max").cum_max().shift(1).over("source")
    starts = before.is_null() | (pl.col("group_event_id_min") > before)
    clustered = groups.with_columns(cluster=starts.cum_sum())
    shared = clustered.filter((pl.len().over("cluster") > 1) | ~pl.col("group_keys_unique")).select(_group)
    return _group_cells(rollups, shared)


def _group_cells(rollups: pl.LazyFrame, groups: pl.DataFrame) -> pl.DataFrame:
    """The (model, hour) cells of the key `groups` (`_group` columns); no read when there is none."""
    if not groups.height:
        return pl.DataFrame(schema=rollups.select(_cell).collect_schema())
    return rollups.join(groups.lazy(), on=_group, how="semi", nulls_equal=True).select(_cell).unique().collect()


def _fees() -> pl.Expr:
    return pl.col("fee_micros").cast(pl.Int128).sum()


def _hour(column: str) -> pl.Expr:
    return pl.col(column).dt.truncate("1h").alias("event_hour")


def _scan_events(paths: list[str]) -> pl.LazyFrame:
    if not paths:
        return pl.LazyFrame(schema={c: held_schema[c] for c in event_columns})
    return recorder.scan_parquet(paths, extra_columns="ignore").select(event_columns)


def _cell_spans(rollups: pl.LazyFrame) -> pl.LazyFrame:
    """Each (model, hour) cell's event-time span."""
    return rollups.group_by(_cell).agg(pl.col("event_time_min").min(), pl.col("event_time_max").max())


def _cell_segments(spans: pl.DataFrame, resolution: Resolution) -> pl.DataFrame:
    """Each cell's event-time span (`spans`: `_cell_spans`) and the route segment in force at its first event
    (`segment_start`, `complete`; null when the model has no route then)."""
    segments = resolution.segments.select("model_id", "segment_start", "complete").sort("segment_start")
    return spans.sort("event_time_min").join_asof(
        segments,
        left_on="event_time_min",
        right_on="segment_start",
        by="model_id",
        strategy="backward",
        check_sortedness=False,  # both sorted by time, globally (and so within each model)
    )


def _unsteady_cells(cells: pl.DataFrame, resolution: Resolution) -> pl.DataFrame:
    """The cells whose model has no complete route for the whole of the cell's event-time span (`cells`:
    `_cell_segments`)."""
    incomplete = cells.filter(pl.col("complete").is_null() | ~pl.col("complete")).select(_cell)
    # A segment starting after the first event and at or before the last one: the route changes inside the cell.
    changing = (
        cells.drop("segment_start", "complete")
        .join(resolution.segments.select("model_id", "segment_start"), on="model_id")
        .filter(
            (pl.col("segment_start") > pl.col("event_time_min")) & (pl.col("segment_start") <= pl.col("event_time_max"))
        )
        .select(_cell)
    )
    return pl.concat([incomplete, changing]).unique()
