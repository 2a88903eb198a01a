"""A bounded catalog: expire old snapshots under a retention policy, and keep the append-only proof.

Every append is one DuckLake snapshot: its catalog row, its change list and, once a compaction retired its small
files, their data-file rows and column statistics stay in the catalog for ever unless snapshots are expired
(DuckLake's `ducklake_expire_snapshots`). `expire` expires every snapshot older than a cutoff except those the
ledger still needs (`retention`):

- every epoch's closing snapshot and every snapshot a ledger table refers to (a column named `*_snapshot`: the
  epochs' previous and closing snapshots, the trees', the suspense items' ...): settlement, bundles and time
  travel read the ledger as of those;
- every snapshot that did more than append to the stream's tables (events, rollups, dead letters, their
  bookkeeping) or compact them: registrations (their arrival time decides authority), settlement writes, format
  steps, table creations, and the expiry records themselves;
- the latest snapshot (DuckLake keeps it) and every snapshot younger than the cutoff.

Time travel (`--as-of-snapshot`) is promised to retained snapshots only. DuckLake also drops the catalog rows of
the files a compaction retired that no retained snapshot sees any more, and schedules those files for deletion;
`expire` deletes them once scheduled `delete_files_after_s` ago (their rows are in the merged file, proven when it
was written).

The history that goes away is what `royalty verify` checked per snapshot (each snapshot's kinds of change). In
the same transaction as the expiry, one row of `ledger_snapshot_expiry` records: the snapshots expired (id ranges),
the SHA-256 of their history (id, time, schema version and change list of each), the retired files dropped (count
and an order-independent digest of their paths), and a chain digest over these fields and the previous expiry's.
Only snapshots whose changes verify accepts are ever expired (the policy retains any other), so the history
digested was append-only. `verify` then checks, in place of the history that is gone (`audit`): every snapshot
id missing from the catalog is one an expiry recorded and no recorded one is still there; every retired file gone
from the catalog is one an expiry dropped (count and digest); the records chain. The row itself is an inlined row
with its digest (ledger/inlined_digest.py), so a record changed in the catalog is named twice.
"""

import hashlib
import json
import logging
import sqlite3
import uuid
from bisect import bisect_left
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from ledger import constants
from ledger.catalog_flush import flush_once
from ledger.compaction import close_step, compactable_tables, paths_digest
from ledger.connection import catalog_alias
from ledger.errors import LedgerBusyError, LedgerError
from ledger.format import ledger_tables
from ledger.inlined_digest import digest_table
from ledger.ledger import Ledger
from ledger.tables import compaction_retired_table, compaction_summary_table, compaction_table, expiry_table

log = logging.getLogger(__name__)
_metadata = f"__ducklake_metadata_{catalog_alias}"

# The tables a stream's appends and compactions write: a snapshot that only inserted into these (or retired files
# of them in a recorded compaction) may be expired.
stream_tables = frozenset(
    {
        *compactable_tables,
        "ingest_offset", "ingest_batch", "file_checksum", "file_source_position", "dead_letter_line",
        digest_table, compaction_table, compaction_retired_table, compaction_summary_table,
    }
)  # fmt: skip
# Columns named so refer to snapshots, except in these tables (compaction ranges, not read by time travel).
_snapshot_column_suffix = "snapshot"
_unreferencing_tables = frozenset({compaction_table, expiry_table})
_insert_kinds = frozenset({"tables_inserted_into", "inlined_insert"})


class RetainedSnapshotError(LedgerError):
    """A snapshot asked to be expired is one the retention policy keeps."""


@dataclass
class ExpiryReport:
    """What one `expire` run expired (or, with `dry_run`, would expire)."""

    snapshots_expired: int = 0
    snapshots_retained: int = 0
    expired_ranges: str = ""
    files_dropped: int = 0
    files_deleted: int = 0
    # Bookkeeping rows moved out of the catalog into checksummed Parquet files (ledger/catalog_flush.py).
    rows_flushed: int = 0
    dry_run: bool = False
    snapshot: int | None = None  # the snapshot that recorded the expiry


