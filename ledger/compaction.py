"""Compaction that keeps the proof: merge the small files of each table, event date and epoch.

A ledger in service adds one small Parquet file per table and event date on every append; after a
year, listing and opening them costs more than reading the rows. `compact` rewrites the files of one
(table, event date, epoch window) into one file, in one DuckLake transaction that also records:

- `ledger_compaction`: the merged file (path, size, SHA-256), how many rows it holds and an
  order-independent digest of every row (`rows_digest`), and the range of snapshots its rows were
  appended in;
- `ledger_compaction_retired`: each file it retired, with its row count;
- `file_checksum`: the merged file's size and SHA-256, as an append records its files.

The proof is checked before the commit and again by `royalty verify`: the retired files' rows and the
merged file's rows have the same count and digest. Each row keeps the snapshot that appended it in the
column `_ducklake_internal_snapshot_id` (the name DuckLake's own merge gives it), so settlement by
snapshot range reads the same rows; readers that open Parquet files directly go through
`recorder.scan_files`. The retirement itself is a DELETE of exactly the retired files' rows: DuckLake
ends those files at the compaction's snapshot (no delete file), so time travel to any earlier snapshot
reads the original files, which are never removed.

Why not DuckLake's `ducklake_merge_adjacent_files` (DuckDB 1.4.4, DuckLake 0.3): it merges a table's files
across event dates and epochs alike, deletes the retired files' catalog rows (so nothing records what was
retired), and after it `ducklake_table_insertions` over the merged snapshots returns no rows.

Never merged: files of registry tables (their arrival order decides authority), files of different epoch
windows (an epoch's events are the rows appended after the previous closing snapshot), files newer than
`older_than_s`, and files already past `compacted_file_bytes_min`.
"""

import hashlib
import logging
import os
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa

from ledger import constants
from ledger.connection import catalog_alias, committed_snapshot_function
from ledger.errors import LedgerBusyError, LedgerError
from ledger.format import ledger_tables
from ledger.inlined_digest import row_text_sql
from ledger.ledger import Ledger
from ledger.object_store import DataStore, is_s3
from ledger.tables import (
    compaction_retired_table,
    compaction_summary_table,
    compaction_table,
    duckdb_type,
    file_tables,
)

log = logging.getLogger(__name__)

# The column of a merged file holding the snapshot that appended each row (DuckLake's name for it).
snapshot_column = "_ducklake_internal_snapshot_id"
# Tables compaction may merge: the event tables whose rows settle by snapshot range, the metered events'
# rollups (read by snapshot range too, settlement.rollups), and dead letters. Registry tables are never merged
# (records take effect in arrival order), nor the settlement's own (one file per epoch already).
compactable_tables = (
    "inference_metered",
    "metered_rollup",
    "metered_payer_rollup",
    "inference_reversed",
    "dead_letter",
)
# The rollups' merged file sums its rows per key (settlement.rollups reads an epoch window whole, so a sum per
# window is what it needs): the proof is then that the merged rows are exactly those sums of the retired rows.
# The payer rollups are summed per payer alike. A merged rollup file is one key group per source (ledger.rollups):
# its id bounds are the hull of the merged groups' of the source, unique when each was and no two overlap.
summed_tables = ("metered_rollup", "metered_payer_rollup")
# The step lock every epoch closer holds while it writes (settlement.ledger_io.close_step): a compaction
# holds it too, so no epoch closes between the windows a compaction computed and its commit.
close_step = "close-epoch"

@dataclass(frozen=True)
class _File:
    table: str
    relative_path: str  # to the data folder
    absolute_path: str
    rows: int
    size_bytes: int
    first_snapshot: int
    last_snapshot: int
    merged: bool  # written by a compaction: carries `snapshot_column`
    event_date: date | None


@dataclass
class CompactionReport:
    """What one `compact` run merged."""

    merges: int = 0
    files_retired: int = 0
    rows: int = 0
    bytes_written: int = 0
    snapshots: list[int] = field(default_factory=list)
    # Merges left for the next run because the catalog stayed busy (nothing of them was committed).
    skipped: int = 0


