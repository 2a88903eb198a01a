"""The append-only ledger on DuckLake.

`Ledger.append` is the only write path for ingested data: in one DuckLake transaction it
drops exact duplicates, turns conflicting duplicates and rejected messages into dead
letters, adds the Parquet files it wrote (recording each file's checksum), and stores the
offsets the batch covers. There is no update or delete anywhere in this package.
"""

import logging
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ledger import constants
from ledger.batch import DeadLetterReason, FileSourcePosition, IngestBatch, PartitionOffsets, dead_letter_rows
from ledger.connection import LedgerLocation, catalog_alias, committed_snapshot_function, connect, ledger_id
from ledger.errors import (
    LedgerBusyError,
    LedgerCatalogUnavailableError,
    LedgerError,
    LedgerFormatError,
    LedgerNotFoundError,
    LedgerOffsetsFencedError,
    LedgerReadOnlyError,
)
from ledger.format import (
    FormatStep,
    MigrationResult,
    format_table,
    format_version_current,
    ledger_tables,
    pending_steps,
    record_format,
    require_current_format,
    stored_format_version,
)
from ledger.inlined_digest import arrow_digests, digest_rows, digest_table, relation_digests, undigested_tables
from ledger.object_store import DataStore, ObjectStoreUnavailableError, store_for
from ledger.offsets_fence import StoredOffsets, read_stored_offsets
from ledger.partition_locks import PartitionLocks
from ledger.redact import redact
from ledger.rollups import metered_table, payer_rollup_rows, rollup_rows
from ledger.step_locks import StepLocks
from ledger.tables import (
    all_tables,
    create_statements,
    file_tables,
    inlined_tables,
    inlining_statements,
    payer_rollup_table,
    rollup_table,
    uncompressed_columns,
)
from schemas.arrow import envelope_fields, position_fields
from schemas.errors import require
from schemas.events import event_types
from schemas.reason_codes import ReasonCode

if TYPE_CHECKING:
    from ledger.recorder import Recorder

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors a concurrent writer causes: SQLite's single-writer lock, DuckLake's optimistic
# commit conflicts, PostgreSQL serialization failures. Anything else is not retried.
_transient_markers = (
    "database is locked",
    "conflict",
    "busy",
    "could not serialize",
    "deadlock",
    # DuckLake's commit met another writer's commit of the same ids (PostgreSQL catalog):
    'duplicate key value violates unique constraint "ducklake_',
)
# DuckLake caches a catalog's name maps per connection, reloading only ids above a watermark; with
# several writers on a PostgreSQL catalog a connection can pass a map another writer committed and then
# cannot read that writer's file. The catalog is intact (a fresh connection reads it): reconnect, retry.
_stale_cache_markers = ("unknown name map id",)
# A login the catalog refused (libpq's wording; DuckDB wraps it in "Unable to connect"): no retry cures it.
_login_refused_markers = (
    "password authentication failed",
    "no password supplied",
    "does not exist",  # the role or the database, after libpq's FATAL
    "pg_hba.conf",
)
# DuckDB httpfs errors of an object store (an `s3://` data path) that is down, restarting or failing.
_object_store_lost_markers = (
    "could not establish connection",
    "unable to connect to url",
    "http error",
    "error for http",
    "http get error",
    "http head error",
    "http put error",
    "http post error",
)
# Errors of a catalog database that is down, restarting or cut off (libpq's wording): an outage
# the caller retries with backoff, unlike the contention above that the ledger retries itself.
_catalog_lost_markers = (
    "unable to connect",
    "could not connect",
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "no connection to the server",
    "ssl connection has been closed",
    "the database system is",  # starting up, shutting down, in recovery mode
)


# DuckDB keeps per-connection caches that grow with every append and that nothing bounds short
# of its memory limit (80% of RAM): Parquet data the duplicate check read, and catalog metadata
# of each new snapshot and file, about 0.2 MiB per append in all (benchmarks/RESULTS.md, Soak).
# A writer reconnects after this many appends, which keeps a long-running ingest service's
# memory flat (a sawtooth of ~40 MiB); at one append a second that is every 100 s, for ~0.1-0.3 s.
appends_per_connection_max = 100


@dataclass(frozen=True)
class AppendResult:
    """What one append stored."""

    snapshot_id: int
    ingest_batch_id: str
    events: int
    duplicates: int
    dead_letters: int
    # The stored dead letters counted by `reason_code` (schemas.reason_codes); sums to `dead_letters`.
    dead_letters_by_reason: Mapping[str, int] = dataclass_field(default_factory=dict)


@dataclass(frozen=True)
class _FileToAdd:
    table: str
    absolute_path: str
    relative_path: str
    size_bytes: int
    sha256: str