@dataclass
class _Snapshot:
    snapshot_id: int
    time: datetime
    schema_version: int
    changes: dict


@dataclass
class _Plan:
    expired: list[int]
    retained: list[int]
    history_sha256: str
    dropped: list[str] = field(default_factory=list)  # relative paths of retired files no retained snapshot sees


def expire(
    ledger: Ledger,
    older_than_s: float = constants.expire_older_than_s_default,
    dry_run: bool = False,
    snapshots: list[int] | None = None,
    delete_files_after_s: float = constants.expired_files_delete_after_s,
    now: datetime | None = None,
    flush_rows_min: int = constants.bookkeeping_flush_rows_min,
) -> ExpiryReport:
    """Expire every snapshot older than `older_than_s` the policy does not retain (or only `snapshots`, each of which
    must be expirable: `RetainedSnapshotError` otherwise), in runs of at most `expire_snapshots_per_transaction_max`,
    the newest first, each recorded in its own transaction (a failed run leaves the runs before it done); then delete
    the retired files DuckLake scheduled for deletion at least `delete_files_after_s` ago, and move the bookkeeping
    tables' inlined rows out of the catalog where one holds at least `flush_rows_min` (ledger/catalog_flush.py).

    Holds the close-epoch step lock, so no epoch closes on a snapshot being expired.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    report = ExpiryReport(dry_run=dry_run)
    with ledger.step_lock(close_step):
        plan = ledger.reading(lambda: _plan(ledger.connection, cutoff, snapshots), "plan a snapshot expiry")
        _fill(report, plan)
        if dry_run:
            return report
        chunks = _newest_first(plan.expired, constants.expire_snapshots_per_transaction_max)
        report.files_dropped = 0
        for number, chunk in enumerate(chunks, start=1):
            done = _expire_chunk(ledger, cutoff, chunk)
            report.files_dropped += len(done.dropped)
            report.snapshots_retained = len(done.retained)
            report.snapshot = ledger._last_committed_snapshot()
            _check_dropped(ledger, done)
            log.info(
                "ledger snapshots expired",
                extra={"snapshots": len(done.expired), "files_dropped": len(done.dropped), "snapshot": report.snapshot,
                       "transaction": number, "transactions": len(chunks)},
            )  # fmt: skip
        report.files_deleted = _delete_scheduled_files(ledger, delete_files_after_s)
        report.rows_flushed = sum(ledger._retrying(lambda: flush_once(ledger, flush_rows_min), "flush").values())
    return report


def _newest_first(expired: list[int], per_transaction: int) -> list[list[int]]:
    """`expired` in runs of at most `per_transaction` consecutive ids, the newest run first
    (`constants.expire_snapshots_per_transaction_max` says why)."""
    ordered = sorted(expired, reverse=True)
    return [sorted(ordered[start : start + per_transaction]) for start in range(0, len(ordered), per_transaction)]


def _expire_chunk(ledger: Ledger, cutoff: datetime, chunk: list[int]) -> _Plan:
    """Expire the snapshots `chunk` and record it, in one transaction planned inside it (each must still be
    expirable: `RetainedSnapshotError` otherwise, nothing of this chunk expired)."""

    def once() -> _Plan:
        with ledger._transaction():
            plan = _plan(ledger.connection, cutoff, chunk)
            _expire_and_record(ledger, plan)
        return plan

    return ledger._retrying(once, "expire snapshots")


def _fill(report: ExpiryReport, plan: _Plan) -> None:
    report.snapshots_expired = len(plan.expired)
    report.snapshots_retained = len(plan.retained)
    report.expired_ranges = ranges_text(plan.expired)
    report.files_dropped = len(plan.dropped)


def retained_snapshots(connection: duckdb.DuckDBPyConnection, cutoff: datetime) -> list[int]:
    """The snapshots the retention policy keeps at `cutoff` (ascending)."""
    return _plan(connection, cutoff, None).retained


def _plan(connection: duckdb.DuckDBPyConnection, cutoff: datetime, only: list[int] | None) -> _Plan:
    history = _history(connection)
    names = _table_names(connection)
    referenced = _referenced_snapshots(connection)
    compacted = _compacted_tables(connection)
    latest = history[-1].snapshot_id
    expired: list[int] = []
    retained: list[int] = []
    for item in history:
        keep = (
            item.snapshot_id == latest
            or item.time > cutoff
            or item.snapshot_id in referenced
            or not _stream_only(item.changes, names, compacted.get(item.snapshot_id, set()))
        )
        (retained if keep else expired).append(item.snapshot_id)
    if only is not None:
        kept = sorted(set(only) - set(expired))
        if kept:
            raise RetainedSnapshotError(
                f"snapshot(s) {ranges_text(kept)} are not expirable: the retention policy keeps them (an epoch's "
                "closing snapshot or one a ledger table refers to, a snapshot that did more than append to the "
                "stream's tables, the latest, or one younger than --older-than-s) or they do not exist; nothing "
                "was expired"
            )
        wanted = set(only)
        retained = sorted(set(retained) | (set(expired) - wanted))
        expired = sorted(wanted)
    chosen = set(expired)
    return _Plan(
        expired,
        retained,
        history_sha256([item for item in history if item.snapshot_id in chosen]),
        _dropped_files(connection, retained),
    )


def _history(connection: duckdb.DuckDBPyConnection) -> list[_Snapshot]:
    rows = connection.execute(
        f"SELECT snapshot_id, snapshot_time, schema_version, changes FROM ducklake_snapshots('{catalog_alias}') "
        "ORDER BY snapshot_id"
    ).fetchall()
    return [_Snapshot(int(s), t.astimezone(UTC), int(v), dict(c or {})) for s, t, v, c in rows]


def history_sha256(history: list[_Snapshot]) -> str:
    """SHA-256 of the snapshots' history: one line per snapshot (id, commit time in µs, schema version, changes)."""
    digest = hashlib.sha256()
    for item in history:
        changes = {kind: sorted(map(str, subjects or [])) for kind, subjects in sorted(item.changes.items())}
        micros = int(item.time.timestamp() * 1_000_000)
        line = json.dumps([item.snapshot_id, micros, item.schema_version, changes], separators=(",", ":"))
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def _table_names(connection: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = connection.execute(f"SELECT table_id, table_name FROM {_metadata}.ducklake_table").fetchall()
    return {str(table_id): name for table_id, name in rows}


def _stream_only(changes: dict, names: dict[str, str], compacted: set[str]) -> bool:
    """Whether a snapshot's changes only inserted into stream tables, or retired their files in a recorded
    compaction (what verify accepts of such a snapshot)."""
    if not changes:
        return False
    for kind, subjects in changes.items():
        tables = {names.get(str(s), str(s).split(".")[-1]) for s in subjects or []}
        if kind in _insert_kinds and tables <= stream_tables:
            continue
        if kind == "tables_deleted_from" and compacted and tables <= compacted:
            continue
        return False
    return True


def _referenced_snapshots(connection: duckdb.DuckDBPyConnection) -> set[int]:
    """Every snapshot a ledger table names in a `*_snapshot` column (epochs' closing and previous snapshots, ...)."""
    columns = connection.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = 'main' "
        "AND column_name LIKE ? AND data_type IN ('BIGINT', 'INTEGER', 'UBIGINT', 'HUGEINT')",
        [catalog_alias, f"%{_snapshot_column_suffix}"],
    ).fetchall()
    referenced: set[int] = set()
    for table, column in columns:
        if table in _unreferencing_tables:
            continue
        rows = connection.execute(
            f'SELECT DISTINCT "{column}" FROM {catalog_alias}.main."{table}" WHERE "{column}" IS NOT NULL'
        ).fetchall()
        referenced.update(int(value) for (value,) in rows)
    return referenced