def compact(ledger: Ledger, older_than_s: float = 0.0, now: datetime | None = None) -> CompactionReport:
    """Merge the small files of every compactable table, event date and epoch window; one transaction each.

    Holds the close-epoch step lock throughout. Raises `LedgerError` when a merged file's proof does not
    hold (nothing of that merge is committed).
    """
    report = CompactionReport()
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    with ledger.step_lock(close_step):
        for group in ledger._retrying(lambda: list(_groups(ledger, cutoff)), "list the files to compact"):
            try:
                snapshot, size_bytes = _merge(ledger, group)
            except LedgerBusyError as error:
                # The writers kept the catalog busy past the retries: this merge waits for the next run.
                log.warning("compaction skipped a merge: the catalog stayed busy", extra={"error": str(error)})
                report.skipped += 1
                continue
            report.merges += 1
            report.files_retired += len(group)
            report.rows += sum(file.rows for file in group)
            report.snapshots.append(snapshot)
            report.bytes_written += size_bytes
    return report


def closing_snapshots(connection: duckdb.DuckDBPyConnection) -> list[int]:
    """Every epoch's closing snapshot, ascending (none before the settlement tables exist)."""
    # fetchall, not fetchone, here and below: a result left open keeps a read on a SQLite catalog, which
    # blocks every writer's commit.
    ((exists,),) = connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'settlement_epoch'",
        [catalog_alias],
    ).fetchall()
    if not exists:
        return []
    rows = connection.execute(f"SELECT DISTINCT closing_snapshot FROM {catalog_alias}.main.settlement_epoch").fetchall()
    return sorted(int(snapshot) for (snapshot,) in rows)


def live_files(ledger: Ledger, table: str) -> list[_File]:
    """The data files `table` lists now, with the snapshots their rows were appended in."""
    metadata = f"__ducklake_metadata_{catalog_alias}"
    merged = {
        path: (first, last)
        for path, first, last in ledger.connection.execute(
            f"SELECT merged_path, first_snapshot, last_snapshot FROM {catalog_alias}.main.{compaction_table} "
            "WHERE table_name = ?",
            [table],
        ).fetchall()
    }
    rows = ledger.connection.execute(
        f"""
        SELECT d.path, d.record_count, d.file_size_bytes, d.begin_snapshot
        FROM {metadata}.ducklake_data_file d
        JOIN {metadata}.ducklake_table t ON t.table_id = d.table_id AND t.end_snapshot IS NULL AND t.table_name = ?
        WHERE d.end_snapshot IS NULL
        """,
        [table],
    ).fetchall()
    files = []
    for path, count, size, begin in rows:
        relative = f"main/{table}/{path}"
        first, last = merged.get(relative, (begin, begin))
        folder = Path(path).parent.name
        dated = folder.startswith("event_date=")
        event_date = date.fromisoformat(folder.removeprefix("event_date=")) if dated else None
        files.append(
            _File(
                table, relative, ledger.location.data_path + relative, int(count), int(size), int(first),
                int(last), relative in merged, event_date,
            )
        )
    return files


def _groups(ledger: Ledger, cutoff: datetime) -> Iterator[list[_File]]:
    """Lists of files to merge into one: same table, event date and epoch window, old and small enough."""
    connection = ledger.connection
    closings = closing_snapshots(connection)
    committed_at = dict(
        connection.execute(f"SELECT snapshot_id, snapshot_time FROM ducklake_snapshots('{catalog_alias}')").fetchall()
    )
    for table in compactable_tables:
        if table not in file_tables:
            continue
        by_key: dict[tuple, list[_File]] = {}
        for file in live_files(ledger, table):
            # A file an append committed after `committed_at` was read is newer than any cutoff; one whose snapshot an
            # expiry removed (ledger/expiry.py) is older than the expiry's cutoff.
            committed = committed_at.get(file.last_snapshot)
            if committed is None and committed_at and file.last_snapshot < max(committed_at):
                committed = datetime.min.replace(tzinfo=UTC)
            if file.size_bytes >= constants.compacted_file_bytes_min or committed is None or committed > cutoff:
                continue
            # Window k holds the rows appended after closing snapshot k-1, up to and including closing snapshot k.
            window = bisect_left(closings, file.last_snapshot)
            if bisect_left(closings, file.first_snapshot) != window:
                continue  # never the case for files this module wrote; left alone if it ever is
            by_key.setdefault((file.event_date, window), []).append(file)
        for _, files in sorted(by_key.items(), key=lambda item: (str(item[0][0]), item[0][1])):
            files.sort(key=lambda file: (file.first_snapshot, file.relative_path))
            for start in range(0, len(files), constants.compaction_files_per_merge_max):
                chunk = files[start : start + constants.compaction_files_per_merge_max]
                if len(chunk) > 1:
                    yield chunk


