"""Proof that the ledger is append-only and its files are the ones that were written.

The snapshot history must contain only creations and inserts; no data file may ever have
been retired or masked by a delete file, except by a compaction that recorded the files it retired
and the proof that its merged file holds exactly their rows (`ledger/compaction.py`, re-checked here);
every data file listed by the catalog must exist
with the size the catalog recorded and the SHA-256 the ledger recorded when it added it (read back from
the data path, a local folder or S3: `ledger/object_store.py`).
Files in the data folder that no snapshot lists are reported beside (`ledger/orphans.py`).
Snapshots a recorded expiry removed (`ledger/expiry.py`) are checked by their record instead: every id missing
from the history must be one an expiry recorded, every retired file gone from the catalog one it dropped.
Bookkeeping rows are checked against the digests their transactions recorded (`ledger/inlined_digest.py`), but those
in a file a flush checked when it moved them out of the catalog (format 20, `ledger/catalog_flush.py`), which is
checked by its SHA-256 and its record instead.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

from ledger.catalog_flush import flushed_tables
from ledger.compaction import audit as audit_compactions
from ledger.connection import catalog_alias
from ledger.expiry import audit as audit_expiries
from ledger.format import format_table
from ledger.inlined_digest import MovedFile, check_inlined_rows
from ledger.ledger import Ledger
from ledger.object_store import DataStore
from ledger.orphans import OrphanFile, find_orphans
from ledger.tables import flushed_file_table, inlined_tables

# The only kinds of change an append-only ledger makes, as DuckLake names them.
allowed_changes = {"schemas_created", "tables_created", "tables_inserted_into", "inlined_insert"}


@dataclass
class VerifyReport:
    """What `verify` checked and every problem it found."""

    snapshots: int = 0
    # Snapshots a recorded expiry removed from the history (ledger/expiry.py): checked by their record.
    snapshots_expired: int = 0
    files: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    # Files no snapshot lists (left by interrupted appends): not part of the ledger, so not a
    # problem, but space to reclaim. In a local folder or under an `s3://` prefix alike.
    orphans: list[OrphanFile] = field(default_factory=list)
    # Offset ranges of a partition appended more than once: the ledger is intact, but the events
    # there are stored twice (settlement counts each event once).
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(ledger: Ledger, retired_files: bool = False) -> VerifyReport:
    """Check the whole ledger. The files compactions retired are read again only with `retired_files` (time
    travel to before a compaction reads them; a backup checks all it copied): otherwise each compaction's
    record is checked against the catalog and its merged file's SHA-256 like any live file's, which its proof
    was checked against before it was committed (`ledger.compaction.audit`)."""
    report = VerifyReport()
    connection = ledger.connection
    metadata = f"__ducklake_metadata_{catalog_alias}"
    format_table_ids = {
        str(table_id)
        for (table_id,) in connection.execute(
            f"SELECT table_id FROM {metadata}.ducklake_table WHERE table_name = ?", [format_table]
        ).fetchall()
    }
    # Every file's recorded checksum only where the files compactions retired are read; else those of the files listed.
    checksums = _recorded_checksums(ledger) if retired_files else {}
    compactions = audit_compactions(ledger, checksums, retired_files)
    report.problems += compactions.problems
    report.files += compactions.files
    report.bytes_checked += compactions.bytes_checked
    expiries = audit_expiries(
        connection, compactions.dropped_count, compactions.dropped_digest, compactions.dropped_example
    )
    report.problems += expiries.problems
    report.snapshots_expired = expiries.snapshots_expired
    names = {
        str(table_id): name
        for table_id, name in connection.execute(
            f"SELECT table_id, table_name FROM {metadata}.ducklake_table"
        ).fetchall()
    }
    for snapshot_id, changes in connection.execute(
        f"SELECT snapshot_id, changes FROM {catalog_alias}.snapshots() ORDER BY snapshot_id"
    ).fetchall():
        report.snapshots += 1
        changes = changes or {}
        migration_step = _records_a_format_step(changes, format_table_ids)
        for kind, subjects in changes.items():
            if kind == "tables_altered" and migration_step:
                continue  # a column added by a `royalty migrate` step, recorded in the same snapshot
            if kind == "tables_deleted_from" and _compacted(subjects, compactions.snapshots.get(snapshot_id), names):
                continue  # files retired by a recorded compaction, checked below
            if kind == "flushed_inlined" and _bookkeeping_only(subjects, names):
                continue  # bookkeeping rows moved to checksummed files (ledger/catalog_flush.py): rows checked below
            if kind not in allowed_changes:
                report.problems.append(
                    f"snapshot {snapshot_id} made a change of kind `{kind}` ({subjects}); "
                    "an append-only ledger only creates and inserts"
                )
    (delete_files,) = connection.execute(f"SELECT count(*) FROM {metadata}.ducklake_delete_file").fetchone()
    if delete_files:
        report.problems.append(
            f"the catalog lists {delete_files} delete file(s): rows were deleted or updated"
        )
    for table_name, path, end_snapshot in connection.execute(
        f"""SELECT t.table_name, d.path, d.end_snapshot FROM {metadata}.ducklake_data_file d
            LEFT JOIN {metadata}.ducklake_table t ON t.table_id = d.table_id AND t.end_snapshot IS NULL
            WHERE d.end_snapshot IS NOT NULL"""
    ).fetchall():
        if (f"main/{table_name}/{path}", end_snapshot) in compactions.retirements:
            continue  # retired by a compaction that recorded it, with its proof (checked above)
        report.problems.append(
            f"data file `{path}` was retired at snapshot {end_snapshot}: rows were removed"
        )
    data_path = ledger.location.data_path
    tables = [
        name
        for (name,) in connection.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY ALL", [catalog_alias]
        ).fetchall()
    ]
    # Tables the catalog never listed a data file of list none at any snapshot: not asked (a call per table, most of
    # them inlined-only, was ~0.3 s of CPU of every verify).
    with_files = {
        name
        for (name,) in connection.execute(
            f"""SELECT DISTINCT t.table_name FROM {metadata}.ducklake_data_file d
                JOIN {metadata}.ducklake_table t ON t.table_id = d.table_id"""
        ).fetchall()
    }
    listed: set[str] = set()
    as_recorded: set[str] = set()  # listed files found with the size and SHA-256 recorded when they were added
    # One statement for every table (a statement per table cost ~4 ms of CPU each: 11 tables after a flush).
    listings = " UNION ALL ".join(
        f"SELECT data_file, data_file_size_bytes FROM ducklake_list_files({_quoted(catalog_alias)}, {_quoted(table)})"
        for table in tables
        if table in with_files
    )
    files = connection.execute(listings).fetchall() if listings else []
    if not retired_files:
        checksums = _recorded_checksums(ledger, [path.removeprefix(data_path) for path, _ in files])
    for path, size_bytes in files:
        report.files += 1
        listed.add(path)
        if _check_file(report, path, size_bytes, checksums.get(path.removeprefix(data_path)), ledger.store):
            as_recorded.add(path)
    report.orphans = find_orphans(ledger, listed)
    moved = _moved_files(ledger, report, checksums, listed, as_recorded) if flushed_file_table in tables else []
    try:
        report.warnings += _offset_overlaps(ledger)
        inlined_problems, inlined_warnings = check_inlined_rows(connection, catalog_alias, inlined_tables, moved)
    except duckdb.Error as error:
        # A bookkeeping file moved out of the catalog (ledger/catalog_flush.py) that was changed may not read at all;
        # its SHA-256 mismatch is named above.
        inlined_problems, inlined_warnings = [f"the bookkeeping rows cannot be read to check them: {error}"], []
    report.problems += inlined_problems
    report.warnings += inlined_warnings
    return report


def check_files(ledger: Ledger, files: Iterable[tuple[str, int]]) -> VerifyReport:
    """Check only `files` (absolute path, size the catalog lists): each exists with that size and its
    recorded SHA-256. What `close-epoch` and `settle` run on the files they read."""
    report = VerifyReport()
    checksums = _recorded_checksums(ledger)
    data_path = ledger.location.data_path
    for path, size_bytes in files:
        report.files += 1
        _check_file(report, path, size_bytes, checksums.get(path.removeprefix(data_path)), ledger.store)
    return report


def _recorded_checksums(ledger: Ledger, paths: list[str] | None = None) -> dict[str, tuple[int, str]]:
    """(size, SHA-256) the ledger recorded for each file it added (or those of `paths`), by path relative to the data
    folder. Filtered in DuckDB: file_checksum holds a row per file ever added, ~3 per append."""
    where = "" if paths is None else " WHERE path IN (SELECT unnest(?::VARCHAR[]))"
    return {
        path: (size_bytes, sha256)
        for path, size_bytes, sha256 in ledger.connection.execute(
            f"SELECT path, size_bytes, sha256 FROM {catalog_alias}.main.file_checksum{where}",
            [] if paths is None else [paths],
        ).fetchall()
    }


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _moved_files(
    ledger: Ledger, report: VerifyReport, checksums: dict[str, tuple[int, str]], listed: set[str], as_recorded: set[str]
) -> list[MovedFile]:
    """The bookkeeping files whose rows a flush checked when it wrote them (format 20, `ledger_flushed_file`) that are
    listed now with the bytes it recorded: their rows are not digested again (`check_inlined_rows`). A recorded file no
    longer listed is a problem (its rows were removed); one changed is named by its SHA-256 above and its rows are
    digested again, which names them."""
    connection = ledger.connection
    data_path = ledger.location.data_path
    moved = []
    for snapshot, table, path, size_bytes, sha256, rows, low, high, digests in connection.execute(
        f"""SELECT snapshot_id, table_name, path, size_bytes, sha256, row_count, snapshot_id_min, snapshot_id_max,
                   digests_sha256 FROM {catalog_alias}.main.{flushed_file_table} ORDER BY snapshot_id, path"""
    ).fetchall():
        absolute = data_path + path
        if absolute not in listed:
            report.problems.append(
                f"bookkeeping file `{absolute}`, which the flush at snapshot {snapshot} recorded with {rows} row(s) of "
                f"`{table}` (snapshots {low}-{high}), is not listed by the catalog: its rows were removed"
            )
        elif absolute in as_recorded and checksums.get(path) == (size_bytes, sha256):
            moved.append(MovedFile(table, absolute, int(low), int(high), digests))
    return moved


def _compacted(subjects: list[str], compacted: set[str] | None, names: dict[str, str]) -> bool:
    """Whether every table a snapshot deleted from is one a compaction recorded in that snapshot compacted."""
    return bool(compacted) and all(names.get(str(subject), str(subject)) in compacted for subject in subjects)


def _bookkeeping_only(subjects: list[str], names: dict[str, str]) -> bool:
    """Whether every table whose inlined rows a snapshot flushed to a file is a bookkeeping table the ledger flushes
    (their rows keep their snapshots and are checked against their digests like inlined ones; the files against
    their recorded SHA-256 like any data file)."""
    return bool(subjects) and all(names.get(str(subject), str(subject)) in flushed_tables for subject in subjects)


def _records_a_format_step(changes: dict[str, list[str]], format_table_ids: set[str]) -> bool:
    """Whether a snapshot inserted a `ledger_format` row: a migration step, which may alter tables."""
    inserted = [*changes.get("inlined_insert", []), *changes.get("tables_inserted_into", [])]
    return any(
        subject in format_table_ids or subject.split(".")[-1] == format_table for subject in map(str, inserted)
    )


def _offset_overlaps(ledger: Ledger) -> list[str]:
    """Batches whose offset range starts below what earlier batches of the partition covered.

    The offsets fence refuses such a batch, except when two writers both pass it before either
    commits (two consumers owning one partition at the same instant, or a reset topic).
    """
    rows = ledger.connection.execute(
        f"""
        WITH ranges AS (
            SELECT o.*, b.writer,
                   max(o.next_offset) OVER (
                       PARTITION BY o.kafka_topic, o.kafka_partition ORDER BY o.first_offset, b.committed_at,
                       o.ingest_batch_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                   ) AS covered_to
            FROM {catalog_alias}.main.ingest_offset o
            JOIN {catalog_alias}.main.ingest_batch b USING (ingest_batch_id)
        )
        SELECT kafka_topic, kafka_partition, first_offset, least(next_offset, covered_to), ingest_batch_id, writer
        FROM ranges WHERE first_offset < covered_to ORDER BY ALL
        """
    ).fetchall()
    return [
        f"offsets {first}..{last - 1} of {topic}/{partition} were appended again by batch {batch} "
        f"(writer {writer}): two writers owned the partition at once, or the topic was recreated; "
        "the events there are stored twice and settlement counts each once"
        for topic, partition, first, last, batch, writer in rows
    ]


def _check_file(
    report: VerifyReport, path: str, size_bytes: int, recorded: tuple[int, str] | None, store: DataStore
) -> bool:
    """Check one data file, read back from its store (a local folder or S3); whether it is as recorded."""
    actual_size = store.size(path)
    if actual_size is None:
        report.problems.append(f"data file `{path}` is missing")
        return False
    if actual_size != size_bytes:
        report.problems.append(
            f"data file `{path}` is {actual_size} bytes; the catalog recorded {size_bytes}"
        )
        return False
    if recorded is None:
        report.problems.append(f"data file `{path}` has no recorded checksum: it was not added by an append")
        return False
    digest = store.sha256(path)
    report.bytes_checked += actual_size
    if digest != recorded[1]:
        report.problems.append(
            f"data file `{path}` has SHA-256 {digest}, but {recorded[1]} was recorded "
            "when it was added: its contents changed"
        )
        return False
    return True
