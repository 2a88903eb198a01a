"""The ledger's format version, and the steps that move an older ledger forward (`royalty migrate`).

Stored data outlives code. A ledger records the format it is written in as rows of the inlined
table `ledger_format`, one per step applied (a new ledger gets one row, the current format).
A ledger without that table was written before formats were recorded: it is format 1.

Code of this version writes and reads ledgers of `format_version_current` only. An older ledger
is refused with the command that moves it forward; a newer one with the advice to upgrade.
`royalty migrate` applies the missing steps in order, each in one DuckLake transaction that also
records its row, so a migration killed halfway leaves a ledger at a well-defined earlier format.
`royalty verify` accepts a schema change (`tables_altered`) only in a snapshot that recorded a
step this way.

Adding a step (a change to a table, a digest or a rule):
1. Append a `FormatStep` to `format_steps` below with the next version and a one-line summary;
   its `apply(connection)` runs inside the migration's transaction, must be idempotent (the table
   may already have the new shape when it was created by this version's DDL) and may use
   `add_column_if_missing`.
2. Change the table's declaration (`ledger/tables.py`, the event schemas, or a `register_table`
   call) so new ledgers are created in the new shape directly.
3. Extend `tests/ledger/test_format.py` if the step needs more than "the v1 ledger migrates and
   works".
"""

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from ledger.connection import catalog_alias
from ledger.errors import LedgerFormatError
from schemas.arrow import timestamp_type

format_table = "ledger_format"
format_version_first = 1  # every ledger written before this table existed