def rows_sql(connection: duckdb.DuckDBPyConnection, files: list[_File], table: str) -> str:
    """A query of the rows of `files` with the table's declared columns and `snapshot_column`.

    A column a file lacks (written before a format step added it) is NULL. Registers `compaction_files`.
    """
    connection.register(
        "compaction_files",
        pa.table(
            {
                "filename": [file.absolute_path for file in files],
                "begin_snapshot": pa.array([file.first_snapshot for file in files], pa.int64()),
            }
        ),
    )
    paths = ", ".join(_quote(file.absolute_path) for file in files)
    present = {
        name
        for (name, *_rest) in connection.execute(
            f"DESCRIBE SELECT * FROM read_parquet([{paths}], union_by_name = true, filename = true)"
        ).fetchall()
    }
    columns = [
        f'r."{item.name}"' if item.name in present else f'NULL::{duckdb_type(item.type)} AS "{item.name}"'
        for item in file_tables[table]
    ]
    snapshot = f"coalesce(r.{snapshot_column}, f.begin_snapshot)" if snapshot_column in present else "f.begin_snapshot"
    return (
        f"SELECT {', '.join(columns)}, {snapshot} AS {snapshot_column} "
        f"FROM read_parquet([{paths}], union_by_name = true, filename = true) r "
        "JOIN compaction_files f ON f.filename = r.filename"
    )


def merged_rows_sql(table: str, source: str) -> str:
    """The rows a merged file of `table` holds, from its retired files' rows (`rows_sql`): the same rows, or for the
    rollups one row per key with the exact sums, the least and greatest event times, the merged rows' least batch id
    (on every row: the merged file is one key group per source, settlement.rollups) and the last snapshot (a sum
    past int64 fails the cast: nothing is merged then); the payer rollups one row per payer alike."""
    if table not in summed_tables:
        return source
    if table == "metered_payer_rollup":
        return f"""SELECT payer, sum(fee_micros)::BIGINT AS fee_micros, sum(event_count)::BIGINT AS event_count,
                   min(ingest_batch_id) AS ingest_batch_id, max({snapshot_column}) AS {snapshot_column}
            FROM ({source}) GROUP BY payer"""
    return f"""WITH merged_rows AS ({source}),
        key_groups AS (
            SELECT DISTINCT source, ingest_batch_id, group_event_id_min AS low, group_event_id_max AS high,
                   group_keys_unique AS keys_unique
            FROM merged_rows
        ),
        ordered AS (
            SELECT *, max(high) OVER (
                PARTITION BY source ORDER BY low, high ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ) AS before
            FROM key_groups
        ),
        bounds AS (
            SELECT source,
                   count(*) = count(low) AND count(*) = count(high) AND count(*) = count(keys_unique) AS known,
                   min(low) AS low, max(high) AS high,
                   bool_and(keys_unique AND (before IS NULL OR low > before)) AS keys_unique
            FROM ordered GROUP BY source
        ),
        summed AS (
        SELECT m.model_id, m.compute_provider, m.source, m.event_hour, sum(m.fee_micros)::BIGINT AS fee_micros,
               sum(m.event_count)::BIGINT AS event_count, min(m.event_time_min) AS event_time_min,
               max(m.event_time_max) AS event_time_max,
               (SELECT min(ingest_batch_id) FROM merged_rows) AS ingest_batch_id,
               CASE WHEN any_value(b.known) THEN any_value(b.low) END AS group_event_id_min,
               CASE WHEN any_value(b.known) THEN any_value(b.high) END AS group_event_id_max,
               CASE WHEN any_value(b.known) THEN any_value(b.keys_unique) END AS group_keys_unique,
               max(m.{snapshot_column}) AS {snapshot_column}
        FROM merged_rows m JOIN bounds b ON b.source = m.source
        GROUP BY m.model_id, m.compute_provider, m.source, m.event_hour
        )
        SELECT * FROM summed"""