def _compacted_tables(connection: duckdb.DuckDBPyConnection) -> dict[int, set[str]]:
    if compaction_table not in ledger_tables(connection):
        return {}
    result: dict[int, set[str]] = {}
    for snapshot, table in connection.execute(
        f"SELECT snapshot_id, table_name FROM {catalog_alias}.main.{compaction_table}"
    ).fetchall():
        result.setdefault(int(snapshot), set()).add(table)
    return result


def _retired_files(connection: duckdb.DuckDBPyConnection) -> list[tuple[str, int, int]]:
    """(path relative to the data folder, begin snapshot, end snapshot) of every retired file the catalog lists."""
    rows = connection.execute(
        f"""SELECT t.table_name, d.path, d.begin_snapshot, d.end_snapshot FROM {_metadata}.ducklake_data_file d
            JOIN {_metadata}.ducklake_table t ON t.table_id = d.table_id AND t.end_snapshot IS NULL
            WHERE d.end_snapshot IS NOT NULL"""
    ).fetchall()
    return [(f"main/{table}/{path}", int(begin), int(end)) for table, path, begin, end in rows]


def _dropped_files(connection: duckdb.DuckDBPyConnection, retained: list[int]) -> list[str]:
    """The retired files no retained snapshot sees (visible from their begin snapshot up to, not at, their end)."""
    dropped = []
    for path, begin, end in _retired_files(connection):
        index = bisect_left(retained, begin)
        if index == len(retained) or retained[index] >= end:
            dropped.append(path)
    return sorted(dropped)


