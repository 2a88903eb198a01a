"""Reading an epoch's inputs from the ledger, and writing its plan in one transaction.

New events are the rows of data files the catalog added after the previous closing snapshot, up
to and including the closing one, scanned lazily with polars. The registry and the settlement's
own tables are small and read through DuckDB.
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime

import duckdb
import polars as pl
import pyarrow as pa

from ledger import recorder
from ledger.ledger import Ledger
from ledger.tables import dead_letter_schema, file_tables
from schemas.errors import require
from settlement import chain_registry, holders, tables
from settlement.engine import figures
from settlement.engine import reversals as rev
from settlement.engine.allocation import WeightColumns
from settlement.engine.authority import Judgment, RegistryRules, judge, position_columns, registry_codes
from settlement.engine.constants import resent_ids_matched_max
from settlement.engine.epochs import EpochInputs, EpochPlan, PriorState, held_schema, plan_epoch
from settlement.engine.exceptions import (
    CompactedWhilePlanningError,
    EpochConflictError,
    ExpiredWhilePlanningError,
)
from settlement.engine.holders import HolderWeights, dust_schema, holder_tokens
from settlement.engine.policies import resolve
from settlement.engine.splits import event_columns, event_key, key_of
from settlement.exceptions import HoldersBehindError, RegistryBehindError, RegistryNotSyncedError
from settlement.rollups import events_from_rollups, files_holding_ids_between

Progress = Callable[[str, int, int], None]  # (step name, steps done, steps total)
_steps = ["read state", "read registry", "scan events", "split", "write"]
# The step lock (`Ledger.step_lock`) every epoch closer holds while it re-checks and writes.
close_step = "close-epoch"


def data_files(connection: duckdb.DuckDBPyConnection, table: str, snapshot: int) -> pl.DataFrame:
    """The data files of `table` as of `snapshot` (absolute path, the snapshot that added each)."""
    return recorder.files_as_of(connection, table, snapshot)


def _scan(files: pl.DataFrame, columns: list[str], schema: pa.Schema) -> pl.LazyFrame:
    if files.is_empty():
        return pl.from_arrow(schema.empty_table()).lazy().select(columns)  # type: ignore[union-attr]
    # A file a compaction wrote has one more column (each row's snapshot), ignored here: the files are whole epochs'.
    return recorder.scan_parquet(files["path"].to_list(), extra_columns="ignore").select(columns)


def _with_columns_of(frame: pl.DataFrame, schema: pa.Schema) -> pl.DataFrame:
    """`frame` with every column of `schema`: those a file written before a format step lacks are null."""
    missing = [field for field in schema if field.name not in frame.columns]
    empty = pl.from_arrow(pa.schema(missing).empty_table()) if missing else None
    if empty is None:
        return frame
    return frame.with_columns(pl.lit(None, dtype=empty.schema[f.name]).alias(f.name) for f in missing)  # type: ignore[union-attr]


def read_prior(connection: duckdb.DuckDBPyConnection, before_epoch: int | None = None) -> PriorState:
    """The settlement state the ledger holds now, or (`before_epoch`) as the epochs before that one left it."""
    upto = "" if before_epoch is None else f" WHERE epoch < {int(before_epoch)}"
    closings = dict(
        connection.execute(
            f"SELECT epoch, closing_snapshot FROM {recorder.table('settlement_epoch')}{upto}"
        ).fetchall()
    )
    if not closings:
        return PriorState()
    last = max(closings)
    items = _with_sources(connection, "settlement_suspense_item", "event_id", "source")
    releases = _with_sources(connection, "settlement_suspense_release", "event_id", "source")
    held = recorder.frame(
        connection,
        f"""SELECT i.event_id, i.source, i.event_time, i.model_id, i.payer, i.compute_provider, i.fee_micros,
                   i.epoch
            FROM (SELECT * FROM {items}{upto}) i
            ANTI JOIN (SELECT * FROM {releases}{upto}) r ON r.source = i.source AND r.event_id = i.event_id""",
    ).cast(held_schema)  # type: ignore[arg-type]
    reversals = _with_sources(connection, "settlement_reversal", "original_event_id", "original_source")
    reversed_ids = {
        key_of(source, event_id)
        for source, event_id in connection.execute(
            f"SELECT original_source, original_event_id FROM {reversals} WHERE outcome <> '{rev.dead_letter}'"
            + upto.replace("WHERE", "AND")
        ).fetchall()
    }
    applied_reversals = {  # a row stored before ledger format 4 has no source: ids were unique then, none repeats
        key_of(source, event_id): epoch
        for source, event_id, epoch in connection.execute(
            f"SELECT source, event_id, min(epoch) FROM {recorder.table('settlement_reversal')} "
            f"WHERE outcome <> '{rev.dead_letter}' AND source IS NOT NULL" + upto.replace("WHERE", "AND")
            + " GROUP BY ALL"
        ).fetchall()
    }
    released = {
        key_of(source, event_id): epoch
        for source, event_id, epoch in connection.execute(
            f"SELECT source, event_id, epoch FROM {releases} WHERE outcome = '{rev.ReleaseOutcome.split}'"
            + upto.replace("WHERE", "AND")
        ).fetchall()
    }
    payables = recorder.frame(
        connection,
        f"""SELECT recipient, arg_max(earned_micros, epoch) AS earned_micros,
                   arg_max(cumulative_micros, epoch) AS cumulative_micros
            FROM {recorder.table("settlement_payable")}{upto} GROUP BY recipient ORDER BY recipient""",
    )
    return PriorState(
        last, closings[last], closings, held, reversed_ids, applied_reversals, released, payables,
        read_holder_dust(connection, upto),
    )


def read_holder_dust(connection: duckdb.DuckDBPyConnection, upto: str = "") -> pl.DataFrame:
    """What token holders carry forward (token, holder, carried_micros; non-zero), as the epochs `upto` (a WHERE
    on `epoch`, or none) left it: each holder's latest row."""
    if holders.holder_dust_table not in recorder.existing_tables(connection):
        return pl.DataFrame(schema=dust_schema)
    return recorder.frame(
        connection,
        f"""SELECT token, holder, carried_micros FROM (
                SELECT token, holder, arg_max(carried_micros, epoch) AS carried_micros
                FROM {recorder.table(holders.holder_dust_table)}{upto} GROUP BY ALL)
            WHERE carried_micros <> 0 ORDER BY token, holder""",
    ).cast(dust_schema)  # type: ignore[arg-type]