def _counts_agree(table: str, retired_rows: int, merged_rows: int) -> bool:
    """The retired files' row count against the merged file's: equal, or (summed rollups) at least as many."""
    return retired_rows >= merged_rows if table in summed_tables else retired_rows == merged_rows


def rows_digest_sql(table: str, relation: str) -> str:
    """(row count, rows digest) of `relation` over the table's declared columns and `snapshot_column`."""
    columns = [(item.name, pa.types.is_timestamp(item.type)) for item in file_tables[table]]
    text = row_text_sql([*columns, (snapshot_column, False)])
    return (
        f"SELECT count(*), coalesce(sum(('0x' || left(sha256({text}), 16))::UBIGINT::HUGEINT), 0)::VARCHAR "
        f"FROM ({relation})"
    )


def _merge(ledger: Ledger, files: list[_File]) -> tuple[int, int]:
    """Write the merged file of `files`, check its proof, then retire them and record it in one transaction
    (retried while other writers hold the catalog); the new snapshot and the merged file's size."""
    connection = ledger.connection
    table = files[0].table
    compaction_id = uuid.uuid4().hex
    folder = Path(files[0].relative_path).parent.as_posix()
    name = f"{ledger._ledger_id()}-s{ledger.current_snapshot()}-{compaction_id}-{uuid.uuid4().hex[:8]}.parquet"
    relative = f"{folder}/{name}"
    absolute = ledger.location.data_path + relative
    store = ledger.store
    # A local file is written aside, synced and renamed; an S3 upload appears whole when it completes.
    temporary = absolute if is_s3(absolute) else absolute.removesuffix(".parquet") + ".parquet.tmp"
    try:
        source = rows_sql(connection, files, table)
        merged_rows = merged_rows_sql(table, source)
        (expected,) = connection.execute(rows_digest_sql(table, merged_rows)).fetchall()
        batches = [b for (b,) in connection.execute(f"SELECT DISTINCT ingest_batch_id FROM ({source})").fetchall()]
        names = file_tables[table].names
        order = (
            "event_time, event_id"
            if "event_time" in names
            else "event_hour, model_id, compute_provider, source"
            if "event_hour" in names  # metered_rollup
            else "payer"
            if "payer" in names  # metered_payer_rollup
            else "kafka_topic, kafka_offset"
        )
        connection.execute(
            f"COPY ({merged_rows} ORDER BY {order}, {snapshot_column}) TO {_quote(temporary)} "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {constants.parquet_row_group_rows_max})"
        )
        if temporary != absolute:
            _fsync(Path(temporary))
            os.replace(temporary, absolute)
        (written,) = connection.execute(
            rows_digest_sql(table, f"SELECT * FROM read_parquet({_quote(absolute)})")
        ).fetchall()
        if tuple(written) != tuple(expected):
            raise LedgerError(
                f"compaction of {len(files)} files of `{table}` wrote {written[0]} rows (digest {written[1]}), "
                f"but they hold {expected[0]} (digest {expected[1]}); nothing was committed"
            )
        sha256, size_bytes = _sha256(store, absolute)
        record = [
            compaction_id, table, files[0].event_date, relative, size_bytes, sha256, int(expected[0]),
            str(expected[1]), min(f.first_snapshot for f in files), max(f.last_snapshot for f in files),
            datetime.now(UTC),
        ]  # fmt: skip
        retired_paths = [file.relative_path for file in files]
        summary = [compaction_id, len(files), sum(file.rows for file in files), paths_digest(retired_paths)]

        def commit() -> None:
            with ledger._transaction():
                _retire(connection, files, table, batches)
                connection.execute(
                    "CALL ducklake_add_data_files(?, ?, ?, ignore_extra_columns => true)",
                    [catalog_alias, table, absolute],
                ).fetchall()
                ledger._insert_inlined_rows("file_checksum", [[relative, table, size_bytes, sha256, compaction_id]])
                ledger._insert_inlined_rows(compaction_table, [record])
                ledger._insert_inlined_rows(
                    compaction_retired_table, [[compaction_id, file.relative_path, file.rows] for file in files]
                )
                ledger._insert_inlined_rows(compaction_summary_table, [summary])

        ledger._retrying(commit, "compact")
    except BaseException:
        for leftover in {temporary, absolute}:
            with suppress(OSError):
                store.remove(leftover)
        raise
    finally:
        with suppress(duckdb.Error):
            connection.unregister("compaction_files")
    # Read whole (fetchall): a result left open would keep a read on a SQLite catalog and block every writer.
    ((snapshot,),) = connection.execute(
        f"SELECT coalesce((SELECT id FROM {committed_snapshot_function}('{catalog_alias}')), "
        f"(SELECT max(snapshot_id) FROM ducklake_snapshots('{catalog_alias}')))"
    ).fetchall()
    log.info(
        "ledger files compacted",
        extra={"table": table, "files": len(files), "rows": int(expected[0]), "snapshot": snapshot},
    )
    return snapshot, size_bytes