def _expire_and_record(ledger: Ledger, plan: _Plan) -> None:
    """In the caller's transaction: expire `plan.expired`, check DuckLake dropped exactly `plan.dropped`, record."""
    connection = ledger.connection
    connection.execute(
        f"CALL ducklake_expire_snapshots('{catalog_alias}', versions => ?)", [plan.expired]
    ).fetchall()
    previous = _records(connection)
    previous_sha256 = previous[-1]["chain_sha256"] if previous else ""
    record = {
        "expiry_id": uuid.uuid4().hex,
        "expired_at": datetime.now(UTC),
        "snapshot_count": len(plan.expired),
        "expired_ranges": ranges_text(plan.expired),
        "history_sha256": plan.history_sha256,
        "files_dropped": len(plan.dropped),
        "files_digest": paths_digest(plan.dropped),
        "previous_sha256": previous_sha256,
    }
    record["chain_sha256"] = chain_sha256(record)
    ledger._insert_inlined_rows(expiry_table, [list(record.values())])


def _check_dropped(ledger: Ledger, plan: _Plan) -> None:
    """After the commit (DuckLake drops the files' rows then): the retired files still listed are all but `dropped`."""
    listed = {path for path, _, _ in ledger.reading(lambda: _retired_files(ledger.connection), "list retired files")}
    wrong = sorted(listed & set(plan.dropped))
    if wrong:
        raise LedgerError(
            f"the snapshot expiry recorded at snapshot {ledger._last_committed_snapshot()} expected DuckLake to drop "
            f"{len(plan.dropped)} retired file(s) from the catalog, but {len(wrong)} are still listed (e.g. "
            f"`{wrong[0]}`): `royalty verify` reports the difference; report this (the DuckLake version may expire "
            "differently)"
        )


