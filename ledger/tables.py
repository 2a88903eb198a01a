"""The ledger's tables: one per event type (derived from the event schemas) and bookkeeping.

Every table is append-only. Event and dead-letter rows are Parquet files written by the
ledger itself, so that each file's checksum is recorded in the same transaction that adds it.
The small bookkeeping tables (offsets, batches, checksums) are inlined into the catalog.
"""

import pyarrow as pa

from ledger import constants
from ledger.format import format_table, ledger_format_schema
from ledger.inlined_digest import digest_table, inlined_digest_schema
from schemas.arrow import ledger_schemas, position_fields, timestamp_type
from schemas.errors import require

dead_letter_schema = pa.schema(
    [
        *position_fields,
        pa.field("received_at", timestamp_type, nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("error_field", pa.string()),
        pa.field("event_id", pa.string()),
        pa.field("event_type", pa.string()),
        pa.field("raw", pa.binary(), nullable=False),
        pa.field("raw_size_bytes", pa.int64(), nullable=False),
        pa.field("raw_sha256", pa.string(), nullable=False),
        # A `schemas.reason_codes.ReasonCode`, filled by every writer. Last, where format step 6 adds it to an
        # older table; NULL in the rows stored before (the `dead_letters` view derives theirs from `reason`).
        pa.field("reason_code", pa.string()),
    ]
)

# One row per partition an append advanced: the next offset to read there.
ingest_offset_schema = pa.schema(
    [
        pa.field("kafka_topic", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("first_offset", pa.int64(), nullable=False),
        pa.field("next_offset", pa.int64(), nullable=False),
        pa.field("ingest_batch_id", pa.string(), nullable=False),
    ]
)

ingest_batch_schema = pa.schema(
    [
        pa.field("ingest_batch_id", pa.string(), nullable=False),
        pa.field("committed_at", timestamp_type, nullable=False),
        pa.field("writer", pa.string(), nullable=False),
        pa.field("messages", pa.int64(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("duplicates", pa.int64(), nullable=False),
        pa.field("dead_letters", pa.int64(), nullable=False),
    ]
)

file_checksum_schema = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("ingest_batch_id", pa.string(), nullable=False),
    ]
)

# One row per append that read a file (or stdin), and per position adopted from before fingerprints:
# the source's key (its `kafka_topic`), the next line to read, and the size and SHA-256 of the bytes
# before that line. A file is resumed only when its first `prefix_size_bytes` still hash the same.
file_source_position_schema = pa.schema(
    [
        pa.field("kafka_topic", pa.string(), nullable=False),
        pa.field("next_offset", pa.int64(), nullable=False),
        pa.field("prefix_size_bytes", pa.int64(), nullable=False),
        pa.field("prefix_sha256", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("ingest_batch_id", pa.string(), nullable=False),
    ]
)

# One row per dead letter read from a file or stdin: the SHA-256 of its source's bytes up to the end
# of its line. With the line and `raw_sha256` it names the dead letter by content, whatever name or
# stream the content came in under, so a re-sent stream does not store its dead letters again.
dead_letter_line_schema = pa.schema(
    [
        pa.field("kafka_topic", pa.string(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("line_prefix_sha256", pa.string(), nullable=False),
        pa.field("raw_sha256", pa.string(), nullable=False),
        pa.field("ingest_batch_id", pa.string(), nullable=False),
    ]
)

# Each compaction (ledger/compaction.py): the merged file with the proof that it holds exactly the
# retired files' rows, and each file it retired.
compaction_table = "ledger_compaction"
compaction_retired_table = "ledger_compaction_retired"
compaction_schema = pa.schema(
    [
        pa.field("compaction_id", pa.string(), nullable=False),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("event_date", pa.date32()),
        pa.field("merged_path", pa.string(), nullable=False),  # relative to the data folder
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("row_count", pa.int64(), nullable=False),
        # Sum of the first 64 bits of each row's SHA-256 (rows_digest_sql): order-independent, and a row
        # lost, added, doubled or changed changes it.
        pa.field("rows_digest", pa.string(), nullable=False),
        pa.field("first_snapshot", pa.int64(), nullable=False),
        pa.field("last_snapshot", pa.int64(), nullable=False),
        pa.field("compacted_at", timestamp_type, nullable=False),
    ]
)
compaction_retired_schema = pa.schema(
    [
        pa.field("compaction_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the data folder
        pa.field("row_count", pa.int64(), nullable=False),
    ]
)
# Format 21: each compaction's retired files summed up, in its own transaction (a compaction before format 21: by
# the migration): their count, their rows and the order-independent digest of their paths (`compaction.paths_digest`).
# `royalty verify` checks the files a snapshot expiry dropped against these sums, a row per compaction, instead of
# hashing the path of every file ever retired (~3 an append).
compaction_summary_table = "ledger_compaction_summary"
compaction_summary_schema = pa.schema(
    [
        pa.field("compaction_id", pa.string(), nullable=False),
        pa.field("retired_file_count", pa.int64(), nullable=False),
        pa.field("retired_row_count", pa.int64(), nullable=False),
        pa.field("retired_paths_digest", pa.string(), nullable=False),
    ]
)

# Format 13: each append's metered events rolled up (ledger.rollups), in the append's own transaction. One row per
# (model, compute provider, source, event hour) the append touched: exact fee sum, event count and the event-time
# bounds. The registry version in force is the append's snapshot, which the catalog records per file.
rollup_table = "metered_rollup"
rollup_schema = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("compute_provider", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("event_hour", timestamp_type, nullable=False),
        pa.field("fee_micros", pa.int64(), nullable=False),
        pa.field("event_count", pa.int64(), nullable=False),
        pa.field("event_time_min", timestamp_type, nullable=False),
        pa.field("event_time_max", timestamp_type, nullable=False),
        pa.field("ingest_batch_id", pa.string(), nullable=False),  # the append's (compaction retires by it)
        # Format 16: the id bounds of the row's key group (an append's metered rows of the row's source, or those of
        # the appends a compaction summed): the least and greatest event id, and whether no id is in it twice.
        # Groups whose bounds do not overlap share no event (settlement.rollups). NULL: appended before format 16.
        pa.field("group_event_id_min", pa.string()),
        pa.field("group_event_id_max", pa.string()),
        pa.field("group_keys_unique", pa.bool_()),
    ]
)
# Format 16: each append's metered events' fee sum and count per payer (ledger.rollups), so the close bills payers
# without reading the events. Compaction sums them per payer.
payer_rollup_table = "metered_payer_rollup"
payer_rollup_schema = pa.schema(
    [
        pa.field("payer", pa.string(), nullable=False),
        pa.field("fee_micros", pa.int64(), nullable=False),
        pa.field("event_count", pa.int64(), nullable=False),
        pa.field("ingest_batch_id", pa.string(), nullable=False),  # the append's (compaction retires by it)
    ]
)

# Format 15: each snapshot expiry (ledger/expiry.py), one row: the snapshots it expired (as id ranges), the digest
# of their history (what verify checked per snapshot), the files a compaction retired that it dropped from the
# catalog (count and an order-independent digest of their paths), chained to the previous expiry's row.
expiry_table = "ledger_snapshot_expiry"
expiry_schema = pa.schema(
    [
        pa.field("expiry_id", pa.string(), nullable=False),
        pa.field("expired_at", timestamp_type, nullable=False),
        pa.field("snapshot_count", pa.int64(), nullable=False),
        pa.field("expired_ranges", pa.string(), nullable=False),  # "5-7,10-19": snapshot ids, inclusive
        pa.field("history_sha256", pa.string(), nullable=False),
        pa.field("files_dropped", pa.int64(), nullable=False),
        pa.field("files_digest", pa.string(), nullable=False),
        pa.field("previous_sha256", pa.string(), nullable=False),  # the previous expiry's chain_sha256, or ""
        pa.field("chain_sha256", pa.string(), nullable=False),
    ]
)

# Format 20: each bookkeeping file a flush wrote (ledger/catalog_flush.py), one row: the file (path relative to the data
# folder, size, SHA-256) and what its rows were checked against when it was written: their count, the range of the
# snapshots that inserted them, and the SHA-256 of the `inlined_digest` rows of that table and range (which matched
# the rows, row for row). `royalty verify` then checks the file by its bytes and the digests by this SHA-256 instead
# of digesting every moved row again. Not `*_snapshot` columns: no snapshot is retained for them (ledger/expiry.py).
flushed_file_table = "ledger_flushed_file"
flushed_file_schema = pa.schema(
    [
        pa.field("flush_id", pa.string(), nullable=False),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the data folder
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("row_count", pa.int64(), nullable=False),
        pa.field("snapshot_id_min", pa.int64(), nullable=False),
        pa.field("snapshot_id_max", pa.int64(), nullable=False),
        pa.field("digests_sha256", pa.string(), nullable=False),
    ]
)

file_tables: dict[str, pa.Schema] = {
    **ledger_schemas,
    "dead_letter": dead_letter_schema,
    rollup_table: rollup_schema,
    payer_rollup_table: payer_rollup_schema,
}
inlined_tables: dict[str, pa.Schema] = {
    "ingest_offset": ingest_offset_schema,
    "ingest_batch": ingest_batch_schema,
    "file_checksum": file_checksum_schema,
    "file_source_position": file_source_position_schema,
    "dead_letter_line": dead_letter_line_schema,
    format_table: ledger_format_schema,
    digest_table: inlined_digest_schema,
    compaction_table: compaction_schema,
    compaction_retired_table: compaction_retired_schema,
    compaction_summary_table: compaction_summary_schema,
    expiry_table: expiry_schema,
    flushed_file_table: flushed_file_schema,
}
all_tables: dict[str, pa.Schema] = {**file_tables, **inlined_tables}
# A file table's columns written without compression: random bytes (hashes) that zstd spends CPU on and cannot shrink.
uncompressed_columns: dict[str, frozenset[str]] = {}


def register_table(
    name: str, schema: pa.Schema, inlined: bool = False, incompressible: tuple[str, ...] = ()
) -> None:
    """Declare a further append-only table (e.g. the settlement's), created on the next open.

    A file table's rows are Parquet files with recorded checksums; an inlined table's rows
    live in the catalog and suit a few small rows per transaction. `incompressible`: a file table's columns of
    random bytes (hashes), written uncompressed.
    """
    existing = all_tables.get(name)
    require(existing is None or existing.equals(schema), f"table `{name}` is registered with one schema")
    require(not (inlined and incompressible), f"table `{name}`: only a file table's columns are compressed")
    require(set(incompressible) <= set(schema.names), f"table `{name}` has every incompressible column named")
    (inlined_tables if inlined else file_tables)[name] = schema
    all_tables[name] = schema
    if incompressible:
        uncompressed_columns[name] = frozenset(incompressible)


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB column type of an Arrow type used in the ledger."""
    if pa.types.is_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_binary(arrow_type):
        return "BLOB"
    if pa.types.is_int64(arrow_type):
        return "BIGINT"
    if pa.types.is_int32(arrow_type):
        return "INTEGER"
    if pa.types.is_date32(arrow_type):
        return "DATE"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_timestamp(arrow_type):
        require(arrow_type.tz == "UTC" and arrow_type.unit == "us", f"timestamps are UTC microseconds: {arrow_type}")
        return "TIMESTAMPTZ"
    if pa.types.is_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    if pa.types.is_struct(arrow_type):
        members = ", ".join(f"{field.name} {duckdb_type(field.type)}" for field in arrow_type)
        return f"STRUCT({members})"
    raise TypeError(f"no DuckDB type for {arrow_type}; extend ledger/tables.py")


def create_statements(catalog: str, names: list[str] | None = None) -> list[str]:
    """Idempotent DDL for every ledger table (or the `names` given)."""
    statements = []
    for name, schema in all_tables.items():
        if names is not None and name not in names:
            continue
        columns = ", ".join(
            f"{field.name} {duckdb_type(field.type)}{'' if field.nullable else ' NOT NULL'}"
            for field in schema
        )
        statements.append(f"CREATE TABLE IF NOT EXISTS {catalog}.main.{name} ({columns})")
    return statements


def inlining_statements(catalog: str, names: list[str] | None = None) -> list[str]:
    """Keep the bookkeeping tables' rows in the catalog (run after the tables exist)."""
    return [
        f"CALL ducklake_set_option('{catalog}', 'data_inlining_row_limit', "
        f"{constants.inlined_rows_max}, table_name => '{name}')"
        for name in inlined_tables
        if names is None or name in names
    ]