def _retire(connection: duckdb.DuckDBPyConnection, files: list[_File], table: str, batches: list[str]) -> None:
    """Delete exactly the rows of `files`: those of `batches` on their event date (whole files, so DuckLake ends
    them at this snapshot and writes no delete file).

    The batch ids are literals, not a subquery: DuckLake then skips by column statistics every file holding none
    of them, which keeps the transaction short. On a SQLite catalog a long transaction cannot commit while
    appends commit beside it ("database is locked" on every retry).
    """
    event_date = files[0].event_date
    conditions = [f"ingest_batch_id IN ({', '.join(_quote(batch) for batch in batches)})"]
    if event_date is not None:
        conditions.insert(0, f"event_date = DATE '{event_date.isoformat()}'")
    ((deleted,),) = connection.execute(
        f"DELETE FROM {catalog_alias}.main.{table} WHERE {' AND '.join(conditions)}"
    ).fetchall()
    expected = sum(file.rows for file in files)
    if deleted != expected:
        # Rolled back by the caller: the batches had rows in other files too (never written so by the ledger).
        raise LedgerError(f"compaction would retire {deleted} rows of `{table}` for {expected} in its files")


def summarize_compactions(ledger: Ledger) -> int:
    """Record the summary (format 21) of every compaction that has none, one committed before format 21, from its
    retired-file rows, in the caller's transaction (`royalty migrate`'s step 21); how many."""
    connection = ledger.connection
    if not {compaction_table, compaction_retired_table, compaction_summary_table} <= ledger_tables(connection):
        return 0
    rows = connection.execute(
        f"""SELECT c.compaction_id, count(r.path), coalesce(sum(r.row_count), 0),
                   list(r.path) FILTER (r.path IS NOT NULL)
            FROM {catalog_alias}.main.{compaction_table} c
            LEFT JOIN {catalog_alias}.main.{compaction_retired_table} r ON r.compaction_id = c.compaction_id
            WHERE c.compaction_id NOT IN (SELECT compaction_id FROM {catalog_alias}.main.{compaction_summary_table})
            GROUP BY c.compaction_id ORDER BY c.compaction_id"""
    ).fetchall()
    if rows:
        ledger._insert_inlined_rows(
            compaction_summary_table,
            [[compaction_id, int(files), int(n), paths_digest(paths or [])] for compaction_id, files, n, paths in rows],
        )
    return len(rows)


def paths_digest(paths: list[str]) -> str:
    """Order-independent digest of a set of paths: the sum of each one's first 64 SHA-256 bits, modulo 2^64."""
    return str(sum(_path_digest(path) for path in paths) % 2**64)


def _path_digest(path: str) -> int:
    return int(hashlib.sha256(path.encode()).hexdigest()[:16], 16)