def chain_sha256(record: dict) -> str:
    """The chain digest of an expiry record: its fields (but the time and its own digest) and the previous digest."""
    fields = [
        record["expiry_id"], int(record["snapshot_count"]), record["expired_ranges"], record["history_sha256"],
        int(record["files_dropped"]), str(record["files_digest"]), record["previous_sha256"],
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


def expired_snapshots(connection: duckdb.DuckDBPyConnection) -> list[tuple[int, int]]:
    """The snapshot id ranges (inclusive) the recorded expiries removed, coalesced."""
    return _coalesce([item for record in _records(connection) for item in parse_ranges(record["expired_ranges"])])


def _records(connection: duckdb.DuckDBPyConnection) -> list[dict]:
    if expiry_table not in ledger_tables(connection):
        return []
    cursor = connection.execute(f"SELECT snapshot_id, * FROM {catalog_alias}.main.{expiry_table} ORDER BY snapshot_id")
    columns = [item[0] for item in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _delete_scheduled_files(ledger: Ledger, after_s: float) -> int:
    """Delete the files DuckLake scheduled for deletion at least `after_s` ago (readers of an expired snapshot may
    still be reading them until then); their catalog rows go with them."""
    older_than = datetime.now(UTC) - timedelta(seconds=after_s)
    if ledger.location.backend == "sqlite":
        return _delete_scheduled_files_sqlite(ledger, older_than)

    def once() -> int:  # PostgreSQL: DuckLake's own cleanup (it compares the schedule's timestamps)
        rows = ledger.connection.execute(
            f"CALL ducklake_cleanup_old_files('{catalog_alias}', older_than => ?::TIMESTAMPTZ)", [older_than]
        ).fetchall()
        return len(rows)

    return ledger._retrying(once, "delete the files expired snapshots retired")


def _delete_scheduled_files_sqlite(ledger: Ledger, older_than: datetime) -> int:
    """DuckLake's cleanup for an SQLite catalog, in runs of `cleanup_files_per_transaction_max` files on a connection
    of its own to the catalog file.

    `ducklake_cleanup_old_files` deletes every due file's row in one transaction of the DuckDB connection's catalog
    handle; with tens of thousands (an expiry after compacting months of appends) that delete outgrew SQLite's page
    cache and waited on the shared lock of the connection's other catalog handle without end (30,005 files: stopped
    after 20 minutes, in session 10 and again in session 12). It also compares an SQLite catalog's schedule by day
    (a bound of 00:00:01 deleted files scheduled at 01:29 that day). Here the due files are read once, their schedule
    compared exactly; each run removes its files (a file already gone is fine: a killed run is finished by the next)
    and then deletes their rows in a short transaction, under SQLite's own locking beside every other writer."""
    catalog_file = ledger.location.catalog.removeprefix("sqlite:")
    data_path = ledger.location.data_path
    with closing(sqlite3.connect(catalog_file, timeout=constants.cleanup_lock_wait_s, isolation_level=None)) as db:
        scheduled = db.execute(
            "SELECT data_file_id, path, path_is_relative, schedule_start FROM ducklake_files_scheduled_for_deletion "
            "ORDER BY data_file_id"
        ).fetchall()
        due = [(file_id, data_path + path if relative else path)
               for file_id, path, relative, start in scheduled if _scheduled_at(start, path) <= older_than]  # fmt: skip
        deleted = 0
        for first in range(0, len(due), constants.cleanup_files_per_transaction_max):
            run = due[first : first + constants.cleanup_files_per_transaction_max]
            for _, path in run:
                ledger.store.remove(path)
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:  # the busy timeout passed: another writer holds the catalog
                raise LedgerBusyError(f"deleting the files expired snapshots retired: {error}") from error
            try:
                deleted += db.executemany(
                    "DELETE FROM ducklake_files_scheduled_for_deletion WHERE data_file_id = ?",
                    [(file_id,) for file_id, _ in run],
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
    return deleted


def _scheduled_at(schedule_start: object, path: str) -> datetime:
    """When DuckLake scheduled a file for deletion (its text, e.g. `2026-12-07 08:06:48.835442+00`)."""
    try:
        scheduled = datetime.fromisoformat(str(schedule_start))
    except ValueError as error:
        raise LedgerError(f"the catalog schedules `{path}` for deletion at `{schedule_start}`, not a time") from error
    return scheduled if scheduled.tzinfo is not None else scheduled.replace(tzinfo=UTC)


def ranges_text(ids: list[int]) -> str:
    """Sorted ids as inclusive ranges: [1, 2, 3, 7] -> "1-3,7"."""
    parts = []
    for first, last in _ranges(sorted(set(ids))):
        parts.append(str(first) if first == last else f"{first}-{last}")
    return ",".join(parts)


def parse_ranges(text: str) -> list[tuple[int, int]]:
    ranges = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        ranges.append((int(first), int(last or first)))
    return ranges


def _ranges(ids: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for value in ids:
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], value)
        else:
            ranges.append((value, value))
    return ranges


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


@dataclass
class ExpiryAudit:
    """What `verify` learns from the expiry records."""

    snapshots_expired: int = 0
    problems: list[str] = field(default_factory=list)


# A tampered catalog could miss millions of snapshots: verify names this many ids, then counts.
_ids_named_max = 20


def audit(
    connection: duckdb.DuckDBPyConnection,
    dropped_count: int,
    dropped_digest: int,
    dropped_example: Callable[[], str | None] = lambda: None,
) -> ExpiryAudit:
    """Check the expiry records against the catalog: the chain, the expired ids against the ids missing from the
    history, and the files a compaction retired that the catalog no longer lists (their count, `paths_digest` and
    a function naming the least of them, from `ledger.compaction.audit`) against the files the expiries dropped."""
    result = ExpiryAudit()
    records = _records(connection)
    previous = ""
    recorded: list[tuple[int, int]] = []
    files = 0
    digest = 0
    for record in records:
        where = f"the snapshot expiry recorded at snapshot {record['snapshot_id']} ({record['expiry_id']})"
        ranges = parse_ranges(record["expired_ranges"])
        if record["previous_sha256"] != previous:
            result.problems.append(f"{where} does not chain to the expiry before it: an expiry record was removed")
        if chain_sha256(record) != record["chain_sha256"]:
            result.problems.append(
                f"{where} was changed in the catalog: its fields (expired snapshots, history digest "
                f"{record['history_sha256']}, dropped files) do not hash to its chain digest"
            )
        if sum(last - first + 1 for first, last in ranges) != int(record["snapshot_count"]):
            result.problems.append(f"{where} lists {record['expired_ranges']} for {record['snapshot_count']} snapshots")
        previous = record["chain_sha256"]
        recorded += ranges
        files += int(record["files_dropped"])
        digest += int(record["files_digest"])
    result.snapshots_expired = sum(last - first + 1 for first, last in _coalesce(recorded))
    present = [int(s) for (s,) in connection.execute(
        f"SELECT snapshot_id FROM ducklake_snapshots('{catalog_alias}') ORDER BY snapshot_id"
    ).fetchall()]  # fmt: skip
    missing = _ranges_missing(present)
    if _coalesce(recorded) != missing:
        expected = _expand(_coalesce(recorded))
        gone = _expand(missing)
        unrecorded = sorted(gone - expected)
        still_there = sorted(expected - gone)
        if unrecorded:
            result.problems.append(
                f"{len(unrecorded)} snapshot(s) are gone from the history and no expiry recorded them (ids "
                f"{ranges_text(unrecorded[:_ids_named_max])}{' ...' if len(unrecorded) > _ids_named_max else ''}): "
                "history was removed behind the ledger's back"
            )
        if still_there:
            result.problems.append(
                f"{len(still_there)} snapshot(s) an expiry recorded as expired are still in the catalog (ids "
                f"{ranges_text(still_there[:_ids_named_max])}): the expiry records do not match the history"
            )
    if dropped_count != files or dropped_digest % 2**64 != digest % 2**64:
        example = dropped_example()
        result.problems.append(
            f"{dropped_count} file(s) a compaction retired are gone from the catalog, but the snapshot expiries "
            f"recorded dropping {files}: a retired file's catalog row was removed behind the ledger's back"
            + (f" (e.g. `{example}`)" if example else "")
        )
    return result


def _ranges_missing(present: list[int]) -> list[tuple[int, int]]:
    """The id ranges from 0 to the latest snapshot that `present` (ascending) lacks."""
    missing = []
    expected = 0
    for snapshot in present:
        if snapshot > expected:
            missing.append((expected, snapshot - 1))
        expected = snapshot + 1
    return missing


def _expand(ranges: list[tuple[int, int]]) -> set[int]:
    return {value for first, last in ranges for value in range(first, last + 1)}
