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
`flushed_inlined` change only for these tables and checks each flushed file against its recorded SHA-256 like any
data file.

Format 20: the flush checks the rows it moved, once, in its own transaction: every row of each file it wrote against the
digest its snapshot recorded, and every digest recorded for the table in the file's snapshot range against a row
(`ledger.inlined_digest.check_moved_rows`); any difference refuses the flush (`FlushRefusedError`, nothing moved, the
changed rows stay inlined where verify names them). It records each file in `ledger_flushed_file` (path, size, SHA-256,
row count, snapshot range, and the SHA-256 of the digest rows of that table and range), and so, checked the same way,
each file a flush before format 20 wrote that still holds its recorded bytes (`_unrecorded_earlier_files`). `verify`
then checks such a file by its bytes and the digest rows by that SHA-256, and digests only the rows outside those files,
so it no longer reads and digests every bookkeeping row ever moved (benchmarks/RESULTS.md, "verify flat in appends"). A
recorded file no longer listed, a row added among the moved ones (an inlined row, or a file, claiming one of their
snapshots), a changed file or digest row, or a changed record is still named. Files flushed before format 20 have no
record until the next flush checks and records them: until then their rows are digested at every verify, as before.

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
from ledger.errors import LedgerError
from ledger.format import ledger_tables
from ledger.inlined_digest import (
    MovedRowsContext,
    check_moved_rows,
    digest_table,
    moved_rows_context,
    undigested_tables,
)
from ledger.ledger import Ledger, _FileToAdd, _remove_files
from ledger.tables import compaction_retired_table, compaction_summary_table, compaction_table, flushed_file_table

log = logging.getLogger(__name__)

# A flush's id, in `file_checksum`'s batch column of the files it wrote (as a compaction's id is).
_flush_id_prefix = "catalog-flush-"

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
    compaction_summary_table,
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
    ledger._forbid_ducklake_commit_retries()  # see the module's docstring: DuckLake's retry of a flush doubles rows
    # The files the flush writes: removed again if the catalog refuses the commit (another writer's), as an append's.
    written: list[_FileToAdd] = []
    # Read before the transaction: after a flush, the SQLite catalog's schema cannot be read until the commit.
    context = moved_rows_context(ledger.connection, catalog_alias)
    recording = flushed_file_table in ledger_tables(ledger.connection)  # format 20 (Ledger.open refuses one older)
    try:
        return _flush_in_transaction(ledger, rows_min, written, context if recording else None)
    except FlushRefusedError:
        _remove_files(ledger.store, written)  # rolled back: no snapshot lists them
        raise


def _flush_in_transaction(
    ledger: Ledger, rows_min: int, written: list[_FileToAdd], context: MovedRowsContext | None
) -> dict[str, int]:
    connection = ledger.connection
    with ledger._removing_files_of_a_refused_commit(written), ledger._transaction():
        due = {table: rows for table, rows in inlined_row_counts(ledger).items() if rows and rows >= rows_min}
        earlier = [] if context is None else _unrecorded_earlier_files(ledger)
        if not due and not earlier:
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
        flush_id = f"{_flush_id_prefix}{uuid.uuid4().hex}"  # in file_checksum's batch column, as a compaction's id is
        # A table's rows split over files (past DuckLake's file size) may split a snapshot: such files are not recorded.
        whole = [file for file in written if sum(1 for other in written if other.table == file.table) == 1]
        records = [] if context is None else _checked_once(ledger, [*whole, *earlier], flush_id, context)
        # After every flush, so these rows stay inlined until the next one.
        ledger._insert_inlined_rows(
            "file_checksum", [[f.relative_path, f.table, f.size_bytes, f.sha256, flush_id] for f in written]
        )
        if records:
            ledger._insert_inlined_rows(flushed_file_table, records)
    log.info(
        "bookkeeping rows moved out of the catalog",
        extra={"rows": due, "files": len(written), "earlier_files_recorded": len(earlier)},
    )
    return due


def _unrecorded_earlier_files(ledger: Ledger) -> list[_FileToAdd]:
    """The files earlier flushes wrote without a `ledger_flushed_file` record (before format 20) that still hold their
    recorded bytes: each flush records them once (`_checked_once`, which refuses the flush if a row differs), and verify
    then checks them by their bytes instead of digesting their rows at every run. A file whose bytes changed, one no
    longer listed, or one of several a flush wrote for a table, stays unrecorded: verify names or digests it as before.
    """
    tables = ", ".join(f"'{table}'" for table in flushed_tables if table not in undigested_tables)
    candidates = ledger.connection.execute(
        f"""SELECT c.path, c.table_name, c.size_bytes, c.sha256 FROM {catalog_alias}.main.file_checksum c
            WHERE c.ingest_batch_id LIKE '{_flush_id_prefix}%' AND c.table_name IN ({tables})
              AND c.path NOT IN (SELECT path FROM {catalog_alias}.main.{flushed_file_table})
              AND (c.ingest_batch_id, c.table_name) IN (
                  SELECT ingest_batch_id, table_name FROM {catalog_alias}.main.file_checksum
                  WHERE ingest_batch_id LIKE '{_flush_id_prefix}%' GROUP BY ALL HAVING count(*) = 1)
            ORDER BY c.path"""
    ).fetchall()
    files, listed = [], {table: _files(ledger, table) for table in {table for _, table, _, _ in candidates}}
    for path, table, size_bytes, sha256 in candidates:
        absolute = ledger.location.data_path + path
        if absolute in listed[table] and _sha256(ledger, absolute) == (sha256, size_bytes):
            files.append(_FileToAdd(table, absolute, path, size_bytes, sha256))
    return files


class FlushRefusedError(LedgerError):
    """Bookkeeping rows a flush was to move out of the catalog do not match the digests their snapshots recorded: they
    were changed in the catalog. Nothing is moved; `royalty verify` names them."""


def _checked_once(ledger: Ledger, files: list[_FileToAdd], flush_id: str, context: MovedRowsContext) -> list[list]:
    """Check the rows of each of `files` (flushed, each holding one table's rows of its flush) against their recorded
    digests (`check_moved_rows`), once: the `ledger_flushed_file` rows to record (format 20), so that `verify` checks
    these files by their bytes instead of digesting their rows at every run. Refuses the flush (`FlushRefusedError`)
    when a row or digest differs."""
    records = []
    for file in files:
        moved, problems = check_moved_rows(ledger.connection, catalog_alias, file.table, file.absolute_path, context)
        if problems:
            raise FlushRefusedError(
                f"the bookkeeping rows of `{file.table}` to move out of the catalog do not match the digests their "
                f"transactions recorded, so nothing was moved: {'; '.join(problems)}. Run `royalty verify`"
            )
        if moved is not None:
            records.append(
                [flush_id, file.table, file.relative_path, file.size_bytes, file.sha256, moved.row_count,
                 moved.snapshot_id_min, moved.snapshot_id_max, moved.digests_sha256]
            )  # fmt: skip
    return records


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