def _path_digest_sql(column: str) -> str:
    """`_path_digest` of `column` in SQL."""
    return f"('0x' || left(sha256({column}), 16))::UBIGINT::HUGEINT"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _sha256(store: DataStore, path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with store.open(path) as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass
class CompactionAudit:
    """What `verify` learns from the compaction records: the retirements they account for, and problems."""

    # (path relative to the data folder, snapshot that retired it) of every recorded retirement.
    retirements: set[tuple[str, int]] = field(default_factory=set)
    # The snapshots that committed a compaction, with the names of the tables each compacted.
    snapshots: dict[int, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes_checked: int = 0
    # Recorded retired files the catalog no longer lists at all: a snapshot expiry dropped them (ledger/expiry.py
    # checks that it recorded exactly these): their count, the order-independent digest of their paths
    # (`paths_digest`), and a function naming the least of them (asked only when they differ from the expiries').
    dropped_count: int = 0
    dropped_digest: int = 0
    dropped_example: Callable[[], str | None] = lambda: None


@dataclass(frozen=True)
class _Retired:
    """One compaction's retired files as its `ledger_compaction_retired` rows record them, against the catalog."""

    file_count: int
    row_count: int
    listed: list[tuple[str, int]]  # (path, rows) of those the catalog still lists
    dropped_count: int
    # The digest of the unlisted ones' paths, hashed only for a compaction without a summary (or with everything).
    dropped_digest: int | None
    everything: list[tuple[str, int, bool]] | None  # (path, rows, listed) of all, only when asked
    paths_digest: int | None  # of all, only when asked


def audit(ledger: Ledger, checksums: dict[str, tuple[int, str]], retired_files: bool = True) -> CompactionAudit:
    """Re-check every recorded compaction: the files it retired are the ones DuckLake ended at its snapshot,
    their recorded row counts sum to the merged file's; with `retired_files`, each still exists with its
    recorded SHA-256 and the merged file holds exactly their rows.

    Without `retired_files` no file is read here: the merged file is a live file, whose recorded SHA-256 (taken
    after its proof held, before the commit) the caller checks; the retired files are read only by time travel
    to before the compaction. The files an expiry dropped are then counted and digested from each compaction's
    summary (format 21), less the few the catalog still lists, instead of hashing every retired path again.
    """
    result = CompactionAudit()
    connection = ledger.connection
    tables = ledger_tables(connection)
    if not {compaction_table, compaction_retired_table} <= tables:
        # A ledger from before format 7 (a backup verifies one before it is migrated): no compaction was
        # recorded, so any retired file stays a violation for verify.
        return result
    catalog = _catalog_files(connection)
    retired_now = {path: end for path, end in catalog.items() if end is not None}
    summaries = _summaries(connection) if compaction_summary_table in tables else {}
    retired = _retired(connection, list(catalog), compaction_summary_table in tables, retired_files)
    result.dropped_example = lambda: _least_dropped(connection, set(catalog))
    for snapshot, compaction_id, table, merged_path, rows, digest, first, last in connection.execute(
        f"""SELECT snapshot_id, compaction_id, table_name, merged_path, row_count, rows_digest, first_snapshot,
                   last_snapshot FROM {catalog_alias}.main.{compaction_table} ORDER BY snapshot_id"""
    ).fetchall():
        result.snapshots.setdefault(int(snapshot), set()).add(table)
        where = f"compaction at snapshot {snapshot} ({compaction_id})"
        files = retired.get(compaction_id, _Retired(0, 0, [], 0, 0, [], 0))
        for path, _ in files.listed:
            result.retirements.add((path, int(snapshot)))
            if retired_now.get(path) != int(snapshot):
                result.problems.append(
                    f"{where} records retiring `{path}`, but the catalog "
                    + ("still lists it: its rows are counted twice" if path not in retired_now
                       else f"retired it at snapshot {retired_now[path]}")
                )
        _count_dropped(result, where, files, summaries.get(compaction_id))
        if not _counts_agree(table, files.row_count, int(rows)):
            result.problems.append(f"{where}: the retired files' recorded row counts do not sum to {rows}")
        if not retired_files:
            continue
        if files.dropped_count:
            # The retired files were dropped by a snapshot expiry (and deleted): the merged file's rows are checked
            # against the recorded proof alone.
            _audit_merged(ledger, result, where, table, merged_path, (int(rows), str(digest)), checksums)
            continue
        proven = [
            _File(table, path, ledger.location.data_path + path, count, 0, first, last, False, None)
            for path, count, _ in files.everything or []
        ]
        _audit_proof(ledger, result, where, table, proven, merged_path, (int(rows), str(digest)), checksums)
    return result


def _count_dropped(
    result: CompactionAudit, where: str, files: _Retired, summary: tuple[int, int, int] | None
) -> None:
    """Add a compaction's dropped files to the audit's count and digest: hashed from its retired rows without a
    summary, else its summary's digest less its listed files' (and the summary checked against the rows)."""
    result.dropped_count += files.dropped_count
    if summary is None:
        result.dropped_digest += files.dropped_digest or 0
        return
    file_count, row_count, digest = summary
    if (file_count, row_count) != (files.file_count, files.row_count) or (
        files.paths_digest is not None and files.paths_digest % 2**64 != digest
    ):
        result.problems.append(
            f"{where}: its summary records {file_count} retired files of {row_count} rows (paths digest {digest}); "
            f"its retired-file rows are {files.file_count} files of {files.row_count} rows"
            + ("" if files.paths_digest is None else f" (paths digest {files.paths_digest % 2**64})")
        )
    result.dropped_digest += digest - sum(_path_digest(path) for path, _ in files.listed)


def _catalog_files(connection: duckdb.DuckDBPyConnection) -> dict[str, int | None]:
    """Every data file the catalog lists (path relative to the data folder): the snapshot that retired it, or None."""
    metadata = f"__ducklake_metadata_{catalog_alias}"
    return {
        f"main/{table}/{path}": None if end is None else int(end)
        for table, path, end in connection.execute(
            f"""SELECT t.table_name, d.path, d.end_snapshot FROM {metadata}.ducklake_data_file d
                JOIN {metadata}.ducklake_table t ON t.table_id = d.table_id AND t.end_snapshot IS NULL"""
        ).fetchall()
    }


def _summaries(connection: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int, int]]:
    return {
        compaction_id: (int(files), int(rows), int(digest))
        for compaction_id, files, rows, digest in connection.execute(
            f"""SELECT compaction_id, retired_file_count, retired_row_count, retired_paths_digest
                FROM {catalog_alias}.main.{compaction_summary_table}"""
        ).fetchall()
    }


def _retired(
    connection: duckdb.DuckDBPyConnection, catalog: list[str], summarized: bool, everything: bool
) -> dict[str, _Retired]:
    """Each compaction's retired-file rows, summed and classified against the catalog's files in DuckDB (one pass):
    only those the catalog still lists (with `everything`: all) come to Python, and only the paths of a compaction
    without a summary are hashed (benchmarks/RESULTS.md, "verify flat in appends")."""
    listed = f"ledger_verify_listed_{uuid.uuid4().hex}"
    connection.register(listed, pa.table({"path": pa.array(catalog, pa.string())}))
    dropped = "c.path IS NULL" if everything or not summarized else "c.path IS NULL AND s.compaction_id IS NULL"
    summary_join = (
        f"LEFT JOIN {catalog_alias}.main.{compaction_summary_table} s ON s.compaction_id = r.compaction_id"
        if summarized and not everything else ""
    )
    whole = (
        f"list((r.path, r.row_count, c.path IS NOT NULL)), sum({_path_digest_sql('r.path')})"
        if everything else "NULL, NULL"
    )
    try:
        rows = connection.execute(
            f"""SELECT r.compaction_id, count(*), sum(r.row_count),
                       list((r.path, r.row_count)) FILTER (WHERE c.path IS NOT NULL),
                       count(*) FILTER (WHERE c.path IS NULL),
                       sum(CASE WHEN {dropped} THEN {_path_digest_sql('r.path')} END),
                       {whole}
                FROM {catalog_alias}.main.{compaction_retired_table} r
                LEFT JOIN {listed} c ON c.path = r.path {summary_join}
                GROUP BY r.compaction_id"""
        ).fetchall()
    finally:
        connection.unregister(listed)
    return {
        compaction_id: _Retired(
            int(files), int(row_count), [(path, int(n)) for path, n in listed_files or []], int(dropped_count),
            None if dropped_digest is None else int(dropped_digest),
            None if all_files is None else [(path, int(n), bool(is_listed)) for path, n, is_listed in all_files],
            None if digest is None else int(digest),
        )
        for compaction_id, files, row_count, listed_files, dropped_count, dropped_digest, all_files, digest in rows
    }  # fmt: skip


def _least_dropped(connection: duckdb.DuckDBPyConnection, catalog: set[str]) -> str | None:
    paths = connection.execute(f"SELECT path FROM {catalog_alias}.main.{compaction_retired_table}").fetchall()
    return min((path for (path,) in paths if path not in catalog), default=None)


def _file_as_recorded(
    ledger: Ledger, path: str, checksums: dict[str, tuple[int, str]], result: CompactionAudit, where: str
) -> bool:
    """Whether the data file `path` exists and matches the SHA-256 recorded when it was written; else a problem."""
    absolute = ledger.location.data_path + path
    if ledger.store.size(absolute) is None:
        result.problems.append(f"{where}: file `{path}` is missing")
        return False
    sha256, size = _sha256(ledger.store, absolute)
    result.files += 1
    result.bytes_checked += size
    if checksums.get(path, (None, None))[1] != sha256:
        result.problems.append(f"{where}: file `{path}` does not match the SHA-256 recorded when it was written")
        return False
    return True


def _audit_proof(
    ledger: Ledger,
    result: CompactionAudit,
    where: str,
    table: str,
    files: list[_File],
    merged_path: str,
    recorded: tuple[int, str],
    checksums: dict[str, tuple[int, str]],
) -> None:
    connection = ledger.connection
    for path in [file.relative_path for file in files] + [merged_path]:
        if not _file_as_recorded(ledger, path, checksums, result, where):
            return
    # The retired files' recorded row counts were summed against the record by the caller (`audit`).
    # A file's own rows' snapshots: its begin snapshot, or its snapshot column when it is itself a merged file.
    begins = _begin_snapshots(ledger, table, [file.relative_path for file in files])
    files = [
        _File(table, f.relative_path, f.absolute_path, f.rows, 0, begins.get(f.relative_path, -1), 0, False, None)
        for f in files
    ]
    try:
        retired_rows = merged_rows_sql(table, rows_sql(connection, files, table))
        (before,) = connection.execute(rows_digest_sql(table, retired_rows)).fetchall()
        merged = f"SELECT * FROM read_parquet({_quote(ledger.location.data_path + merged_path)})"
        (after,) = connection.execute(rows_digest_sql(table, merged)).fetchall()
    except duckdb.Error as error:
        result.problems.append(f"{where}: its files cannot be read to check the proof ({error})")
        return
    finally:
        with suppress(duckdb.Error):
            connection.unregister("compaction_files")
    for name, found in (("the retired files", before), ("the merged file", after)):
        if (int(found[0]), str(found[1])) != recorded:
            result.problems.append(
                f"{where}: {name} hold {found[0]} rows with digest {found[1]}; the compaction recorded "
                f"{recorded[0]} rows with digest {recorded[1]}"
            )


def _audit_merged(
    ledger: Ledger,
    result: CompactionAudit,
    where: str,
    table: str,
    merged_path: str,
    recorded: tuple[int, str],
    checksums: dict[str, tuple[int, str]],
) -> None:
    """Check a merged file whose retired files an expiry dropped: its SHA-256 and its rows against the record."""
    if not _file_as_recorded(ledger, merged_path, checksums, result, where):
        return
    absolute = ledger.location.data_path + merged_path
    try:
        (found,) = ledger.connection.execute(
            rows_digest_sql(table, f"SELECT * FROM read_parquet({_quote(absolute)})")
        ).fetchall()
    except duckdb.Error as error:
        result.problems.append(f"{where}: its merged file cannot be read to check the proof ({error})")
        return
    if (int(found[0]), str(found[1])) != recorded:
        result.problems.append(
            f"{where}: the merged file holds {found[0]} rows with digest {found[1]}; the compaction recorded "
            f"{recorded[0]} rows with digest {recorded[1]}"
        )


def _begin_snapshots(ledger: Ledger, table: str, paths: list[str]) -> dict[str, int]:
    metadata = f"__ducklake_metadata_{catalog_alias}"
    wanted = {path.removeprefix(f"main/{table}/"): path for path in paths}
    rows = ledger.connection.execute(
        f"""SELECT d.path, d.begin_snapshot FROM {metadata}.ducklake_data_file d
            JOIN {metadata}.ducklake_table t
              ON t.table_id = d.table_id AND t.end_snapshot IS NULL AND t.table_name = ?""",
        [table],
    ).fetchall()
    return {wanted[path]: int(begin) for path, begin in rows if path in wanted}