ledger_format_schema = pa.schema(
    [
        pa.field("format_version", pa.int32(), nullable=False),
        pa.field("applied_at", timestamp_type, nullable=False),
        pa.field("writer", pa.string(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class FormatStep:
    """One step from format `version - 1` to `version`."""

    version: int
    summary: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]
    # Rows the step adds to the ledger's inlined tables, through the ledger (a `ledger.Ledger`: its inserts are
    # digested as every writer's), after `apply` and in the same transaction.
    record: Callable[[Any], None] | None = None


def _record_format_only(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 2 only starts recording the format: the table itself is created by the migration."""


def _record_inlined_digests(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 3 digests every later transaction's inlined rows; the table `inlined_digest` is created by the
    migration, and verify checks inlined rows from the snapshot that created it on (earlier ones: a warning)."""


def _key_events_by_source_and_id(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 4 keys events by (source, id), as CloudEvents does: a reversal may name its original's
    source, and the settlement's suspense and reversal rows record sources. Rows written before have
    NULL there; the settlement reads them as the one metered event with that id (ids were unique then)."""
    existing = ledger_tables(connection)  # a table not there yet is created in the new shape
    for table, column in (
        ("inference_reversed", "original_source"),
        ("settlement_suspense_item", "source"),
        ("settlement_suspense_release", "source"),
        ("settlement_reversal", "source"),
        ("settlement_reversal", "original_source"),
    ):
        if table in existing:
            add_column_if_missing(connection, table, column, "VARCHAR")


def _fingerprint_file_sources(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 5 knows file sources by content: tables `file_source_position` (how far each file or stdin
    source was read, with the size and SHA-256 of those bytes) and `dead_letter_line` (each file dead
    letter's line fingerprint). Positions stored before have none: ingest trusts each once, with a warning."""
    from ledger.tables import create_statements  # ledger.tables imports this module

    for statement in create_statements(catalog_alias, ["file_source_position", "dead_letter_line"]):
        connection.execute(statement)


def _add_dead_letter_reason_codes(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 6 stores each dead letter's stable `reason_code` (schemas.reason_codes). Rows stored before keep
    NULL there (the ledger is append-only): the `dead_letters` view derives their code from the reason text."""
    if "dead_letter" in ledger_tables(connection):
        add_column_if_missing(connection, "dead_letter", "reason_code", "VARCHAR")


def _record_compactions(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 7 records compactions (ledger/compaction.py): tables ledger_compaction (the merged file and the proof
    it holds exactly the retired files' rows) and ledger_compaction_retired. Before, no file was ever retired."""
    from ledger.tables import compaction_retired_table, compaction_table, create_statements

    for statement in create_statements(catalog_alias, [compaction_table, compaction_retired_table]):
        connection.execute(statement)


def _know_the_onchain_registry(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 8 knows the on-chain registry: tables registry_event (ModelRegistry's events in the ledger's names),
    registry_sync (the block ranges read, the cursor) and settlement_epoch_registry (the registry block an epoch
    settled with), declared by settlement.chain_registry and created by the first writer that uses them, as the
    settlement's tables are. Nothing to change in stored rows; code of format 7 must not settle such a ledger."""


def _commit_manifests(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 9 commits each epoch's bundle: table settlement_manifest (the epoch's `manifest.json`, verbatim, and its
    rules version), written with the epoch's tree and created on first use. An epoch whose tree is written from
    this format on proposes the manifest's SHA-256 as its ledger digest (settlement-v2); epochs whose tree was
    written before have no row and keep their settlement-v1 digest, never recomputed. No stored row changes."""


def _know_token_holders(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 10 knows token holders: tables holder_transfer (an ERC-20's Transfer logs), holder_sync (the block
    ranges read, the cursor) and settlement_epoch_blocks (the block range an epoch weighted holders' balances
    over), declared by settlement.holders and created by the first writer that uses them. Nothing to change in
    stored rows; code of format 9 must not settle such a ledger (it would not pay `holders:` recipients)."""


def _know_migrated_distributors(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 11 knows distributors deployed with `--migrate-from`: table settlement_migration (an epoch whose leaves
    are net of the predecessor's last root, written with its tree; created on first use, as the settlement's tables
    are), which the reconciliation's root_vs_payables check reads. Nothing to change in stored rows; code of format
    10 must not settle such a ledger (its reconciliation would flag every migrated epoch)."""



def _carry_holder_dust(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 12 carries token holders' sub-threshold parts forward (`holder_dust_units_min`): table
    settlement_holder_dust (created on first use, declared by settlement.holders) and the column
    settlement_epoch_blocks.dust_units_min (NULL in rows stored before: those epochs carried nothing, the threshold
    was 0). An epoch that pays holders is published under settlement-v3, with the holders' weights and dust."""
    if "settlement_epoch_blocks" in ledger_tables(connection):
        add_column_if_missing(connection, "settlement_epoch_blocks", "dust_units_min", "BIGINT")


def _roll_up_metered_events(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 13 rolls metered events up as they are appended: table metered_rollup (per append, exact fee sums,
    counts and event-time bounds per model, compute provider, source and event hour), which close-epoch may
    read instead of the events. A ledger migrated here gets the table empty: its events appended before close from
    the events (the rollup path is used only for snapshot ranges whose every append wrote rollups)."""
    from ledger.tables import create_statements, rollup_table

    for statement in create_statements(catalog_alias, [rollup_table]):
        connection.execute(statement)


def _bound_rollup_groups(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 16 lets close-epoch skip reading event ids and payers: metered_rollup's columns group_event_id_min,
    group_event_id_max and group_keys_unique (NULL in rows stored before: those ranges close from the events) and
    table metered_payer_rollup (per append, fee sum and count per payer)."""
    from ledger.tables import create_statements, payer_rollup_table, rollup_table

    for statement in create_statements(catalog_alias, [payer_rollup_table]):
        connection.execute(statement)
    if rollup_table in ledger_tables(connection):
        for column, kind in [
            ("group_event_id_min", "VARCHAR"),
            ("group_event_id_max", "VARCHAR"),
            ("group_keys_unique", "BOOLEAN"),
        ]:
            add_column_if_missing(connection, rollup_table, column, kind)


def _checkpoint_holder_balances(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 17 keeps token holders' balance checkpoints: table holder_balance_checkpoint (every address's balance
    of a token at the end of a synced range, stored by `sync-holders` with the range once enough transfers came
    after the previous one; created on first use). Balances and weights read the latest checkpoint before the
    blocks they need and the transfers after it. Nothing to change in stored rows: a ledger without checkpoints
    reads every transfer, as before."""


def _keep_holders_balance_blocks(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 22 keeps each holder's balance-blocks (its balance summed over every block so far) in the balance
    checkpoints: columns holder_balance_checkpoint.balance_blocks_high and balance_blocks_low (NULL in checkpoints
    stored before). An epoch's weights are then a difference of two checkpoints' balance-blocks and the transfers
    after each, not every transfer of the epoch. The next checkpoint after a migration sums them from every
    transfer once; until then weights read the transfers, as before."""
    if "holder_balance_checkpoint" in ledger_tables(connection):
        for column in ("balance_blocks_high", "balance_blocks_low"):
            add_column_if_missing(connection, "holder_balance_checkpoint", column, "VARCHAR")


def _store_internal_tree_nodes(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 23 stores a payout tree's internal nodes only in settlement_tree_node (the first leaves - 1 nodes, half
    the bytes); a proof's sibling that is a leaf is hashed from its settlement_proof row. Trees written before keep
    every node and are read as they are. Nothing to change in stored rows; code of an earlier format would refuse the
    proofs of a tree written since (a node it does not find), hence the step."""


def _flush_bookkeeping_rows(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 18 lets `royalty expire` move the bookkeeping tables' inlined rows (offsets, batches, checksums, row
    digests, compaction records) out of the catalog into Parquet files whose SHA-256 it records in `file_checksum`
    (ledger/catalog_flush.py); verify accepts DuckLake's `flushed_inlined` change for those tables only. Nothing to
    change in stored rows; code of an earlier format would call a flushed ledger's history a violation, hence the
    step."""


def _record_metered_file_sums(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 19 reconciles each metered data file once: table settlement_file_sum (declared by the settlement; each
    close records the per-file event count, fee sum and SHA-256 of the files it reconciled for the first time), which
    the reconciliation's events_vs_epoch reads instead of re-reading every stored event at every close. Created here
    when the settlement declared it, else by the first writer. No stored row changes: a migrated ledger's files are
    summed at its next close and recorded then."""
    from ledger.tables import create_statements  # nothing when the settlement did not declare the table

    for statement in create_statements(catalog_alias, ["settlement_file_sum"]):
        connection.execute(statement)


def _record_flushed_files(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 20 checks the rows a bookkeeping flush moves out of the catalog once, when it writes them, and records
    each file it wrote in table ledger_flushed_file (its SHA-256, row count, snapshot range and the SHA-256 of those
    snapshots' recorded digests); `royalty verify` checks such a file by its bytes and the recorded digests by that
    SHA-256 instead of digesting its rows again. No stored row changes: files flushed before keep being digested row by
    row at every verify."""
    from ledger.tables import create_statements, flushed_file_table

    for statement in create_statements(catalog_alias, [flushed_file_table]):
        connection.execute(statement)


def _summarize_compactions(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 21 sums up each compaction's retired files in table ledger_compaction_summary (their count, rows and the
    digest of their paths), written in the compaction's own transaction; `royalty verify` counts and digests the files a
    snapshot expiry dropped from those sums instead of hashing every retired path again. The migration sums up every
    earlier compaction from its retired-file rows (`_summarize_earlier_compactions`)."""
    from ledger.tables import compaction_summary_table, create_statements

    for statement in create_statements(catalog_alias, [compaction_summary_table]):
        connection.execute(statement)


def _summarize_earlier_compactions(ledger: Any) -> None:
    from ledger.compaction import summarize_compactions

    summarize_compactions(ledger)


def _store_tree_nodes(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 14 stores each payout tree's nodes in binary (table settlement_tree_node, created on first use) and reads
    an account's proof off them; the leaves stay in settlement_proof, whose hex `proof` becomes nullable (NULL for
    trees written from now on; the proofs stored before are kept and read as they are)."""
    nullable = connection.execute(
        "SELECT is_nullable FROM duckdb_columns() WHERE database_name = ? AND table_name = 'settlement_proof' "
        "AND column_name = 'proof'",
        [catalog_alias],
    ).fetchone()
    if nullable is not None and not nullable[0]:  # a table created in the new shape is left as it is
        connection.execute(f"ALTER TABLE {catalog_alias}.main.settlement_proof ALTER COLUMN proof DROP NOT NULL")


def _record_snapshot_expiries(connection: duckdb.DuckDBPyConnection) -> None:
    """Format 15 expires old snapshots under a retention policy (ledger/expiry.py): table ledger_snapshot_expiry
    records each expiry (the snapshots expired, a digest of their history, the retired files it dropped, chained to
    the previous expiry), which `royalty verify` checks in place of the history that is gone. Nothing expired before."""
    from ledger.tables import create_statements, expiry_table

    for statement in create_statements(catalog_alias, [expiry_table]):
        connection.execute(statement)


format_steps: list[FormatStep] = [
    FormatStep(2, "record the ledger format version (table ledger_format)", _record_format_only),
    FormatStep(3, "record a digest of each transaction's inlined rows (table inlined_digest)", _record_inlined_digests),
    FormatStep(
        4,
        "key events by (source, id): inference_reversed.original_source, source columns of the settlement's "
        "suspense and reversal tables",
        _key_events_by_source_and_id,
    ),
    FormatStep(
        5,
        "know file sources by content: tables file_source_position (fingerprints) and dead_letter_line",
        _fingerprint_file_sources,
    ),
    FormatStep(
        6,
        "a stable reason_code on each dead letter (dead_letter.reason_code; the dead_letters view derives it for "
        "older rows from the reason text)",
        _add_dead_letter_reason_codes,
    ),
    FormatStep(
        7,
        "record compactions: tables ledger_compaction (merged file, SHA-256, row count and rows digest) and "
        "ledger_compaction_retired (the files each retired)",
        _record_compactions,
    ),
    FormatStep(
        8,
        "know the on-chain registry: tables registry_event, registry_sync and settlement_epoch_registry "
        "(created on first use)",
        _know_the_onchain_registry,
    ),
    FormatStep(
        9,
        "commit each epoch's bundle: table settlement_manifest (created on first use); the ledger digest of an "
        "epoch whose tree is written from now on is the SHA-256 of its manifest (settlement-v2)",
        _commit_manifests,
    ),
    FormatStep(
        10,
        "know token holders: tables holder_transfer, holder_sync and settlement_epoch_blocks (created on first use)",
        _know_token_holders,
    ),
    FormatStep(
        11,
        "know migrated distributors: table settlement_migration (created on first use); root_vs_payables subtracts "
        "the predecessor's last root from a migrated epoch's payables",
        _know_migrated_distributors,
    ),
    FormatStep(
        12,
        "carry token holders' dust: table settlement_holder_dust (created on first use) and column "
        "settlement_epoch_blocks.dust_units_min (NULL before: no dust carried)",
        _carry_holder_dust,
    ),
    FormatStep(
        13,
        "roll metered events up at append: table metered_rollup (fee sums, counts and event-time bounds per model, "
        "provider, source and event hour; empty for the events appended before)",
        _roll_up_metered_events,
    ),
    FormatStep(
        14,
        "store payout trees' nodes, not every proof in hex: table settlement_tree_node (created on first use); "
        "settlement_proof.proof NULL from now on (kept for the trees written before)",
        _store_tree_nodes,
    ),
    FormatStep(
        15,
        "expire old snapshots under a retention policy: table ledger_snapshot_expiry (each expiry's snapshots, the "
        "digest of their history and the retired files it dropped, chained), checked by verify",
        _record_snapshot_expiries,
    ),
    FormatStep(
        16,
        "close epochs from rollups without reading event ids or payers: metered_rollup's group id bounds "
        "(group_event_id_min/max, group_keys_unique; NULL before) and table metered_payer_rollup (per append, fee sum "
        "and count per payer)",
        _bound_rollup_groups,
    ),
    FormatStep(
        17,
        "checkpoint token holders' balances: table holder_balance_checkpoint (created on first use; balances read "
        "the latest checkpoint and the transfers after it)",
        _checkpoint_holder_balances,
    ),
    FormatStep(
        18,
        "bound the catalog: royalty expire moves the bookkeeping tables' inlined rows into Parquet files with their "
        "SHA-256 recorded (each row keeps its snapshot and digest check); verify accepts that flush for them only",
        _flush_bookkeeping_rows,
    ),
    FormatStep(
        19,
        "reconcile each metered data file once: table settlement_file_sum (per file: event count, fee sum, SHA-256, "
        "recorded by the close that first reconciled it); events_vs_epoch reads it instead of every stored event",
        _record_metered_file_sums,
    ),
    FormatStep(
        20,
        "check bookkeeping rows once, when a flush moves them out of the catalog: table ledger_flushed_file (each "
        "flushed file's SHA-256, rows, snapshot range and digests' SHA-256); verify checks those files by their bytes",
        _record_flushed_files,
    ),
    FormatStep(
        21,
        "sum up each compaction's retired files: table ledger_compaction_summary (count, rows, digest of their paths; "
        "earlier compactions summed up by the migration); verify checks the files an expiry dropped against those sums",
        _summarize_compactions,
        _summarize_earlier_compactions,
    ),
    FormatStep(
        22,
        "keep holders' balance-blocks in the balance checkpoints: columns holder_balance_checkpoint."
        "balance_blocks_high/low (NULL before); epochs weigh holders as a difference of two checkpoints",
        _keep_holders_balance_blocks,
    ),
    FormatStep(
        23,
        "store payout trees' internal nodes only (settlement_tree_node: half the bytes); a proof's leaf sibling is "
        "hashed from its settlement_proof row; trees written before keep every node",
        _store_internal_tree_nodes,
    ),
]

format_version_current = format_steps[-1].version if format_steps else format_version_first


def check_steps(steps: list[FormatStep]) -> None:
    """The steps are numbered 2, 3, ... without a gap (checked at import: a merge slip is a crash)."""
    expected = list(range(format_version_first + 1, format_version_first + 1 + len(steps)))
    if [step.version for step in steps] != expected:
        raise RuntimeError(f"ledger format steps are numbered {[s.version for s in steps]}, expected {expected}")


check_steps(format_steps)


def writer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ledger_tables(connection: duckdb.DuckDBPyConnection) -> set[str]:
    return {
        name
        for (name,) in connection.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [catalog_alias]
        ).fetchall()
    }


def stored_format_version(connection: duckdb.DuckDBPyConnection) -> int | None:
    """The ledger's format; None for a ledger with no tables yet (a new one)."""
    tables = ledger_tables(connection)
    if not tables:
        return None
    if format_table not in tables:
        return format_version_first
    (version,) = connection.execute(
        f"SELECT max(format_version) FROM {catalog_alias}.main.{format_table}"
    ).fetchone()
    if version is not None:
        return int(version)
    # An empty format table alone is a new ledger another process is creating (or whose creation was
    # interrupted): it creates and stamps that table before any other. Beside older tables it is a
    # format-1 ledger whose migration stopped before its first step was recorded.
    return None if tables == {format_table} else format_version_first


def require_current_format(version: int | None, display: str) -> None:
    """Refuse a ledger this code may not read or write, saying what to do."""
    if version is None or version == format_version_current:
        return
    if version > format_version_current:
        raise LedgerFormatError(
            f"ledger `{display}` is in format {version}, written by a newer royalty-engine; this one "
            f"reads and writes format {format_version_current}: upgrade royalty-engine to use it"
        )
    raise LedgerFormatError(
        f"ledger `{display}` is in format {version}; this royalty-engine reads and writes format "
        f"{format_version_current}. Back it up (`royalty backup`, or copy the folder / dump the catalog), "
        f"stop every process using it, then run `royalty migrate --lake {display}`"
    )


def record_format(connection: duckdb.DuckDBPyConnection, version: int, summary: str) -> None:
    """Insert one `ledger_format` row (inside the caller's transaction)."""
    connection.execute(
        f"INSERT INTO {catalog_alias}.main.{format_table} VALUES (?, ?, ?, ?)",
        [version, datetime.now(UTC), writer_name(), summary],
    )


def pending_steps(version: int) -> list[FormatStep]:
    return [step for step in format_steps if step.version > version]


def add_column_if_missing(
    connection: duckdb.DuckDBPyConnection, table: str, column: str, duckdb_type: str
) -> None:
    """ALTER TABLE ... ADD COLUMN unless the table already has it (created in the new shape)."""
    (present,) = connection.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE database_name = ? AND table_name = ? AND column_name = ?",
        [catalog_alias, table, column],
    ).fetchone()
    if not present:
        connection.execute(f"ALTER TABLE {catalog_alias}.main.{table} ADD COLUMN {column} {duckdb_type}")


@dataclass(frozen=True)
class MigrationResult:
    """What `royalty migrate` did."""

    format_before: int
    format_after: int
    steps_applied: list[str]