def _with_sources(connection: duckdb.DuckDBPyConnection, table: str, id_column: str, source_column: str) -> str:
    """`table`, or a subquery of it, whose `source_column` is never NULL.

    Rows written before ledger format 4 have no source there; ids were unique in the whole ledger
    then, so such a row's event is the one metered event with that id, and takes its source. Only a
    ledger holding such rows reads the metered events for it.
    """
    name, metered = recorder.table(table), recorder.table("inference_metered")
    (legacy,) = connection.execute(f"SELECT count(*) FROM {name} WHERE {source_column} IS NULL").fetchone()
    if not legacy:
        return name
    return f"""(SELECT x.* REPLACE (coalesce(x.{source_column}, m.source) AS {source_column})
        FROM {name} x LEFT JOIN (
            SELECT event_id, min(source) AS source FROM {metered}
            WHERE event_id IN (SELECT {id_column} FROM {name} WHERE {source_column} IS NULL)
            GROUP BY event_id
        ) m ON x.{source_column} IS NULL AND m.event_id = x.{id_column})"""


def read_registry(
    connection: duckdb.DuckDBPyConnection, prior: PriorState, closing: int, rules: RegistryRules
) -> Judgment:
    """The operator registry as of `closing`, judged by `rules` (`settlement.engine.authority`).

    Records judged when an earlier epoch closed keep their judgment: refused exactly when a registry dead
    letter names their position.
    """
    codes = ", ".join(f"'{code.value}'" for code in sorted(registry_codes))
    refused_before = set(
        recorder.frame(
            connection,
            f"SELECT {', '.join(position_columns)} FROM {recorder.table('dead_letter')} WHERE reason_code IN ({codes})",
        ).iter_rows()
    )
    models = recorder.rows_as_of(connection, "model_registered", closing)
    policies = recorder.rows_as_of(connection, "split_policy_set", closing)
    contributors = recorder.rows_as_of(connection, "contributor_registered", closing)
    arrival_times = (
        recorder.snapshot_times(connection, policies["known_snapshot"].unique().to_list())
        if rules.policy_notice_s is not None
        else None
    )
    return judge(models, policies, contributors, rules, refused_before, prior.closing_snapshot, arrival_times)


def read_chain_registry(
    connection: duckdb.DuckDBPyConnection, contract: str, prior: PriorState, closing: int
) -> tuple[Judgment, pa.Table]:
    """The on-chain registry as of the stored sync cursor, as the engine's registry records, and the epoch's
    `settlement_epoch_registry` row (epoch number filled in by the caller's plan). The chain is the only
    authority: registry records on Kafka are not read (each epoch names how many it ignored)."""
    source = chain_registry.registry_source(connection, contract)
    cursor = None if source is None else chain_registry.registry_cursor(connection, source.chain_id, source.contract)
    if source is None or cursor is None:
        raise RegistryNotSyncedError(contract)
    records = chain_registry.registry_records(chain_registry.registry_events(connection, source, cursor.block_number))
    ignored = sum(
        int((recorder.rows_as_of(connection, table, closing)["known_snapshot"] > prior.closing_snapshot).sum())
        for table in ("model_registered", "split_policy_set", "contributor_registered")
    )
    problems = (
        [f"{ignored} registry record(s) on Kafka ignored: registry_mode is onchain, the registry contract decides"]
        if ignored
        else []
    )
    judgment = Judgment(records.models, records.policies, records.addresses, [], problems)
    return judgment, chain_registry.epoch_registry_row(prior.epoch + 1, source, cursor)