class Ledger:
    """A DuckLake ledger opened for writing (`open`) or for reading (`open_read_only`)."""

    def __init__(self, location: LedgerLocation, connection: duckdb.DuckDBPyConnection, read_only: bool) -> None:
        self.location = location
        self._connection: duckdb.DuckDBPyConnection | None = connection
        self.read_only = read_only
        # A read-only ledger opened as of an earlier snapshot reconnects as of the same one.
        self._snapshot_version: int | None = None
        self._appends_on_connection = 0
        # Transactions redone after meeting another writer (a commit conflict, SQLite's lock): for benchmarks.
        self.commit_retries = 0
        # File tables this connection committed a data file to: their column maps exist and later files reuse them.
        self._mapped_tables: set[str] = set()
        self._tables_committing: set[str] = set()
        self._ducklake_retries_allowed = False
        self._id: str | None = None
        # Row digests of what the open transaction inlined, by table; recorded in `inlined_digest` at commit.
        self._pending_digests: dict[str, list[str]] = {}
        # The ingest service appends from a worker thread while its polling thread may read the
        # stored offsets (partition assignment); one DuckDB connection serves one call at a time.
        self._lock = threading.RLock()
        # On a PostgreSQL catalog, appends hold a lock per partition so the offsets fence cannot be raced.
        self._partition_locks = (
            PartitionLocks(location.catalog.removeprefix("postgres:"), location.display)
            if location.backend == "postgres" and not read_only
            else None
        )
        # Settlement steps (close an epoch, write a tree, propose, record, sync claims) have one writer each.
        self._step_locks = None if read_only else StepLocks(location.backend, location.catalog, location.display)
        # The stored offsets the fence reads, kept between appends (ledger/offsets_fence.py).
        self._fence_offsets = StoredOffsets(location.backend)
        # The snapshot the open transaction reads, read once per transaction (data file names carry it).
        self._transaction_snapshot: int | None = None
        self._threads: int | None = None  # DuckDB's thread count on this machine, read at the first small append
        self._one_thread = False  # the connection runs on one thread, left so by a small append (`_threads_for`)
        self._in_append = False
        self._retries_wanted = False  # the open transaction may let DuckLake retry its commit
        # The data path: a local folder or an S3 prefix (ledger/object_store.py).
        self.store = store_for(location.data_path)

    @classmethod
    def open(
        cls, path_or_catalog_url: str | os.PathLike[str], data_path: str | None = None, create: bool = True
    ) -> "Ledger":
        """Open a ledger for writing; create it if it does not exist and `create` (only ingest creates one).

        With `create=False` a missing embedded ledger raises `LedgerNotFoundError` and nothing is created.
        """
        location = LedgerLocation.parse(path_or_catalog_url, data_path)
        if not create and not location.exists():
            raise LedgerNotFoundError(location.display)
        if create:
            location.prepare()
        try:
            connection = _connect_retrying(location, read_only=False, create=create)
        except duckdb.Error as error:
            raise _ledger_error(error, "open", location.display) from error
        ledger = cls(location, connection, read_only=False)
        try:
            ledger.store.check()  # refused credentials or a missing bucket: said now, not at the first append
            ledger._retrying(ledger._prepare_format, "check the ledger format")
            ledger._retrying(ledger._create_tables, "create tables")
            ledger._retrying(ledger._set_inlining_options, "set inlining options")
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def open_for_migration(cls, path_or_catalog_url: str | os.PathLike[str], data_path: str | None = None) -> "Ledger":
        """Open an existing ledger of any format this code knows, for `migrate` only."""
        location = LedgerLocation.parse(path_or_catalog_url, data_path)
        if not location.exists():
            raise LedgerNotFoundError(location.display)
        try:
            connection = _connect_retrying(location, read_only=False, create=False)
        except duckdb.Error as error:
            raise _ledger_error(error, "open", location.display) from error
        return cls(location, connection, read_only=False)

    @classmethod
    def open_read_only(
        cls,
        path_or_catalog_url: str | os.PathLike[str],
        data_path: str | None = None,
        snapshot_version: int | None = None,
    ) -> "Ledger":
        """Open an existing ledger for reading, optionally as of an earlier snapshot."""
        location = LedgerLocation.parse(path_or_catalog_url, data_path)
        if not location.exists():
            raise LedgerNotFoundError(location.display)
        try:
            connection = _connect_retrying(location, read_only=True, snapshot_version=snapshot_version)
            # A time-travel open sees the catalog as of its snapshot, maybe before the format was
            # recorded; the format is the current one's, checked by every current open.
            if snapshot_version is None:
                require_current_format(stored_format_version(connection), location.display)
        except duckdb.Error as error:
            raise _ledger_error(error, "open", location.display) from error
        except LedgerFormatError:
            connection.close()
            raise
        ledger = cls(location, connection, read_only=True)
        ledger._snapshot_version = snapshot_version
        try:
            ledger.store.check()
        except BaseException:
            ledger.close()
            raise
        return ledger

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            if self._partition_locks is not None:
                self._partition_locks.close()
            if self._step_locks is not None:
                self._step_locks.close()

    @property
    def recorder(self) -> "Recorder":
        """The recorder API on this ledger (`ledger.recorder`): reads under this ledger's lock and retries."""
        from ledger.recorder import Recorder  # it imports this module

        return Recorder(self)

    def ensure_tables(self) -> None:
        """Create every registered table this ledger lacks (tables registered after it was opened)."""
        if self.read_only:
            raise LedgerReadOnlyError("create tables")
        self._retrying(self._create_tables, "create tables")

    @contextmanager
    def step_lock(self, name: str) -> Iterator[None]:
        """Be the only writer of step `name` on this ledger for the block (any catalog, any process).

        A second holder waits (up to `partition_locks.lock_wait_s_max`, then `LedgerBusyError`); after
        the lock is taken the caller re-reads what the step depends on, then writes or finds it done.
        See `ledger.step_locks`.
        """
        if self._step_locks is None:
            raise LedgerReadOnlyError(f"lock step {name}")
        # A result left half-read (`execute(...).fetchone()`) keeps its read open on the catalog: on a
        # SQLite catalog that blocks the lock's holder, which would wait for this waiter forever.
        with self._lock:
            self.connection.execute("SELECT 1").fetchall()
        with self._step_locks.holding(name):
            yield

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Reading -------------------------------------------------------------------------------

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """The next offset to read for every (topic, partition) the ledger has data from.

        Raises `LedgerCatalogUnavailableError` when the catalog cannot be reached.
        """
        try:
            with self._lock:
                return self._stored_offsets()
        except duckdb.Error as error:
            raise _ledger_error(error, "read stored offsets", self.location.display) from error

    def _stored_offsets(self) -> dict[tuple[str, int], int]:
        return read_stored_offsets(self.connection)

    def current_snapshot(self) -> int:
        # fetchall: a result left half-read keeps its read of an SQLite catalog open, and other writers' commits wait.
        ((snapshot_id,),) = self.connection.execute(f"SELECT id FROM {catalog_alias}.current_snapshot()").fetchall()
        return int(snapshot_id)

    # Writing -------------------------------------------------------------------------------

    def append(
        self,
        batch: IngestBatch,
        offsets: Sequence[PartitionOffsets],
        writer: str = "",
        file_positions: Sequence[FileSourcePosition] = (),
    ) -> AppendResult:
        """Write `batch` and the offsets it covers in one transaction; return what was stored.

        `file_positions` fingerprint how far each file source of the batch was read (see
        `file_sources`). A dead letter of a file line whose content up to there is already stored
        is dropped and counted with the duplicates.

        Raises `LedgerOffsetsFencedError` if another writer already stored offsets past the
        start of this batch (nothing is written), `LedgerBusyError` if the catalog stays locked,
        `LedgerCatalogUnavailableError` if it cannot be reached, `LedgerStorageError` if a data
        file cannot be written; in each case nothing was committed.
        """
        if self.read_only:
            raise LedgerReadOnlyError("append")
        self.store.remove_leftovers()
        ingest_batch_id = uuid.uuid4().hex
        locked = (
            self._partition_locks.holding((item.topic, item.partition) for item in offsets)
            if self._partition_locks is not None
            else nullcontext()
        )
        with self._lock, locked, self._appending(), self._threads_for(len(batch)):
            result = self._retrying(
                lambda: self._append_once(batch, offsets, writer, ingest_batch_id, file_positions), "append"
            )
            self._appends_on_connection += 1
            if self._appends_on_connection >= appends_per_connection_max:
                self._reconnect()
        return result

    @contextmanager
    def _appending(self) -> Iterator[None]:
        """Mark an append's run: the settings it leaves for the next append (one thread, DuckLake's commit retries)
        stay until the connection is used for anything else (`connection`)."""
        self._in_append = True
        try:
            yield
        finally:
            self._in_append = False

    @contextmanager
    def _threads_for(self, messages: int) -> Iterator[None]:
        """Run a small append on one DuckDB thread (`constants.append_one_thread_messages_max`).

        Its statements are many and tiny; handing each one's tasks to worker threads costs more CPU than
        the work (benchmarks/RESULTS.md, small appends). The setting stays between consecutive small appends
        (each change of it costs ~0.5 ms of CPU): the connection's thread count is restored by the first
        other use of `connection` (`_restore_threads`).
        """
        if messages > constants.append_one_thread_messages_max:
            self._restore_threads()
            yield
            return
        if not self._one_thread:
            if self._threads is None:
                (self._threads,) = self.connection.execute("SELECT current_setting('threads')").fetchone()
            self.connection.execute("SET threads = 1")
            self._one_thread = True
        yield

    def _restore_threads(self) -> None:
        """Give the connection back its thread count after small appends ran on one thread."""
        if not self._one_thread:
            return
        self._one_thread = False
        if self._connection is not None:  # a reconnect that failed leaves none (and a new one has the default)
            with suppress(duckdb.Error):
                self._connection.execute(f"SET threads = {int(self._threads)}")

    def _reconnect(self) -> None:
        """Replace the connection with a fresh one, dropping the caches the old one grew.

        Called only between transactions. The old connection is closed first (it may hold the
        SQLite catalog's lock); if the new one cannot be made now (the catalog is down), the next
        use of `connection` tries again and raises the typed error there.
        """
        if self._connection is not None:
            self._connection.close()
        self._connection = None
        self._one_thread = False  # a new connection has the default thread count and no commit retries
        self._ducklake_retries_allowed = False
        self._appends_on_connection = 0
        self._mapped_tables = set()
        try:
            self._connection = self._writer_connection()
        except LedgerError as error:
            log.warning("ledger reconnect failed; the next append retries it", extra={"error": str(error)})

    def _writer_connection(self) -> duckdb.DuckDBPyConnection:
        try:
            if self.read_only:
                return _connect_retrying(self.location, read_only=True, snapshot_version=self._snapshot_version)
            connection = _connect_retrying(self.location, read_only=False)
            _set_inlining_options(connection)
        except duckdb.Error as error:
            raise _ledger_error(error, "reconnect", self.location.display) from error
        return connection

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection with the ledger attached as `lake`."""
        if self._connection is None:
            self._connection = self._writer_connection()
        elif not self._in_append and (self._one_thread or self._ducklake_retries_allowed):
            self._restore_threads()
            self._forbid_ducklake_commit_retries()
        return self._connection

    def _append_once(
        self,
        batch: IngestBatch,
        offsets: Sequence[PartitionOffsets],
        writer: str,
        ingest_batch_id: str,
        file_positions: Sequence[FileSourcePosition] = (),
    ) -> AppendResult:
        written: list[_FileToAdd] = []
        with self._removing_files_of_a_refused_commit(written), self._transaction():
            self._check_offsets_fence(offsets)
            read_at = self._fence_offsets.snapshot
            self._transaction_snapshot = read_at  # the fence read it in this transaction
            kept, duplicates, conflicts = self._deduplicate(batch)
            reasons = [(r.index, str(r.error), r.error.field, r.error.code) for r in batch.decoded.rejections]
            reasons += conflicts
            dead_letters = dead_letter_rows(batch, sorted(reasons), ingest_batch_id)
            dead_letters, dead_lines, stored_already = self._new_dead_letters(batch, sorted(reasons), dead_letters)
            duplicates += stored_already
            try:
                for table_name, rows in kept.items():
                    written += self._write_event_files(table_name, self._with_positions(batch, rows, ingest_batch_id))
                    if table_name == metered_table and rows.num_rows:  # format 13: its rollups, in this transaction
                        written += self._rollup_files(rows, ingest_batch_id)
                if dead_letters.num_rows:
                    written.append(self._write_file("dead_letter", dead_letters, ingest_batch_id, None))
                self._add_files(written, ingest_batch_id)
                self._allow_ducklake_commit_retries({file.table for file in written})
                events = sum(rows.num_rows for rows in kept.values())
                self._insert_bookkeeping(
                    batch,
                    offsets,
                    writer,
                    ingest_batch_id,
                    events,
                    duplicates,
                    dead_letters.num_rows,
                )
                self._insert_file_source_rows(file_positions, dead_lines, ingest_batch_id)
            except BaseException:
                _remove_files(self.store, written)
                written.clear()
                raise
        snapshot_id = self._last_committed_snapshot()
        self._fence_offsets.committed(read_at, snapshot_id, offsets)
        by_reason = Counter(dead_letters.column("reason_code").to_pylist())
        return AppendResult(snapshot_id, ingest_batch_id, events, duplicates, dead_letters.num_rows, dict(by_reason))

    def _new_dead_letters(
        self, batch: IngestBatch, reasons: Sequence[DeadLetterReason], dead_letters: pa.Table
    ) -> tuple[pa.Table, pa.Table, int]:
        """Drop the dead letters of file lines stored before (same line, same raw bytes, same content up to there).

        Returns the dead letters to store, their `dead_letter_line` rows (without batch id) and how many were dropped.
        """
        lines = pa.table(
            {
                "row": pa.array(range(len(reasons)), pa.int64()),
                "kafka_topic": dead_letters.column("kafka_topic"),
                "kafka_offset": dead_letters.column("kafka_offset"),
                "line_prefix_sha256": pa.array([_line_digest(batch, index) for index, *_ in reasons], pa.string()),
                "raw_sha256": dead_letters.column("raw_sha256"),
            }
        ).filter(pc.is_valid(pc.field("line_prefix_sha256")))
        if not lines.num_rows:
            return dead_letters, lines, 0
        self.connection.register("new_dead_lines", lines)
        try:
            keep = self.connection.execute(
                f"""
                SELECT row FROM (
                    SELECT n.row, row_number() OVER (
                        PARTITION BY n.kafka_offset, n.line_prefix_sha256, n.raw_sha256 ORDER BY n.row
                    ) AS nth
                    FROM new_dead_lines n
                    WHERE NOT EXISTS (
                        SELECT 1 FROM {catalog_alias}.main.dead_letter_line s
                        WHERE s.line_prefix_sha256 = n.line_prefix_sha256
                          AND s.kafka_offset = n.kafka_offset AND s.raw_sha256 = n.raw_sha256
                    )
                ) WHERE nth = 1
                """
            ).fetchall()
        finally:
            self.connection.unregister("new_dead_lines")
        dropped = set(lines.column("row").to_pylist()) - {row for (row,) in keep}
        if not dropped:
            return dead_letters, lines, 0
        kept_rows = pa.array(sorted(set(range(len(reasons))) - dropped), pa.int64())
        lines = lines.filter(pc.is_in(lines.column("row"), kept_rows))
        return dead_letters.take(kept_rows), lines, len(dropped)

    def _insert_file_source_rows(
        self, positions: Sequence[FileSourcePosition], dead_lines: pa.Table, ingest_batch_id: str
    ) -> None:
        if positions:
            self._insert_inlined_rows(
                "file_source_position",
                [
                    [p.topic, p.next_offset, p.prefix_size_bytes, p.prefix_sha256, p.source_name, ingest_batch_id]
                    for p in positions
                ],
            )
        if dead_lines.num_rows:
            rows = dead_lines.drop_columns(["row"]).append_column(
                "ingest_batch_id", pa.repeat(pa.scalar(ingest_batch_id, pa.string()), dead_lines.num_rows)
            )
            self._insert_inlined("dead_letter_line", rows)

    def file_sources(self) -> dict[str, FileSourcePosition]:
        """The furthest recorded position of every file source, by its key (`kafka_topic`)."""
        try:
            with self._lock:
                rows = self.connection.execute(
                    f"""
                    SELECT kafka_topic, next_offset, prefix_size_bytes, prefix_sha256, source_name
                    FROM {catalog_alias}.main.file_source_position
                    QUALIFY row_number() OVER (
                        PARTITION BY kafka_topic ORDER BY next_offset DESC, prefix_size_bytes DESC
                    ) = 1
                    """
                ).fetchall()
        except duckdb.Error as error:
            raise _ledger_error(error, "read file source positions", self.location.display) from error
        return {row[0]: FileSourcePosition(*row) for row in rows}

    def adopt_file_position(self, position: FileSourcePosition) -> None:
        """Record the fingerprint of a position stored before fingerprints were (trusted once, from now on checked)."""
        self.append_records(
            {
                "file_source_position": pa.table(
                    {
                        "kafka_topic": [position.topic],
                        "next_offset": [position.next_offset],
                        "prefix_size_bytes": [position.prefix_size_bytes],
                        "prefix_sha256": [position.prefix_sha256],
                        "source_name": [position.source_name],
                        "ingest_batch_id": ["adopted"],
                    }
                )
            }
        )

    def _check_offsets_fence(self, offsets: Sequence[PartitionOffsets]) -> None:
        stored = self._fence_offsets.read(self.connection)
        for item in offsets:
            stored_offset = stored.get((item.topic, item.partition))
            if stored_offset is not None and stored_offset > item.first_offset:
                raise LedgerOffsetsFencedError(item.topic, item.partition, stored_offset, item.first_offset)

    def _deduplicate(self, batch: IngestBatch) -> tuple[dict[str, pa.Table], int, list[DeadLetterReason]]:
        """Drop exact duplicates (in the batch and against the ledger); report conflicting ones.

        An event is identified by its (source, event id), as CloudEvents defines: the same id from two
        sources is two events, and only within one source does other content make a conflict.

        An event's duplicates share its event time, so only files whose event times overlap the
        batch's (by the catalog's column statistics) in the batch's event dates are read.
        """
        kept: dict[str, pa.Table] = {}
        duplicates = 0
        conflicts: list[DeadLetterReason] = []
        for table_name, rows in batch.decoded.tables.items():
            content = [field.name for field in envelope_fields if field.name != "event_date"]
            content += list(_data_columns(table_name))
            # Distinct ids are distinct (source, id) pairs: the common answer, checked cheaply first.
            repeats = pc.count_distinct(rows.column("event_id")).as_py() != rows.num_rows
            if not repeats and not self._stored_within_bounds(table_name, rows):
                kept[table_name] = rows
                continue
            self.connection.register("batch_rows", rows)
            try:
                if not repeats and not self._stored_same_ids_count(table_name, rows):
                    kept[table_name] = rows
                    continue
                verdicts = self.connection.execute(
                    f"""
                    WITH batch AS (
                        SELECT *, row_number() OVER (PARTITION BY source, event_id ORDER BY message_index) AS nth
                        FROM batch_rows
                    ),
                    earlier AS (
                        SELECT * FROM batch WHERE nth = 1
                    ),
                    stored AS (
                        SELECT {", ".join(content)} FROM {_stored_same_ids(table_name, rows)}
                    )
                    -- One verdict per message: the ledger may hold an event twice (a resend with another event
                    -- time passes this probe), and a copy identical to any of them is a duplicate, not a conflict.
                    SELECT b.message_index,
                           any_value(coalesce(s.event_id, e.event_id)) AS first_id,
                           bool_or(CASE WHEN s.event_id IS NOT NULL THEN
                                    ({" AND ".join(f"b.{c} IS NOT DISTINCT FROM s.{c}" for c in content)})
                                ELSE ({" AND ".join(f"b.{c} IS NOT DISTINCT FROM e.{c}" for c in content)})
                           END) AS identical,
                           bool_or(s.event_id IS NOT NULL) AS in_ledger
                    FROM batch b
                    LEFT JOIN stored s ON s.source = b.source AND s.event_id = b.event_id
                    LEFT JOIN earlier e ON e.source = b.source AND e.event_id = b.event_id AND b.nth > 1
                    WHERE s.event_id IS NOT NULL OR b.nth > 1
                    GROUP BY b.message_index ORDER BY b.message_index
                    """
                ).fetchall()
            finally:
                self.connection.unregister("batch_rows")
            dropped: list[int] = []
            for message_index, event_id, identical, in_ledger in verdicts:
                dropped.append(message_index)
                if identical:
                    duplicates += 1
                else:
                    where = "already in the ledger" if in_ledger else "earlier in the same batch"
                    conflicts.append(
                        (
                            message_index,
                            f"conflicting duplicate: event id `{event_id}` of this source is {where} "
                            "with different content",
                            "id",
                            ReasonCode.conflicting_duplicate,
                        )
                    )
            if dropped:
                rows = rows.filter(pc.invert(pc.is_in(rows.column("message_index"), pa.array(dropped, pa.int64()))))
            if rows.num_rows:
                kept[table_name] = rows
        return kept, duplicates, conflicts

    def _stored_within_bounds(self, table_name: str, rows: pa.Table) -> bool:
        """Whether any stored row lies within the batch's bounds (`_batch_bounds_sql`): DuckLake answers it from file
        statistics alone when no stored file's ranges overlap the batch's, as for a live stream's new batch (~0.4 ms,
        against ~3 ms for the probe by id with the batch registered, `_stored_same_ids_count`)."""
        if not rows.num_rows:
            return False
        ((within_bounds,),) = self.connection.execute(
            f"SELECT count(*) FROM {catalog_alias}.main.{table_name} WHERE {_batch_bounds_sql(rows)}"
        ).fetchall()
        return bool(within_bounds)

    def _stored_same_ids_count(self, table_name: str, rows: pa.Table) -> int:
        """How many stored rows share a (source, event id) with `rows`, registered as `batch_rows`."""
        ((matches,),) = self.connection.execute(f"SELECT count(*) FROM {_stored_same_ids(table_name, rows)}").fetchall()
        return int(matches)

    def _with_positions(self, batch: IngestBatch, rows: pa.Table, ingest_batch_id: str) -> pa.Table:
        indexes = rows.column("message_index")
        rows = rows.drop_columns(["message_index"])
        positions = {
            "kafka_topic": batch.topics.take(indexes),
            "kafka_partition": batch.partitions.take(indexes),
            "kafka_offset": batch.offsets.take(indexes),
            "ingest_batch_id": pa.repeat(pa.scalar(ingest_batch_id, pa.string()), rows.num_rows),
        }
        for field in position_fields:
            rows = rows.append_column(field, positions[field.name])
        return rows

    def _write_event_files(self, table_name: str, rows: pa.Table) -> list[_FileToAdd]:
        rows = rows.sort_by([("event_date", "ascending"), ("event_time", "ascending")])
        dates = pc.unique(rows.column("event_date")).to_pylist()
        files = []
        for event_date in dates:
            part = rows.filter(pc.equal(rows.column("event_date"), pa.scalar(event_date, pa.date32())))
            files.append(self._write_file(table_name, part, rows.column("ingest_batch_id")[0].as_py(), event_date))
        return files

    def _write_file(self, table_name: str, rows: pa.Table, ingest_batch_id: str, event_date) -> _FileToAdd:
        rows = rows.select(file_tables[table_name].names).cast(file_tables[table_name])
        folder = f"main/{table_name}" + (f"/event_date={event_date.isoformat()}" if event_date else "")
        # `s<snapshot>`: the snapshot this transaction started from, so `verify --remove-orphans` can tell
        # this catalog's killed appends from files a copy or a newer restore of it committed (ledger/orphans.py).
        name = f"{self._ledger_id()}-s{self._snapshot_of_transaction()}-{ingest_batch_id}-{uuid.uuid4().hex[:8]}"
        relative = f"{folder}/{name}.parquet"
        absolute = self.location.data_path + relative

        def encode(sink: pa.NativeFile) -> None:
            options = _compression(table_name, rows.schema)
            pq.write_table(rows, sink, **options, row_group_size=constants.parquet_row_group_rows_max)

        streamed = rows.nbytes >= constants.streamed_file_bytes_min
        size, sha256 = self.store.write_from(absolute, encode, streamed)
        return _FileToAdd(table_name, absolute, relative, size, sha256)

    def _write_record_files(
        self, file_rows: list[tuple[str, pa.Table]], batch_id: str, written: list[_FileToAdd]
    ) -> None:
        """Write each table's rows (and a metered table's rollups) as one file, adding each to `written` in the order
        given (also on failure: the files written are removed). Large appends write on threads
        (`constants.parallel_file_rows_min`); the result is the same files, in the same order."""

        def write(table_name: str, rows: pa.Table, files: list[_FileToAdd]) -> None:
            # Each file is added as soon as it is written: a later write's failure must still remove it.
            files.append(self._write_file(table_name, rows, batch_id, None))
            if table_name == metered_table:  # every writer of metered events rolls them up
                files += self._rollup_files(rows, batch_id)

        if len(file_rows) < 2 or sum(rows.num_rows for _, rows in file_rows) < constants.parallel_file_rows_min:
            for table_name, rows in file_rows:
                write(table_name, rows, written)
            return
        self._ledger_id(), self._snapshot_of_transaction()  # the connection's part of a file's name, read here once
        files_by_table: list[list[_FileToAdd]] = [[] for _ in file_rows]
        with ThreadPoolExecutor(min(len(file_rows), constants.parallel_files_max)) as pool:
            futures = [
                pool.submit(write, table_name, rows, files)
                for (table_name, rows), files in zip(file_rows, files_by_table, strict=True)
            ]
            wait(futures)
        for files in files_by_table:
            written += files
        for future in futures:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]

    def _rollup_files(self, rows: pa.Table, ingest_batch_id: str) -> list[_FileToAdd]:
        """The rollup files of metered `rows` an append writes in its transaction (ledger.rollups)."""
        return [
            self._write_file(rollup_table, rollup_rows(rows, ingest_batch_id), ingest_batch_id, None),
            self._write_file(payer_rollup_table, payer_rollup_rows(rows, ingest_batch_id), ingest_batch_id, None),
        ]

    def _snapshot_of_transaction(self) -> int:
        """The snapshot the open transaction reads: it does not move inside the transaction, so it is read once (each
        read of DuckLake's `current_snapshot()` is a catalog query, ~2 ms of CPU in a small append)."""
        if self._transaction_snapshot is None:
            self._transaction_snapshot = self.current_snapshot()
        return self._transaction_snapshot

    def _ledger_id(self) -> str:
        """This ledger's identity (`connection.ledger_id`), read once: data file names start with it."""
        if self._id is None:
            self._id = ledger_id(self.connection)
        return self._id

    def _insert_bookkeeping(
        self,
        batch: IngestBatch,
        offsets: Sequence[PartitionOffsets],
        writer: str,
        ingest_batch_id: str,
        events: int,
        duplicates: int,
        dead_letters: int,
    ) -> None:
        if offsets:
            self._insert_inlined_rows(
                "ingest_offset",
                [[o.topic, o.partition, o.first_offset, o.next_offset, ingest_batch_id] for o in offsets],
            )
        self._insert_inlined_rows(
            "ingest_batch",
            [[ingest_batch_id, datetime.now(UTC), writer, len(batch), events, duplicates, dead_letters]],
        )

    def append_records(
        self,
        rows_by_table: dict[str, pa.Table],
        precondition: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    ) -> int:
        """Append rows to registered tables in one transaction; return the new snapshot id.

        `precondition(connection)` runs first inside the transaction and aborts it by raising
        (e.g. "epoch 7 is already closed"); it sees the ledger as of the transaction's start.
        Rows of file tables become checksummed Parquet files; rows of inlined tables are
        inserted into the catalog. Tables must be declared with `ledger.tables.register_table`.
        """
        if self.read_only:
            raise LedgerReadOnlyError("append records")
        self.store.remove_leftovers()
        self._retrying(self._create_tables, "create tables")
        records_batch_id = uuid.uuid4().hex

        def once() -> int:
            written: list[_FileToAdd] = []
            with self._removing_files_of_a_refused_commit(written), self._transaction():
                if precondition is not None:
                    precondition(self.connection)
                try:
                    file_rows = []
                    for table_name, rows in rows_by_table.items():
                        if table_name in inlined_tables:
                            self._insert_inlined(table_name, rows)
                        elif rows.num_rows:
                            file_rows.append((table_name, rows))
                    self._write_record_files(file_rows, records_batch_id, written)
                    self._add_files(written, records_batch_id)
                except BaseException:
                    _remove_files(self.store, written)
                    written.clear()
                    raise
            return self._last_committed_snapshot()

        return self._retrying(once, "append records")

    def _insert_inlined(self, table_name: str, rows: pa.Table) -> None:
        """Insert rows into an inlined table, noting their digests for the transaction's `inlined_digest` rows."""
        schema = inlined_tables[table_name]
        rows = rows.cast(schema)
        digests = arrow_digests(rows)  # None when a column's type is not one Python digests as DuckDB does
        few_rows = digests is not None and rows.num_rows <= constants.inlined_values_rows_max
        values = _values_sql(rows) if few_rows else None
        if values is not None:
            if rows.num_rows:
                self.connection.execute(
                    f"INSERT INTO {catalog_alias}.main.{table_name} ({', '.join(rows.schema.names)}) VALUES {values}"
                )
            if table_name not in undigested_tables:
                self._pending_digests.setdefault(table_name, []).extend(digests or [])
            return
        self.connection.register("inlined_rows", rows)
        try:
            self.connection.execute(f"INSERT INTO {catalog_alias}.main.{table_name} SELECT * FROM inlined_rows")
            if table_name not in undigested_tables:
                if digests is None:
                    digests = relation_digests(self.connection, "inlined_rows", schema)
                self._pending_digests.setdefault(table_name, []).extend(digests)
        finally:
            self.connection.unregister("inlined_rows")

    def _insert_inlined_rows(self, table_name: str, rows: list[list]) -> None:
        schema = inlined_tables[table_name]
        by_column = zip(*rows, strict=True)
        columns = [pa.array(list(values), type=item.type) for values, item in zip(by_column, schema, strict=True)]
        self._insert_inlined(table_name, pa.Table.from_arrays(columns, schema=schema))

    def _record_inlined_digests(self) -> None:
        """Insert the open transaction's `inlined_digest` rows (called just before its COMMIT)."""
        if not any(self._pending_digests.values()):
            return
        self._insert_inlined(digest_table, digest_rows(self._pending_digests))  # undigested itself
        self._pending_digests = {}

    def _add_files(self, written: list[_FileToAdd], batch_id: str) -> None:
        """Register written files with DuckLake and record their checksums, in the caller's transaction."""
        for file in written:
            # Literals, not parameters: see `_values_sql` (the path is the ledger's own, quoted all the same).
            arguments = ", ".join(map(_quoted, (catalog_alias, file.table, file.absolute_path)))
            self.connection.execute(f"CALL ducklake_add_data_files({arguments})")
        if written:
            self._insert_inlined_rows(
                "file_checksum", [[f.relative_path, f.table, f.size_bytes, f.sha256, batch_id] for f in written]
            )

    def _last_committed_snapshot(self) -> int:
        # fetchall, as in `current_snapshot`: this ends an append, and the writer may then idle for a while.
        rows = self.connection.execute(f"SELECT id FROM {committed_snapshot_function}('{catalog_alias}')").fetchall()
        row = rows[0] if rows else None
        if row is None or row[0] is None:
            return self.current_snapshot()
        return int(row[0])

    def _create_tables(self) -> None:
        if ledger_tables(self.connection) >= set(all_tables):
            return
        with self._transaction():
            for statement in create_statements(catalog_alias):
                self.connection.execute(statement)
        self._set_inlining_options()

    def _prepare_format(self) -> None:
        """Refuse a ledger of another format; give a new ledger the current one.

        A new ledger's format table is created, made inlined and stamped before any other table,
        in transactions of their own (DuckLake sets no option on a table of the same transaction):
        a ledger holding only an empty format table is a creation that was interrupted.
        """
        version = stored_format_version(self.connection)
        require_current_format(version, self.location.display)
        if version is not None:
            return
        with self._transaction():
            for statement in create_statements(catalog_alias, [format_table]):
                self.connection.execute(statement)
        for statement in inlining_statements(catalog_alias, [format_table]):
            self.connection.execute(statement)
        with self._transaction():
            (rows,) = self.connection.execute(f"SELECT count(*) FROM {catalog_alias}.main.{format_table}").fetchone()
            if not rows:
                record_format(self.connection, format_version_current, "new ledger")

    def migrate(self) -> MigrationResult:
        """Apply every format step this ledger lacks, each in one transaction with its record."""
        if self.read_only:
            raise LedgerReadOnlyError("migrate")
        before = stored_format_version(self.connection)
        if before is None:
            self._retrying(self._prepare_format, "create the ledger format")
            self._retrying(self._create_tables, "create tables")
            return MigrationResult(format_version_current, format_version_current, [])
        if before > format_version_current:
            require_current_format(before, self.location.display)
        if pending_steps(before):
            self._retrying(self._create_tables, "create tables")
        applied = []
        for step in pending_steps(before):

            def apply(step: FormatStep = step) -> None:
                with self._transaction():
                    step.apply(self.connection)
                    if step.record is not None:
                        step.record(self)
                    record_format(self.connection, step.version, step.summary)

            self._retrying(apply, f"migrate to format {step.version}")
            log.info("ledger format step applied", extra={"format_version": step.version, "summary": step.summary})
            applied.append(f"{step.version}: {step.summary}")
        return MigrationResult(before, stored_format_version(self.connection) or before, applied)

    def _set_inlining_options(self) -> None:
        """Make this connection inline the bookkeeping tables' rows (idempotent; makes no snapshot).

        DuckLake reads a catalog's options once, at ATTACH: a writer that attached while another
        was creating a new ledger would never see the options the creator set afterwards, and its
        bookkeeping rows would become Parquet files without recorded checksums. So every writer
        sets them on its own connection.
        """
        _set_inlining_options(self.connection)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._pending_digests = {}
        self._tables_committing = set()
        self._transaction_snapshot = None
        self._retries_wanted = False
        self.connection.execute("BEGIN TRANSACTION")
        try:
            try:
                yield
                self._record_inlined_digests()
                if self._ducklake_retries_allowed and not self._retries_wanted:
                    # Left on by an earlier append of this connection: this commit must not be retried by DuckLake.
                    self.connection.execute("SET ducklake_max_retry_count = 0")
                    self._ducklake_retries_allowed = False
            except BaseException:
                self._pending_digests = {}
                with suppress(duckdb.Error):
                    self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")
            self._mapped_tables |= self._tables_committing
        finally:
            self._transaction_snapshot = None
            if not self._in_append:
                self._forbid_ducklake_commit_retries()

    @contextmanager
    def _removing_files_of_a_refused_commit(self, written: list["_FileToAdd"]) -> Iterator[None]:
        """Remove the transaction's data files when the catalog refused its COMMIT (another writer's commit, a
        lock): nothing of it is stored, and the ledger redoes it with new files. After any other failure of the
        COMMIT (a lost connection) it may have been stored, so the files stay: at worst orphans `verify` lists."""
        try:
            yield
        except duckdb.Error as error:
            if any(marker in redact(error).lower() for marker in _transient_markers):
                _remove_files(self.store, written)
            raise

    def _allow_ducklake_commit_retries(self, file_tables: set[str]) -> None:
        """Let DuckLake retry this transaction's commit itself when it adds files only to `file_tables` whose
        column maps this connection committed before (no new map, so none its retry could re-number): cheaper
        than redoing the whole append. The tables are remembered once the commit succeeds. The setting stays on for
        the next append (each change costs ~0.2 ms): any other commit turns it off first (`_transaction`,
        `connection`)."""
        if file_tables <= self._mapped_tables:
            self._retries_wanted = True
            if not self._ducklake_retries_allowed:
                self.connection.execute(f"SET ducklake_max_retry_count = {constants.ducklake_commit_retries_max}")
                self._ducklake_retries_allowed = True
        self._tables_committing = file_tables

    def _forbid_ducklake_commit_retries(self) -> None:
        if self._ducklake_retries_allowed and self._connection is not None:
            try:
                self._connection.execute("SET ducklake_max_retry_count = 0")
            except duckdb.Error:
                return  # still on: the next transaction turns it off before its COMMIT (`_transaction`) or fails
        self._ducklake_retries_allowed = False

    def _retrying(self, work, what: str):
        return self._retried(work, what, lambda error: _ledger_error(error, what, self.location.display))

    def reading(self, work: Callable[[], T], what: str) -> T:
        """Run `work`, a read that writes nothing, retrying what another writer's commit can cause.

        A read that met a commit (SQLite's lock) is retried with backoff, and one that met a stale
        catalog cache is retried on a fresh connection (so `work` must reach the connection through
        `ledger.connection` each time); `LedgerBusyError` past the bound. Any other DuckDB error is
        raised unchanged, for the caller to name.
        """
        with self._lock:
            return self._retried(work, what, lambda error: error)

    def _retried(self, work, what: str, other_error: Callable[[duckdb.Error], BaseException]):
        """`work` under `retried`: another writer's commit is waited out, a stale catalog cache is retried at once on
        a fresh connection (once: met again there, the name map is missing from the catalog itself); past the bound
        `LedgerBusyError`, and any other DuckDB error `other_error(error)`."""
        last_error = ""
        reconnected = False

        def retry(error: Exception) -> Retry:
            nonlocal last_error, reconnected
            if not isinstance(error, duckdb.Error):
                return Retry.no
            message = redact(error).lower()
            stale_cache = any(marker in message for marker in _stale_cache_markers)
            if (stale_cache and reconnected) or (
                not stale_cache and not any(marker in message for marker in _transient_markers)
            ):
                return Retry.no
            last_error = redact(error).splitlines()[0]
            if not stale_cache:
                self.commit_retries += 1
                log.debug("ledger busy, retrying", extra={"what": what, "error": last_error})
                return Retry.after_backoff
            log.info("ledger catalog cache stale; reconnecting", extra={"what": what, "error": last_error})
            self._reconnect()
            reconnected = True
            return Retry.now

        try:
            return retried(
                work,
                retry,
                exhausted=lambda _: LedgerBusyError(self.location.display, constants.commit_attempts_max, last_error),
            )
        except duckdb.Error as error:
            raise other_error(error) from error


def _compression(table_name: str, schema: pa.Schema) -> dict[str, Any]:
    """`pq.write_table`'s compression options: zstd for every column but a table's incompressible ones
    (`register_table`), stored uncompressed."""
    uncompressed = uncompressed_columns.get(table_name, frozenset())
    if not uncompressed:
        return {"compression": "zstd", "compression_level": constants.parquet_zstd_level}
    compressed = [name for name in schema.names if name not in uncompressed]
    return {
        "compression": {name: "none" if name in uncompressed else "zstd" for name in schema.names},
        "compression_level": dict.fromkeys(compressed, constants.parquet_zstd_level),
    }


def _stored_same_ids(table_name: str, rows: pa.Table) -> str:
    """FROM/WHERE of the stored rows sharing a (source, event id) with `rows`, registered as `batch_rows`.

    CloudEvents makes `source` + `id` unique, not the id alone: two producers may both send id `42`.

    An event's duplicates share its event date and time, and its id lies within the batch's ids: the
    batch's dates, time range and id range are written as constants, so DuckLake skips every file whose
    column statistics rule it out without opening it (a new batch of a live stream usually opens none).
    """
    return f"""{catalog_alias}.main.{table_name}
        WHERE {_batch_bounds_sql(rows)}
          AND event_id IN (SELECT event_id FROM batch_rows)
          AND (source, event_id) IN (SELECT source, event_id FROM batch_rows)"""


# Event ids written into SQL as bounds: printable ASCII (compared the same way by Arrow and DuckDB).
_plain_id = re.compile(r"[ -~]*")


def _batch_bounds_sql(rows: pa.Table) -> str:
    """Constant conditions every stored duplicate of a row of `rows` meets (non-empty `rows`)."""
    dates = ", ".join(f"DATE '{day.isoformat()}'" for day in pc.unique(rows.column("event_date")).to_pylist())
    earliest, latest = (pc.min_max(rows.column("event_time"))[end].as_py() for end in ("min", "max"))
    bounds = [
        f"event_date IN ({dates})",
        f"event_time BETWEEN TIMESTAMPTZ '{earliest.isoformat()}' AND TIMESTAMPTZ '{latest.isoformat()}'",
    ]
    lowest, highest = (pc.min_max(rows.column("event_id"))[end].as_py() for end in ("min", "max"))
    if _plain_id.fullmatch(lowest) and _plain_id.fullmatch(highest):
        quoted = [value.replace("'", "''") for value in (lowest, highest)]
        bounds.append(f"event_id BETWEEN '{quoted[0]}' AND '{quoted[1]}'")
    return " AND ".join(bounds)


def _values_sql(rows: pa.Table) -> str | None:
    """The rows of a few plain columns (text, integers, booleans, UTC timestamps) as the SQL of a VALUES list, or None
    when a value is not plain (`_sql_literal`); the caller then registers them as a relation.

    Literals cost less CPU than a registered relation (DuckDB's Python client spends 1-2 ms on each `register`, and a
    small append inlines rows into four tables) or than parameters (the client tries to import pandas for each one,
    ~0.3 ms when pandas is not installed): benchmarks/RESULTS.md, small appends.
    """
    records = []
    for record in zip(*(column.to_pylist() for column in rows.columns), strict=True):
        literals = [_sql_literal(value) for value in record]
        if None in literals:
            return None
        records.append(f"({', '.join(literals)})")  # type: ignore[arg-type]
    return ", ".join(records)


def _sql_literal(value: object) -> str | None:
    """The SQL literal of a plain value: NULL, a boolean, an integer, a zoned timestamp, or text without NUL (quotes
    doubled: DuckDB's string literals have no other escape); None for anything else."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return f"TIMESTAMPTZ '{value.isoformat()}'"
    if isinstance(value, str) and "\x00" not in value:
        return _quoted(value)
    return None


def _quoted(text: str) -> str:
    """`text` as a SQL string literal (quotes doubled: DuckDB's string literals have no other escape)."""
    return "'" + text.replace("'", "''") + "'"


def _line_digest(batch: IngestBatch, index: int) -> str | None:
    if not batch.line_digests:
        return None
    state = batch.line_digests[index]
    return None if state is None else state.hexdigest()


def _data_columns(table_name: str) -> Iterator[str]:
    for event_type in event_types.values():
        if event_type.table == table_name:
            yield from event_type.data_model.model_fields


class Retry(Enum):
    """What `retried` does after an attempt failed with an error."""

    no = "no"  # raise it
    now = "now"  # try again at once (e.g. on a fresh connection)
    after_backoff = "after_backoff"  # wait, then try again


def retried(
    work: Callable[[], T],
    retry: Callable[[Exception], Retry],
    exhausted: Callable[[Exception], BaseException] | None = None,
) -> T:
    """Run `work`, again while `retry(error)` says so, up to `constants.commit_attempts_max` attempts in all, waiting
    between attempts with exponential backoff and jitter (`commit_backoff_s_min` to `_max`). The ledger's one retry
    loop: its commits and reads (`Ledger.reading`), opening a connection, and `retrying_contention`.

    An error `retry` declines is raised as it is; past the bound, `exhausted(error)` (default: the error itself).
    """
    for attempt in range(constants.commit_attempts_max):
        try:
            return work()
        except Exception as error:
            decision = retry(error)
            if decision is Retry.no:
                raise
            if attempt == constants.commit_attempts_max - 1:
                failure = error if exhausted is None else exhausted(error)
                if failure is error:
                    raise
                raise failure from error
            if decision is Retry.after_backoff:
                delay_s = min(constants.commit_backoff_s_max, constants.commit_backoff_s_min * 2**attempt)
                time.sleep(delay_s * (0.5 + random.random()))
    raise RuntimeError("unreachable: the last attempt raises")


def _set_inlining_options(connection: duckdb.DuckDBPyConnection) -> None:
    """Set every bookkeeping table's inlining option in one transaction: one catalog commit, not one (and
    one fsync) per table, which cost every writer's open ~0.25 s."""
    connection.execute("BEGIN TRANSACTION")
    try:
        for statement in inlining_statements(catalog_alias):
            connection.execute(statement)
    except BaseException:
        with suppress(duckdb.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _connect_retrying(location: LedgerLocation, **options: object) -> duckdb.DuckDBPyConnection:
    """`connect`, retried like a commit while other writers hold the SQLite catalog's lock (the ATTACH reads it)."""
    return retried(lambda: connect(location, **options), _contention_retry)


def _contention_retry(error: Exception) -> Retry:
    """Another writer's lock or commit met (a DuckDB error `met_another_writer`, or `LedgerBusyError` from an open
    that waited as long as it may): wait and try again; anything else is raised."""
    contended = isinstance(error, LedgerBusyError) or (isinstance(error, duckdb.Error) and met_another_writer(error))
    return Retry.after_backoff if contended else Retry.no


def _ledger_error(error: duckdb.Error, what: str, location: str) -> LedgerError:
    """The typed error for a DuckDB error that retrying at once will not cure."""
    message = redact(error)  # libpq and DuckDB quote the connection string, password included
    lowered = message.lower()
    reason = next((line for line in message.splitlines() if "FATAL" in line), message.splitlines()[0])
    # libpq says FATAL for the server's refusals and fe_sendauth when it had no password to send.
    said_by_libpq = "fatal:" in lowered or "fe_sendauth" in lowered
    if said_by_libpq and any(marker in lowered for marker in _login_refused_markers):
        return LedgerError(
            f"{what} failed on ledger `{location}`: the catalog refused the login ({reason.strip()}); check the "
            "user, the database and the password (a passfile, service=NAME or PGPASSWORD; docs/operations.md)"
        )
    if _catalog_lost(message, postgres=location.startswith(("postgres:", "postgresql://", "postgres://"))):
        return LedgerCatalogUnavailableError(location, what, message.splitlines()[0])
    if any(marker in lowered for marker in _object_store_lost_markers):
        # DuckDB's httpfs met an object store that is down or failing: the data files are out of reach now.
        return ObjectStoreUnavailableError(location, f"during {what}: {message.splitlines()[0]}")
    return LedgerError(f"{what} failed on ledger `{location}`: {message}")


# libpq has no text to give when the catalog's connection died under a query: DuckDB then reports
# `Failed to commit: Failed to execute query "ROLLBACK": ` with nothing after the colon.
_query_failed_without_reason = re.compile(r'failed to execute query "[^"]*":[ \t]*$', re.MULTILINE)


# After that, the catalog's PostgreSQL transaction is left aborted until the connection is replaced.
_postgres_transaction_lost_marker = "current transaction is aborted"


def _catalog_lost(message: str, postgres: bool) -> bool:
    """Whether a DuckDB error says the catalog database went away (an outage, retried), not refused the work."""
    lowered = message.lower()
    return (
        any(marker in lowered for marker in _catalog_lost_markers)
        or bool(_query_failed_without_reason.search(lowered))
        or (postgres and _postgres_transaction_lost_marker in lowered)
    )


def met_another_writer(error: duckdb.Error) -> bool:
    """Whether `error` is contention with another writer (SQLite's lock, a commit conflict): nothing was done, and
    the same read or write may be tried again."""
    message = redact(error).lower()
    return any(marker in message for marker in _transient_markers)


def retrying_contention(work: Callable[[], T]) -> T:
    """Run `work`, a read that writes nothing, again with backoff while it meets another writer (a DuckDB error
    `met_another_writer`, or `LedgerBusyError` from an open); the last attempt's error is raised as it is."""
    return retried(work, _contention_retry)


def ledger_error_of(error: duckdb.Error, what: str, location: str) -> LedgerError:
    """The typed error for a DuckDB error raised outside the ledger's own retries (a batch command's reads):
    contention and a lost catalog are transient (a scheduler retries), anything else is not."""
    message = redact(error)
    if any(marker in message.lower() for marker in _transient_markers):
        return LedgerBusyError(location, 1, message.splitlines()[0])
    return _ledger_error(error, what, location)


def _remove_files(store: DataStore, files: list[_FileToAdd]) -> None:
    """Remove the files of an append that did not commit (best effort: the storage may be what failed; what is left
    is removed at a later append, `DataStore.remove_leftovers`)."""
    store.remove_uncommitted([file.absolute_path for file in files])


require(set(all_tables) >= {t.table for t in event_types.values()}, "every event type has a ledger table")
