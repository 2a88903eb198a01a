"""A bounded catalog: move the stream's bookkeeping rows out of the catalog into checksummed Parquet files.

Every append inlines a few bookkeeping rows into the catalog (its offsets, its batch, its files' checksums, the
digests of those rows; a compaction its retired files), and they are the append-only proof, so no expiry removes
them: without this the catalog grows by ~1.4 KB per append for ever (benchmarks/RESULTS.md, "Snapshot expiry").
`flush_bookkeeping` moves them, table by table, into one Parquet file each with DuckLake's
`ducklake_flush_inlined_data`, in one transaction that also records each new file's size and SHA-256 in
`file_checksum`, as an append records its files. Nothing about the rows changes: each keeps the snapshot that
inserted it (DuckLake writes it into the file), so SQL, time travel to any kept snapshot and `royalty verify`'s
digest check of every bookkeeping row (ledger/inlined_digest.py) read the same rows; the catalog keeps one data
file row (and its column statistics) per table and flush instead of a row per append. `verify` accepts the
`flushed_inlined` change only for these tables, checks each flushed file against its recorded SHA-256 like any
data file, and still checks each flushed row against the digest its own transaction recorded.

`royalty expire` runs it after the expiry, when a table holds at least `bookkeeping_flush_rows_min` inlined rows.
On a SQLite catalog the flush holds the catalog's write lock from the flush to its commit, so no append commits
in between (they wait and retry, as beside any writer). On PostgreSQL a flush and an append may commit in either
order: with DuckLake's own commit retry off, the one that commits second fails and the ledger redoes it from a fresh
snapshot (checked by hand on DuckDB 1.4.4 / DuckLake 0.3, every interleaving: no row lost or doubled). DuckLake's own
retry of a flush's commit doubled the flushed rows there (they stayed inlined and were in the file), so a flush never
runs with it on; an append's own retry after a flush committed is fine.
"""

import hashlib
import logging
import uuid

from ledger import constants
from ledger.compaction import close_step
from ledger.connection import catalog_alias
from ledger.inlined_digest import digest_table
from ledger.ledger import Ledger, _FileToAdd
from ledger.tables import compaction_retired_table, compaction_table

log = logging.getLogger(__name__)

# The inlined tables whose rows are moved out: those a stream's appends and compactions grow by rows per append.
# Not the format record nor the expiry records (a row per migration or expiry), nor the settlement's tables.
flushed_tables = (
    "ingest_offset",
    "ingest_batch",
    "file_checksum",
    "file_source_position",
    "dead_letter_line",
    compaction_table,
    compaction_retired_table,
    digest_table,
)


def inlined_row_counts(ledger: Ledger) -> dict[str, int]:
    """Rows of each flushable table still inlined in the catalog (DuckLake names their inlined table as their
    `filename`), not yet in a data file."""
    counts = {}
    for table in flushed_tables:
        ((rows,),) = ledger.connection.execute(
            f"SELECT count(*) FROM {catalog_alias}.main.{table} WHERE filename NOT LIKE '%.parquet'"
        ).fetchall()
        counts[table] = int(rows)
    return counts


def flush_bookkeeping(ledger: Ledger, rows_min: int = constants.bookkeeping_flush_rows_min) -> dict[str, int]:
    """Move the inlined rows of every flushable table holding at least `rows_min` of them into a Parquet file of
    its own, recording the files' checksums, in one transaction; the rows moved per table (none: nothing done)."""
    with ledger.step_lock(close_step):
        return ledger._retrying(lambda: flush_once(ledger, rows_min), "flush bookkeeping rows")


def flush_once(ledger: Ledger, rows_min: int) -> dict[str, int]:
    """One try of `flush_bookkeeping`, for a caller holding the close-epoch step lock (`royalty expire`)."""
    connection = ledger.connection
    ledger._forbid_ducklake_commit_retries()  # see the module's docstring: DuckLake's retry of a flush doubles rows
    # The files the flush writes: removed again if the catalog refuses the commit (another writer's), as an append's.
    written: list[_FileToAdd] = []
    with ledger._removing_files_of_a_refused_commit(written), ledger._transaction():
        due = {table: rows for table, rows in inlined_row_counts(ledger).items() if rows and rows >= rows_min}
        if not due:
            return {}
        for table in due:
            before = _files(ledger, table)
            connection.execute(
                f"CALL ducklake_flush_inlined_data('{catalog_alias}', table_name => '{table}')"
            ).fetchall()
            for path in sorted(_files(ledger, table) - before):
                sha256, size_bytes = _sha256(ledger, path)
                relative = path.removeprefix(ledger.location.data_path)
                written.append(_FileToAdd(table, path, relative, size_bytes, sha256))
        flush_id = f"catalog-flush-{uuid.uuid4().hex}"  # in file_checksum's batch column, as a compaction's id is
        # After every flush, so these rows stay inlined until the next one.
        ledger._insert_inlined_rows(
            "file_checksum", [[f.relative_path, f.table, f.size_bytes, f.sha256, flush_id] for f in written]
        )
    log.info("bookkeeping rows moved out of the catalog", extra={"rows": due, "files": len(written)})
    return due


def _files(ledger: Ledger, table: str) -> set[str]:
    """The data files `table`'s rows are in, as the open transaction sees them (its own flush included)."""
    rows = ledger.connection.execute(
        f"SELECT DISTINCT filename FROM {catalog_alias}.main.{table} WHERE filename LIKE '%.parquet'"
    ).fetchall()
    return {path for (path,) in rows}


def _sha256(ledger: Ledger, path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with ledger.store.open(path) as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