def _latest_event_time(inputs: EpochInputs, prior: PriorState) -> datetime | None:
    """The latest event time the epoch settles: of its new events and of those still held in suspense."""
    (latest,) = inputs.new_events.select(pl.col("event_time").max()).collect().row(0)
    if not prior.held.is_empty():
        held = prior.held["event_time"].max()
        latest = held if latest is None else max(latest, held)  # type: ignore[call-overload]
    return latest


def _require_registry_caught_up(inputs: EpochInputs, prior: PriorState, row: pa.Table) -> None:
    """Refuse while the synced registry ends before the epoch's latest event (a vote could silently not apply)."""
    latest = _latest_event_time(inputs, prior)
    block_time = row["block_time"][0].as_py()
    if latest is not None and block_time < latest:
        raise RegistryBehindError(row["block_number"][0].as_py(), block_time, latest)


def _weigh_holders(
    connection: duckdb.DuckDBPyConnection,
    inputs: EpochInputs,
    prior: PriorState,
    rules: RegistryRules,
    extra_rows: dict[str, pa.Table],
) -> Callable[[list[str]], tuple[HolderWeights, pa.Table]]:
    """Holder weights as read for the tokens the epoch credits: their weights over the epoch's block range
    (`read_holder_weights`) and the range's `settlement_epoch_blocks` row."""

    def weigh(tokens: list[str]) -> tuple[HolderWeights, pa.Table]:
        registry_row = extra_rows.get(chain_registry.epoch_registry_table)
        registry_block = (
            None
            if registry_row is None
            else (
                registry_row["chain_id"][0].as_py(),
                registry_row["block_number"][0].as_py(),
                registry_row["block_time"][0].as_py(),
            )
        )
        return read_holder_weights(
            connection, tokens, prior.epoch + 1, _latest_event_time(inputs, prior), registry_block,
            rules.holder_excluded, rules.holder_dust_units_min,
        )

    return weigh


@contextmanager
def _weights_read_ahead(
    connection: duckdb.DuckDBPyConnection,
    weigh: Callable[[list[str]], tuple[HolderWeights, pa.Table]],
    named: list[str],
    extra_rows: dict[str, pa.Table],
) -> Iterator[Callable[[list[str]], HolderWeights]]:
    """The engine's source of holder weights, the weights of every token a policy `named` read on a thread while
    the epoch is split (the read and its sort are ~1 s at a million holders, mostly off the GIL).

    The engine asks for the tokens the epoch credits, known only after the split. Usually those are the tokens
    named: the weights read ahead are used, and a refusal met reading them (`HoldersBehindError`) is raised then,
    as before. Otherwise that read is waited for and dropped (its refusal too: a token credited nothing need not
    be synced) and the tokens asked for are read. The range's row goes to `extra_rows` only for weights used. The
    thread reads on the plan's connection, inside its transaction, while the split uses none; leaving the block
    waits for it, so the connection is never used by two threads at once. The read runs on one DuckDB thread:
    the split has the other core, and DuckDB's second thread cost ~0.35 s more CPU at a million holders for a
    read that finished no sooner beside it (benchmarks/RESULTS.md)."""

    def weigh_on_one_thread(tokens: list[str]) -> tuple[HolderWeights, pa.Table]:
        with _one_duckdb_thread(connection):
            return weigh(tokens)

    with ThreadPoolExecutor(1, thread_name_prefix="holder-weights") as pool:
        ahead = pool.submit(weigh_on_one_thread, named)

        def source(tokens: list[str]) -> HolderWeights:
            if tokens == named:
                weights, extra_rows[holders.epoch_blocks_table] = ahead.result()
                return weights
            wait([ahead])  # the connection is free again; whatever it read or met is not this epoch's
            weights, extra_rows[holders.epoch_blocks_table] = weigh(tokens)
            return weights

        yield source


@contextmanager
def _one_duckdb_thread(connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Run DuckDB on one thread inside the block; its thread count is given back after it.

    A DuckDB error inside the block (a weight past HUGEINT, say) aborts the transaction, which then refuses the SET
    until it is rolled back: that error is the one raised, and the count stays at one on this failed close's
    connection (slower, never wrong)."""
    (threads,) = connection.execute("SELECT current_setting('threads')").fetchone()  # type: ignore[misc]
    connection.execute("SET threads = 1")
    try:
        yield
    except BaseException:
        with suppress(duckdb.Error):
            connection.execute(f"SET threads = {int(threads)}")
        raise
    connection.execute(f"SET threads = {int(threads)}")


def read_holder_weights(
    connection: duckdb.DuckDBPyConnection,
    tokens: list[str],
    epoch: int,
    latest_event_time: datetime | None,
    registry_block: tuple[int, int, datetime] | None,
    excluded: tuple[str, ...] = (),
    dust_units_min: int = 0,
) -> tuple[HolderWeights, pa.Table]:
    """The time-weighted balances of each token's holders over the epoch's block range, and the range's
    `settlement_epoch_blocks` row.

    The range starts after the last range an epoch recorded (the first: where every token's sync started) and
    ends at the registry block in on-chain mode (`registry_block`: chain id, block, time), else at the last
    block every token's sync stored. Refuses (`HoldersBehindError`) while a token's sync ends before that block,
    or (operator mode) before the epoch's latest event time, or when no block is new since the last range.
    Never weighted: `excluded`, and every distributor the ledger knows (`holders.known_distributors`), with or
    without the `distributor` setting; the row records them all, so a re-plan uses the same list.
    """
    cursors = {}
    for token in tokens:
        cursor = holders.holder_cursor(connection, token, None if registry_block is None else registry_block[0])
        if cursor is None:
            raise HoldersBehindError(token, "the ledger holds none of its Transfer logs")
        cursors[token] = cursor
    chains = {cursor.chain_id for cursor in cursors.values()}
    if len(chains) != 1:
        raise HoldersBehindError(tokens[0], f"the tokens it pays were synced on several chains ({sorted(chains)})")
    (chain_id,) = chains
    if registry_block is not None:
        end, end_time = registry_block[1], registry_block[2]
        for token, cursor in cursors.items():
            if cursor.block_number < end:
                raise HoldersBehindError(
                    token, f"its Transfer logs are synced up to block {cursor.block_number}, before the registry "
                    f"block {end} the epoch settles with",
                )
    else:
        lowest = min(cursors.values(), key=lambda c: c.block_number)
        end, end_time = lowest.block_number, lowest.block_time
        if latest_event_time is not None and end_time < latest_event_time:
            raise HoldersBehindError(
                lowest.token, f"its Transfer logs are synced up to block {end} at {end_time}, earlier than the "
                f"epoch's latest event at {latest_event_time}",
            )
    previous = holders.last_epoch_blocks(connection)
    start = max(c.first_block for c in cursors.values()) if previous is None else previous[1] + 1
    if start > end:
        raise HoldersBehindError(
            tokens[0], f"no block after {start - 1}, where the previous epoch's range ended, is synced yet"
        )
    recorded = holders.excluded_addresses([*excluded, *holders.known_distributors(connection, chain_id)])
    weights = _weights(connection, chain_id, tokens, start, end, tuple(recorded))
    return weights, holders.epoch_blocks_row(epoch, chain_id, start, end, end_time, recorded, dust_units_min)


def recorded_epoch_blocks(connection: duckdb.DuckDBPyConnection, epoch: int) -> dict | None:
    """The block range closed epoch `epoch` weighted holders over (`settlement_epoch_blocks`: chain_id,
    from_block, to_block, excluded as a list, dust_units_min; 0 for a row stored before ledger format 12), or None:
    it recorded none, so it paid no holders."""
    if holders.epoch_blocks_table not in recorder.existing_tables(connection):
        return None
    row = connection.execute(
        f"SELECT chain_id, from_block, to_block, excluded, dust_units_min "
        f"FROM {recorder.table(holders.epoch_blocks_table)} WHERE epoch = ?",
        [epoch],
    ).fetchone()
    if row is None:
        return None
    return {
        "chain_id": int(row[0]),
        "from_block": int(row[1]),
        "to_block": int(row[2]),
        "excluded": [address for address in str(row[3]).split(",") if address],
        "dust_units_min": int(row[4] or 0),
    }


def recorded_holder_weights(
    connection: duckdb.DuckDBPyConnection, epoch: int, policies: pl.DataFrame
) -> HolderWeights | None:
    """The holder weights closed epoch `epoch` was planned with: over the block range and without the addresses
    it recorded (None: it recorded none, so it paid no holders)."""
    row = recorded_epoch_blocks(connection, epoch)
    if row is None:
        return None
    tokens = holder_tokens(policies)
    return _weights(connection, row["chain_id"], tokens, row["from_block"], row["to_block"], tuple(row["excluded"]))


def _weights(
    connection: duckdb.DuckDBPyConnection, chain_id: int, tokens: list[str], start: int, end: int, excluded: tuple
) -> HolderWeights:
    lowered = {address.lower() for address in excluded}
    return {
        token: _pairs(holders.holder_weight_units(connection, chain_id, token, start, end, lowered))
        for token in tokens
    }


def _pairs(weights: pl.DataFrame) -> WeightColumns:
    """(holder, weight) of a `holder_weight_units` frame (or `holder_weights`': decimal text), the weight as an int,
    kept as the frame (`WeightColumns.of_frame`: the allocation reads it in Int128 where exact, no Python list)."""
    return WeightColumns.of_frame(weights.select(recipient="holder", weight=pl.col("weight").cast(pl.Int128)))


def read_inputs(
    connection: duckdb.DuckDBPyConnection,
    prior: PriorState,
    closing: int,
    registry: Judgment | None = None,
    reversal_sources: tuple[str, ...] = (),
    from_rollups: bool = False,
) -> EpochInputs:
    """The epoch's new events (lazy), its reversals and their originals, and the registry at `closing`
    (`registry`: as `read_registry` judged it; default: by the default rules).

    `from_rollups`: the new events as the appends' rollups give them where that is exact (`settlement.rollups`;
    the same payables), read from the events where not, or wholly when an append of the range wrote none.
    """
    metered_files = data_files(connection, "inference_metered", closing)
    new_files = metered_files.filter(pl.col("snapshot") > prior.closing_snapshot)
    prior_files = earlier_files(connection, metered_files, prior.closing_snapshot, closing)
    reversal_files = data_files(connection, "inference_reversed", closing).filter(
        pl.col("snapshot") > prior.closing_snapshot
    )
    reversal_schema = file_tables["inference_reversed"]
    reversals = (
        # A file written before ledger format 4 has no `original_source`: null, the reversal's own source.
        pl.concat(
            [
                _with_columns_of(recorder.read_parquet(p), reversal_schema).select(reversal_schema.names)
                for p in reversal_files["path"]
            ]
        )
        if reversal_files.height
        else pl.from_arrow(reversal_schema.empty_table())
    )
    reversals = deduplicated_reversals(reversals)  # type: ignore[arg-type]
    originals = pl.DataFrame(schema={**held_schema, "arrival_snapshot": pl.Int64}).drop("epoch")
    if reversals.height:  # type: ignore[union-attr]
        wanted = (
            reversals.select(  # type: ignore[union-attr]
                event_key(pl.coalesce("original_source", "source"), "original_event_id")
            )["event_key"]
            .unique()
            .implode()
        )
        copies = (
            recorder.scan_files(connection, metered_files, event_columns)  # each row with its own snapshot
            .filter(pl.col("event_id").is_in(reversals["original_event_id"].unique().implode()))  # type: ignore[index]
            .filter(event_key().is_in(wanted))
            .select(*event_columns, pl.col("snapshot").alias("arrival_snapshot"))
            .collect()
        )
        # The original is the copy the epochs paid: of the first epoch window holding a copy, the least row in
        # column order (`_deduplicated`); a later window's copies are never paid (`stored_before_range`).
        closings = pl.Series(sorted(prior.epoch_closings.values()), dtype=pl.Int64)
        window = closings.search_sorted(copies["arrival_snapshot"], side="left").alias("_window")
        originals = (
            copies.with_columns(window)
            .sort(["source", "event_id", "_window", *event_columns])
            .unique(["source", "event_id"], keep="first", maintain_order=True)
            .drop("_window")
        )
    registry = registry or read_registry(connection, prior, closing, RegistryRules())
    rolled, resolution = None, None
    if from_rollups:
        resolution = resolve(registry.models, registry.policies, closing)
        new_originals = originals.filter(pl.col("arrival_snapshot") > prior.closing_snapshot)
        rolled = events_from_rollups(
            connection, new_files, prior.closing_snapshot, closing, resolution, new_originals, prior_files
        )
    return EpochInputs(
        closing_snapshot=closing,
        new_events=_new_events(new_files, prior_files) if rolled is None else rolled.events,
        reversals=reversals,  # type: ignore[arg-type]
        originals=originals,
        models=registry.models,
        policies=registry.policies,
        addresses=registry.addresses,
        reversal_sources=reversal_sources,
        rollup_cells=None if rolled is None else (rolled.rollup_cells, rolled.event_cells),
        payer_fees=None if rolled is None else rolled.payer_fees,
        resolution=resolution,
    )


def deduplicated_reversals(reversals: pl.DataFrame) -> pl.DataFrame:
    """One row per (source, id) of an epoch's reversals: of copies of one (a resend with another event time, maybe
    naming another original), the one that sorts first by content, as for metered events; never the first in file
    order, which depends on the batching (spec v1 section 2.2)."""
    return reversals.sort(
        "event_id", "source", "event_time", "original_event_id", pl.coalesce("original_source", "source"), "reason"
    ).unique(["source", "event_id"], keep="first", maintain_order=True)


def earlier_files(
    connection: duckdb.DuckDBPyConnection, metered_files: pl.DataFrame, prior_closing: int, closing: int
) -> pl.DataFrame:
    """The metered files of earlier epochs (of `metered_files`, `data_files` as of `closing`: added at or before
    `prior_closing`), each with the least and greatest event id the catalog recorded for it (`least`, `greatest`;
    null when none was): the id checks below open only the files whose ids may reach the new ones."""
    prior_files = metered_files.filter(pl.col("snapshot") <= prior_closing)
    if prior_files.is_empty():
        return prior_files.with_columns(least=pl.lit(None, pl.String), greatest=pl.lit(None, pl.String))
    bounds = recorder.column_bounds(connection, "inference_metered", "event_id", closing)
    return prior_files.join(bounds, on="path", how="left")


def _new_events(new_files: pl.DataFrame, prior_files: pl.DataFrame) -> pl.LazyFrame:
    """The epoch's new events, read from their files, deduplicated by (source, id), without the copies of an
    event stored before the epoch's range (`prior_files`: the metered files of earlier epochs)."""
    new_events = _deduplicated(_scan(new_files, event_columns, file_tables["inference_metered"]))
    stored_before = stored_before_range(new_events, prior_files)
    if stored_before.height:
        new_events = new_events.filter(~pl.struct("source", "event_id").is_in(stored_before.to_struct().implode()))
    return new_events


def stored_before_range(new_events: pl.LazyFrame, prior_files: pl.DataFrame) -> pl.DataFrame:
    """The (source, event_id) pairs of `new_events` that a row of `prior_files` already holds: an event resent with
    another event time, which ingest's duplicate probe (by event time) did not see, arriving in a later epoch. An
    event is paid once, in the epoch its first copy arrived in. Only the earlier rows whose ids lie within the new
    ids' range are read: only the files whose recorded id bounds (`earlier_files`) reach that range are opened, so
    when ids grow with arrival no earlier file is, however many epochs the ledger holds (Parquet statistics then
    prune the row groups of those opened)."""
    keys = ["source", "event_id"]
    none = pl.DataFrame(schema={"source": pl.String, "event_id": pl.String})
    if prior_files.is_empty():
        return none
    bounds = new_events.select(pl.col("event_id").min().alias("least"), pl.col("event_id").max().alias("greatest"))
    least, greatest = bounds.collect().row(0)
    if least is None:
        return none
    prior_files = _files_holding_new_ids(new_events, files_holding_ids_between(prior_files, least, greatest))
    if prior_files.is_empty():
        return none
    earlier = (
        _scan(prior_files, keys, file_tables["inference_metered"])
        .filter(pl.col("event_id").is_between(pl.lit(least), pl.lit(greatest)))
        .unique()
    )
    return earlier.join(new_events.select(keys).unique(), on=keys, how="semi").sort(keys).collect()


def _files_holding_new_ids(new_events: pl.LazyFrame, prior_files: pl.DataFrame) -> pl.DataFrame:
    """Those of `prior_files` (with their recorded id bounds) whose bounds hold one of the new ids. Only the new ids
    not above every earlier file's greatest can be in one (a resend of an old id, among ids growing with arrival):
    when at most `resent_ids_matched_max`, each file is matched against them; else every file is kept."""
    if prior_files.is_empty() or "least" not in prior_files.columns or prior_files["greatest"].null_count():
        return prior_files
    ceiling = prior_files["greatest"].max()
    # Rows, not distinct ids, are counted: the scan may stop early, and more rows than the bound keep every file.
    below = (
        new_events.select("event_id")
        .filter(pl.col("event_id") <= pl.lit(ceiling))
        .head(resent_ids_matched_max + 1)
        .collect()["event_id"]
    )
    if below.len() > resent_ids_matched_max:
        return prior_files
    below = below.unique().sort()
    # A file holds one iff some id lies in [least, greatest]; a file without recorded bounds is always kept.
    first = below.search_sorted(prior_files["least"].fill_null(""), side="left")
    after = below.search_sorted(prior_files["greatest"], side="right")
    return prior_files.filter(prior_files["least"].is_null() | (after > first))


def _deduplicated(new_events: pl.LazyFrame) -> pl.LazyFrame:
    # Ingest already drops duplicates, so one counting pass usually shows there is nothing to drop
    # and spares every later pass over the events a deduplication. It counts 64-bit hashes of the
    # ids (about twice as fast as counting the strings): equal ids hash equally, so a duplicate is
    # never missed, and a rare hash collision only costs the exact deduplication below. That one
    # keeps, of ids stored twice with different content, the least row in column order: the same
    # choice on every run.
    # An event is its (source, id): the same id from two sources is two events, both paid.
    # The hashes are collected and sorted, then neighbours compared: polars' `n_unique` over a scan counts on one
    # thread (27 s CPU at 100M events), the scan and the sort use every core (13 s CPU).
    hashes = new_events.select(pl.struct("source", "event_id").hash().alias("key_hash")).collect()["key_hash"]
    if _holds_equal_values(hashes):
        new_events = new_events.sort(event_columns).unique(["source", "event_id"], keep="first", maintain_order=True)
    return new_events


def _holds_equal_values(values: pl.Series) -> bool:
    """Whether two of `values` are equal (sorted, then each compared with its neighbour)."""
    if values.len() < 2:
        return False
    ordered = values.sort(multithreaded=True)
    return bool((ordered.slice(1) == ordered.slice(0, ordered.len() - 1)).any())


def plan_from_ledger(
    ledger: Ledger,
    progress: Progress | None = None,
    check_inputs: Callable[[PriorState, int], object] | None = None,
    rules: RegistryRules | None = None,
    registry_contract: str | None = None,
    from_rollups: bool = False,
) -> tuple[EpochPlan, dict]:
    """Plan the next epoch over the ledger as it is now; return the plan, its reversal rows and the
    registry records it refuses (`registry_refused`, judged by `rules`; default: the open defaults).

    `check_inputs(prior, closing_snapshot)` runs before the epoch's events and registry are read, and
    refuses by raising (`settlement.input_checks`). `from_rollups`: read the new events from the appends' rollups
    where that is exact (`settlement.rollups`), the same plan. When a policy names `holders:<token>`, the holders'
    weights over the epoch's block range are read (`read_holder_weights`; `rules.holder_excluded` are never paid).
    """
    rules = rules or RegistryRules()
    step = progress or (lambda name, done, total: None)
    step(_steps[0], 0, len(_steps))
    prior = read_prior(ledger.connection)
    closing = ledger.current_snapshot()
    if check_inputs is not None:
        check_inputs(prior, closing)
    step(_steps[1], 1, len(_steps))
    extra_rows: dict[str, pa.Table] = {}
    if registry_contract is None:
        registry = read_registry(ledger.connection, prior, closing, rules)
    else:  # on-chain mode (`registry_mode = onchain`): the contract's state as of the synced block
        registry, extra_rows[chain_registry.epoch_registry_table] = read_chain_registry(
            ledger.connection, registry_contract, prior, closing
        )
    inputs = read_inputs(ledger.connection, prior, closing, registry, rules.reversal_sources, from_rollups)
    if registry_contract is not None:
        _require_registry_caught_up(inputs, prior, extra_rows[chain_registry.epoch_registry_table])
        providers = inputs.new_events.select(pl.col("compute_provider").unique()).collect()["compute_provider"]
        accounts = [*providers.to_list(), *prior.held["compute_provider"].to_list()]
        inputs = dataclasses.replace(inputs, addresses=chain_registry.with_own_addresses(inputs.addresses, accounts))
    step(_steps[2], 2, len(_steps))
    named = holder_tokens(registry.policies)
    with ExitStack() as stack:
        if named:  # a policy pays token holders: weigh them (read ahead) if the epoch credits them
            weigh = _weigh_holders(ledger.connection, inputs, prior, rules, extra_rows)
            inputs = dataclasses.replace(
                inputs,
                holder_weights=stack.enter_context(_weights_read_ahead(ledger.connection, weigh, named, extra_rows)),
                holder_dust_units_min=rules.holder_dust_units_min,
            )
        plan = plan_epoch(inputs, prior)
    # A rollup row stands for many events: it may be split, never held in suspense one by one (settlement.rollups).
    require(plan.suspense_items["event_id"].null_count() == 0, "no rollup row is held in suspense")
    refusals = [
        f"{row['event_type']} `{row['event_id']}` of source `{row['source']}` refused ({row['reason_code']}): "
        f"{row['reason']}"
        for row in registry.refused
    ]
    plan = dataclasses.replace(plan, problems=sorted({*plan.problems, *registry.problems, *refusals}))
    step(_steps[3], 3, len(_steps))
    return plan, {
        "reversals": inputs.reversals,
        "registry_refused": registry.refused,
        "extra_rows": extra_rows,
        "rollup_cells": inputs.rollup_cells,
    }


def write_plan(
    ledger: Ledger,
    plan: EpochPlan,
    reversal_rows: pl.DataFrame,
    registry_refused: list[dict] | None = None,
    extra_rows: dict[str, pa.Table] | None = None,
) -> int:
    """Append the plan in one transaction, refusing if another epoch closed meanwhile; the registry records
    it refused become dead letters in the same transaction."""
    now = datetime.now(UTC)
    epoch_row = pa.Table.from_pylist(
        [figures.epoch_row(plan, now)],
        schema=tables.epoch_schema,
    )
    reversal_table = plan.reversals.select(
        pl.lit(plan.epoch, pl.Int64).alias("epoch"),
        "event_id",
        "original_event_id",
        "outcome",
        pl.col("fee_micros"),
        "settled_snapshot",
        "source",
        "original_source",
    )
    with ThreadPoolExecutor(1) as pool:  # the two largest tables (a million holders' rows each) converted side by side
        postings = pool.submit(_arrow, plan.postings, tables.posting_schema)
        payables = _arrow(plan.payables, tables.payable_schema)
        postings_rows = postings.result()
    rows = {
        "settlement_epoch": epoch_row,
        "settlement_posting": postings_rows,
        "settlement_payable": payables,
        "settlement_suspense_item": _arrow(plan.suspense_items, tables.suspense_item_schema),
        "settlement_suspense_release": _arrow(plan.suspense_releases, tables.suspense_release_schema),
        "settlement_reversal": _arrow(reversal_table, tables.reversal_schema),
        "dead_letter": pa.concat_tables(
            [_dead_letters(plan, reversal_rows, now), _registry_dead_letters(plan.epoch, registry_refused or [], now)]
        ),
    }

    def still_next(connection: duckdb.DuckDBPyConnection) -> None:
        (latest,) = connection.execute(
            f"SELECT coalesce(max(epoch), 0) FROM {recorder.table('settlement_epoch')}"
        ).fetchone()
        if latest != plan.epoch - 1:
            raise EpochConflictError(plan.epoch, latest)

    # The on-chain registry block the epoch settled with (settlement_epoch_registry), the block range holders'
    # balances were weighted over (settlement_epoch_blocks).
    rows.update(extra_rows or {})
    if not plan.holder_dust.is_empty():  # the holders whose carried dust changed
        rows[holders.holder_dust_table] = _arrow(
            plan.holder_dust.with_columns(epoch=pl.lit(plan.epoch, pl.Int64)), holders.holder_dust_schema
        )
    return ledger.append_records(rows, precondition=still_next)


def latest_epoch(connection: duckdb.DuckDBPyConnection) -> int:
    """The last closed epoch (0 before the first)."""
    (latest,) = connection.execute(
        f"SELECT coalesce(max(epoch), 0) FROM {recorder.table('settlement_epoch')}"
    ).fetchone()
    return int(latest)


def write_plan_once(
    ledger: Ledger,
    plan: EpochPlan,
    reversal_rows: pl.DataFrame,
    registry_refused: list[dict] | None = None,
    extra_rows: dict[str, pa.Table] | None = None,
) -> int | None:
    """Write the plan as the epoch's only closer: the new snapshot, or None when another process closed it.

    The plan was made without the lock (planning is the long part); with the `close-epoch` step lock
    held, the ledger is read again: an epoch at or past `plan.epoch` means another process closed it
    first, and nothing is written (no file either). `write_plan`'s in-transaction check stays as a
    second guard for a writer that does not take the lock.
    """
    with ledger.step_lock(close_step):
        if ledger.reading(lambda: latest_epoch(ledger.connection), "read the latest epoch") >= plan.epoch:
            return None
        if ledger.recorder.compactions_across(plan.closing_snapshot):
            raise CompactedWhilePlanningError(plan.epoch, plan.closing_snapshot)
        if plan.closing_snapshot not in ledger.recorder.snapshot_times([plan.closing_snapshot]):
            raise ExpiredWhilePlanningError(plan.epoch, plan.closing_snapshot)
        return write_plan(ledger, plan, reversal_rows, registry_refused, extra_rows)


def _arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    return frame.select(schema.names).to_arrow().cast(schema)


def _dead_letters(plan: EpochPlan, reversal_rows: pl.DataFrame, now: datetime) -> pa.Table:
    # Named apart from the reversal's own `reason` (refund, chargeback), which the rows also carry.
    dead = plan.reversals.filter(pl.col("outcome") == rev.dead_letter).select(
        "source",
        "event_id",
        pl.col("reason").alias("dead_letter_reason"),
        pl.col("reason_code").alias("dead_letter_code"),
    )
    source = reversal_rows.join(dead, on=["source", "event_id"]).sort(["event_id", "source"])
    records = []
    for row in source.iter_rows(named=True):
        fields = {k: v for k, v in row.items() if k not in ("dead_letter_reason", "dead_letter_code")}
        records.append(
            _dead_letter(
                row,
                fields,
                now,
                f"settlement epoch {plan.epoch}: {row['dead_letter_reason']}",
                "data.original_event_id",
                "ai.inference.reversed.v1",
                str(row["dead_letter_code"]),
            )
        )
    return pa.Table.from_pylist(records, schema=dead_letter_schema)


def _dead_letter(
    position: dict, fields: dict, now: datetime, reason: str, error_field: str, event_type: str, reason_code: str
) -> dict:
    """A `dead_letter` row the settlement writes for a record it refused, at the record's Kafka position; its `raw`
    is the record's `fields` as canonical JSON text (every value as text)."""
    raw = json.dumps({k: str(v) for k, v in fields.items()}, sort_keys=True).encode()
    return {
        "kafka_topic": position["kafka_topic"],
        "kafka_partition": position["kafka_partition"],
        "kafka_offset": position["kafka_offset"],
        "ingest_batch_id": position["ingest_batch_id"],
        "received_at": now,
        "reason": reason,
        "error_field": error_field,
        "event_id": position["event_id"],
        "event_type": event_type,
        "raw": raw,
        "raw_size_bytes": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "reason_code": reason_code,
    }


# The field a registry refusal is about, per reason code.
_refused_fields = {"unauthorized_source": "source", "policy_notice": "data.effective_from"}


def _registry_dead_letters(epoch: int, refused: list[dict], now: datetime) -> pa.Table:
    """One dead letter per registry record refused this epoch, at the record's position (authority.judge)."""
    records = []
    for row in sorted(refused, key=lambda r: (r["kafka_topic"], r["kafka_partition"], r["kafka_offset"])):
        fields = {k: v for k, v in row.items() if k not in ("reason", "reason_code", "known_snapshot")}
        reason = f"settlement epoch {epoch}: {row['reason']}"
        error_field = _refused_fields.get(row["reason_code"], "data.model_id")
        records.append(_dead_letter(row, fields, now, reason, error_field, row["event_type"], row["reason_code"]))
    return pa.Table.from_pylist(records, schema=dead_letter_schema)
