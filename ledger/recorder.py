"""The recorder API: what other packages read and write of the ledger, in one place.

Other packages (settlement, the CLI, the benchmarks) reach the ledger only through this module and
`Ledger`: the SQL name of a registered table (`table`, as of a snapshot too), a query's rows as a polars
frame (`frame`), the rows of a small table as of a snapshot (`rows_as_of`), the data files of a table as
of a snapshot and those added between two snapshots (`files_as_of`, `files_added_after`), their rows with
each row's own snapshot whether or not a compaction merged them (`scan_files`), the current
snapshot, the first snapshot that inserted matching rows, and appending records of registered tables
(`Ledger.append_records`). Only `ledger/` names the catalog's alias and schema (`lake.main`), joins
DuckLake's internal `__ducklake_metadata_*` tables or calls its snapshot functions, so a DuckLake upgrade
or another catalog backend is handled here (tests/test_import_direction.py checks that no module outside
`ledger/` reaches into them).

`Recorder` (a `Ledger`'s `recorder`) is how a caller runs them: each operation, or a group of them that must
see one snapshot (`Recorder.read`), under the ledger's lock and its retries (`Ledger.reading`: another writer's
commit waited out, a stale catalog cache retried on a fresh connection, `LedgerBusyError` past the bound), any
other DuckDB error raised as a typed `LedgerError` (`ledger_error_of`: a lost catalog or object store is
transient). The module functions below take a connection: they are the steps inside such a read, or inside a
transaction's precondition (`Ledger.append_records`), where the caller already holds the lock. An unregistered
table name raises `InvariantViolation` (a bug, never input).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import duckdb
import polars as pl

from ledger.compaction import snapshot_column
from ledger.connection import catalog_alias
from ledger.format import ledger_tables
from ledger.object_store import file_size, polars_storage_options
from ledger.tables import all_tables, compaction_table, file_tables
from schemas.errors import require

if TYPE_CHECKING:
    from ledger.ledger import Ledger

T = TypeVar("T")
_metadata = f"__ducklake_metadata_{catalog_alias}"


class Recorder:
    """The recorder API on one ledger: every read under its lock and retries, with typed errors."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def read(self, work: Callable[[duckdb.DuckDBPyConnection], T], what: str) -> T:
        """`work(connection)`, reads that must see one snapshot, under the ledger's lock and retries.

        `work` reads only (it may run again, on a fresh connection); past the retries `LedgerBusyError`, and any
        other DuckDB error a `LedgerError` naming `what`.
        """
        from ledger.ledger import ledger_error_of  # ledger.ledger imports the modules this one does

        ledger = self._ledger
        try:
            return ledger.reading(lambda: work(ledger.connection), what)
        except duckdb.Error as error:
            raise ledger_error_of(error, what, ledger.location.display) from error

    def frame(self, sql: str, params: list | None = None) -> pl.DataFrame:
        """`frame`: one query's rows (its tables named with `table`) as a polars frame."""
        return self.read(lambda connection: frame(connection, sql, params), "read the ledger")

    def existing_tables(self) -> set[str]:
        """`existing_tables`: the names of the tables this ledger holds."""
        return self.read(existing_tables, "list the ledger's tables")

    def current_snapshot(self) -> int:
        """`current_snapshot`: the latest snapshot of the ledger."""
        return self.read(current_snapshot, "read the current snapshot")

    def rows_as_of(self, name: str, snapshot: int) -> pl.DataFrame:
        """`rows_as_of`: every row of the small file table `name` as of `snapshot`, with `known_snapshot`."""
        return self.read(lambda connection: rows_as_of(connection, name, snapshot), f"read `{name}`")

    def files_as_of(self, table: str, snapshot: int) -> pl.DataFrame:
        """`files_as_of`: the data files of `table` as of `snapshot`, each with the snapshot that added it."""
        return self.read(lambda connection: files_as_of(connection, table, snapshot), f"list the files of `{table}`")

    def files_added_after(self, table: str, after_snapshot: int, snapshot: int | None = None) -> list[tuple[str, int]]:
        """`files_added_after`: the data files of `table` a snapshot after `after_snapshot` added."""
        return self.read(
            lambda connection: files_added_after(connection, table, after_snapshot, snapshot),
            f"list the files of `{table}`",
        )

    def listed_files(self, table: str, snapshot: int | None = None) -> list[tuple[str, int]]:
        """`listed_files`: (absolute path, size in bytes) of every data file of `table` as of `snapshot`."""
        return self.read(lambda connection: listed_files(connection, table, snapshot), f"list the files of `{table}`")

    def compactions_across(self, snapshot: int) -> int:
        """`compactions_across`: how many compactions merged rows of both sides of `snapshot`."""
        return self.read(lambda connection: compactions_across(connection, snapshot), "read the compactions")

    def first_inserting_snapshot(self, table: str, after_snapshot: int, column: str, value: object) -> int | None:
        """`first_inserting_snapshot`: the first snapshot after `after_snapshot` that inserted `column = value`."""
        return self.read(
            lambda connection: first_inserting_snapshot(connection, table, after_snapshot, column, value),
            f"read the insertions into `{table}`",
        )

    def snapshot_times(self, snapshots: list[int]) -> dict[int, datetime]:
        """`snapshot_times`: when each of `snapshots` was committed (UTC)."""
        return self.read(lambda connection: snapshot_times(connection, snapshots), "read the snapshots' times")


def table(name: str, snapshot: int | None = None) -> str:
    """The SQL name of the registered ledger table `name` for a query on a ledger connection.

    With `snapshot`, the table as of that snapshot (DuckLake's time travel). Registered tables only:
    the ledger's own, and those declared with `ledger.tables.register_table` (the settlement's).
    """
    require(
        name in all_tables,
        f"`{name}` is a registered ledger table (a package's tables are declared by its entry point before use: the "
        "settlement's by `register_with_ledger`)",
    )
    qualified = f"{catalog_alias}.main.{name}"
    return qualified if snapshot is None else f"{qualified} AT (VERSION => {int(snapshot)})"


def existing_tables(connection: duckdb.DuckDBPyConnection) -> set[str]:
    """The names of the tables this ledger holds (a registered table is created on a writer's next open)."""
    return ledger_tables(connection)


def frame(connection: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pl.DataFrame:
    """The rows of one query (its tables named with `table`) as a polars frame."""
    return pl.from_arrow(connection.execute(sql, params or []).fetch_arrow_table())  # type: ignore[return-value]


def rows_as_of(connection: duckdb.DuckDBPyConnection, name: str, snapshot: int) -> pl.DataFrame:
    """Every row of the small file table `name` as of `snapshot`, each with `known_snapshot`: the snapshot
    that added its file. Read from the files themselves (a registry table holds few rows)."""
    files = files_as_of(connection, name, snapshot)
    schema = file_tables[name]
    if files.is_empty():
        return pl.from_arrow(schema.empty_table()).with_columns(known_snapshot=pl.lit(0, pl.Int64))  # type: ignore
    frames = [
        read_parquet(path).with_columns(known_snapshot=pl.lit(known, pl.Int64)) for path, known in files.iter_rows()
    ]
    return pl.concat(frames)


def listed_files(
    connection: duckdb.DuckDBPyConnection, table: str, snapshot: int | None = None
) -> list[tuple[str, int]]:
    """(absolute path, size in bytes) of every data file of `table` as of `snapshot` (default: now), sorted."""
    version = "" if snapshot is None else ", snapshot_version => ?"
    params: list = [catalog_alias, table] + ([] if snapshot is None else [snapshot])
    rows = connection.execute(
        f"SELECT data_file, data_file_size_bytes FROM ducklake_list_files(?, ?{version})", params
    ).fetchall()
    return sorted((str(path), int(size)) for path, size in rows)


def files_as_of(connection: duckdb.DuckDBPyConnection, table: str, snapshot: int) -> pl.DataFrame:
    """The data files of `table` as of `snapshot`: `path` (absolute) and `snapshot` (the one that added it).

    A file a compaction wrote holds rows of several snapshots of one epoch window: its `snapshot` is the last
    of them (so a filter `snapshot > closing snapshot` keeps or drops it whole, as it did its files); read
    it with `scan_files` for each row's own snapshot.
    """
    merged, merged_join = _merged_snapshots(connection)
    rows = connection.execute(
        f"""
        SELECT f.data_file AS path, {merged} AS snapshot
        FROM ducklake_list_files('{catalog_alias}', ?, snapshot_version => ?) f
        JOIN {_metadata}.ducklake_data_file d
          ON parse_filename(f.data_file) = parse_filename(d.path) AND f.data_file LIKE '%/' || d.path
        JOIN {_metadata}.ducklake_table t ON t.table_id = d.table_id AND t.table_name = ?
        {merged_join}
        WHERE d.begin_snapshot <= ?
        ORDER BY f.data_file
        """,
        [table, snapshot, table, snapshot],
    ).fetch_arrow_table()
    return pl.from_arrow(rows).unique("path").sort("path")  # type: ignore[return-value]


def files_added_after(
    connection: duckdb.DuckDBPyConnection, table: str, after_snapshot: int, snapshot: int | None = None
) -> list[tuple[str, int]]:
    """(absolute path, size in bytes) of the data files of `table` as of `snapshot` (default: now) that a
    snapshot after `after_snapshot` added, sorted."""
    version = "" if snapshot is None else ", snapshot_version => ?"
    params: list = [catalog_alias, table] + ([] if snapshot is None else [snapshot])
    merged, merged_join = _merged_snapshots(connection)
    rows = connection.execute(
        f"""
        SELECT DISTINCT f.data_file, f.data_file_size_bytes
        FROM ducklake_list_files(?, ?{version}) f
        JOIN {_metadata}.ducklake_data_file d
          ON parse_filename(f.data_file) = parse_filename(d.path) AND f.data_file LIKE '%/' || d.path
        JOIN {_metadata}.ducklake_table t ON t.table_id = d.table_id AND t.table_name = ?
        {merged_join}
        WHERE {merged} > ?
        """,
        [*params, table, after_snapshot],
    ).fetchall()
    return sorted((str(path), int(size)) for path, size in rows)


def column_bounds(connection: duckdb.DuckDBPyConnection, table: str, column: str, snapshot: int) -> pl.DataFrame:
    """`path` (absolute), `least`, `greatest`: the least and greatest value of the text `column` the catalog recorded
    for each data file of `table` as of `snapshot` (from the file's Parquet statistics when it was added; null where
    none was recorded). Read from the catalog alone: no data file is opened. A writer that shortens a long value's
    statistic keeps it a bound (a prefix below, a successor above), so a file whose bounds miss a range holds no row in
    it."""
    rows = connection.execute(
        f"""
        SELECT f.data_file AS path, s.min_value AS least, s.max_value AS greatest
        FROM ducklake_list_files('{catalog_alias}', ?, snapshot_version => ?) f
        JOIN {_metadata}.ducklake_data_file d
          ON parse_filename(f.data_file) = parse_filename(d.path) AND f.data_file LIKE '%/' || d.path
        JOIN {_metadata}.ducklake_table t ON t.table_id = d.table_id AND t.table_name = ?
        LEFT JOIN {_metadata}.ducklake_column c
          ON c.table_id = t.table_id AND c.column_name = ? AND c.end_snapshot IS NULL
        LEFT JOIN {_metadata}.ducklake_file_column_stats s
          ON s.data_file_id = d.data_file_id AND s.column_id = c.column_id
        WHERE d.begin_snapshot <= ?
        """,
        [table, snapshot, table, column, snapshot],
    ).fetch_arrow_table()
    frame = pl.from_arrow(rows).cast({"least": pl.String, "greatest": pl.String})  # type: ignore[union-attr]
    # A file listed twice (a table's several versions in the catalog) with one row having no bounds: keep none.
    return frame.group_by("path").agg(  # type: ignore[union-attr]
        pl.when(pl.col("least").null_count() == 0).then(pl.col("least").min()).alias("least"),
        pl.when(pl.col("greatest").null_count() == 0).then(pl.col("greatest").max()).alias("greatest"),
    )


def files_holding_between(files: pl.DataFrame, bounds: pl.DataFrame, least: str, greatest: str) -> pl.DataFrame:
    """Those of `files` (with `path`) that may hold a value in [`least`, `greatest`]: every one but those whose
    recorded `bounds` (`column_bounds`) both exist and miss that range."""
    missed = bounds.filter(
        pl.col("least").is_not_null()
        & pl.col("greatest").is_not_null()
        & ((pl.col("greatest") < least) | (pl.col("least") > greatest))
    )
    return files.filter(~pl.col("path").is_in(missed["path"].implode()))


# The connections seen holding the compaction table (a close lists files ~9 times; `ledger_tables` costs ~15 ms each).
# Only a yes is remembered: a table is never dropped, and a connection's catalog is attached once (at one snapshot for
# a time-travel connection), so what it holds only grows.
_compaction_table_seen: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, bool] = weakref.WeakKeyDictionary()


def _has_compaction_table(connection: duckdb.DuckDBPyConnection) -> bool:
    if connection in _compaction_table_seen:
        return True
    if compaction_table not in ledger_tables(connection):
        return False
    _compaction_table_seen[connection] = True
    return True


def _merged_snapshots(connection: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    """(snapshot expression, join) giving a data file `d` of table `t` its rows' last snapshot: its begin
    snapshot, or for a file a compaction wrote the last snapshot of the rows it merged."""
    if not _has_compaction_table(connection):  # a time-travel connection from before format 7
        return "d.begin_snapshot", ""
    return (
        "coalesce(c.last_snapshot, d.begin_snapshot)",
        f"LEFT JOIN {catalog_alias}.main.{compaction_table} c "
        "ON c.merged_path = 'main/' || t.table_name || '/' || d.path",
    )


def scan_files(connection: duckdb.DuckDBPyConnection, files: pl.DataFrame, columns: list[str]) -> pl.LazyFrame:
    """The rows of `files` (as `files_as_of` gives them) with `columns` and `snapshot`: the snapshot that
    appended each row.

    A file a compaction wrote carries each row's snapshot in `compaction.snapshot_column` (DuckLake's
    `_ducklake_internal_snapshot_id`), a column no other file has: polars refuses a scan whose files differ
    so, and it is not a column of the table. Every reader that opens data files itself goes through here.
    """
    merged_paths = _merged_paths(connection, files["path"].to_list())
    plain = files.filter(~pl.col("path").is_in(list(merged_paths)))
    merged = files.filter(pl.col("path").is_in(list(merged_paths)))
    frames = []
    if plain.height:
        frames.append(
            scan_parquet(plain["path"].to_list(), include_file_paths="path", extra_columns="ignore")
            .select(*columns, "path")
            .join(plain.lazy().select("path", "snapshot"), on="path")
            .drop("path")
        )
    if merged.height:
        frames.append(
            scan_parquet(merged["path"].to_list())
            .select(*columns, pl.col(snapshot_column).cast(pl.Int64).alias("snapshot"))
        )
    if not frames:
        raise ValueError("scan_files needs at least one file")
    return pl.concat(frames, how="vertical_relaxed")


def data_file_exists(path: str) -> bool:
    """Whether the data file at `path` (absolute: local or `s3://`) is there."""
    return file_size(path) is not None


def read_parquet(path: str) -> pl.DataFrame:
    """One data file of the ledger as a frame, wherever its data path is (a local folder or S3)."""
    return pl.read_parquet(path, storage_options=polars_storage_options(path))


def scan_parquet(paths: list[str], **options: object) -> pl.LazyFrame:
    """Data files of the ledger (all under one data path) scanned lazily, with the store's credentials."""
    return pl.scan_parquet(paths, storage_options=polars_storage_options(paths[0]) if paths else None, **options)


def row_counts_and_sums(paths: list[str], column: str) -> pl.DataFrame:
    """`rows` (Int64) and `sum` (Int64; an overflow raises) of the integer `column` in each data file of `paths`, in
    their order: one small scan per file, reading that column only (the file's rows as stored: deletions are not
    applied)."""
    scans = [
        pl.scan_parquet(path, storage_options=polars_storage_options(path)).select(
            pl.len().cast(pl.Int64).alias("rows"), pl.col(column).cast(pl.Int128).sum().cast(pl.Int64).alias("sum")
        )
        for path in paths
    ]
    if not scans:
        return pl.DataFrame(schema={"rows": pl.Int64, "sum": pl.Int64})
    batches = range(0, len(scans), _sum_scans_at_once)  # thousands of scans at once exhaust polars' blocking threads
    return pl.concat([frame for at in batches for frame in pl.collect_all(scans[at : at + _sum_scans_at_once])])


_sum_scans_at_once = 64


def _merged_paths(connection: duckdb.DuckDBPyConnection, paths: list[str]) -> set[str]:
    """Those of `paths` (absolute) that a compaction wrote."""
    if compaction_table not in ledger_tables(connection) or not paths:
        return set()
    relative = {
        path
        for (path,) in connection.execute(f"SELECT merged_path FROM {catalog_alias}.main.{compaction_table}").fetchall()
    }
    # A data file's path is the data folder's, then `main/<table>/...` (the folder may itself hold a `/main/`).
    return {path for path in paths if path[path.rfind("/main/") + 1 :] in relative}


def compactions_across(connection: duckdb.DuckDBPyConnection, snapshot: int) -> int:
    """How many compactions merged rows appended up to `snapshot` with rows appended after it: an epoch closing
    at `snapshot` would split their files (a close planned before such a compaction committed plans again)."""
    if compaction_table not in ledger_tables(connection):
        return 0
    (count,) = connection.execute(
        f"SELECT count(*) FROM {catalog_alias}.main.{compaction_table} WHERE first_snapshot <= ? AND last_snapshot > ?",
        [snapshot, snapshot],
    ).fetchone()
    return int(count)


def current_snapshot(connection: duckdb.DuckDBPyConnection) -> int:
    """The latest snapshot of the ledger, as `connection` sees it."""
    (latest,) = connection.execute(f"SELECT max(snapshot_id) FROM ducklake_snapshots('{catalog_alias}')").fetchone()
    return int(latest)


def first_inserting_snapshot(
    connection: duckdb.DuckDBPyConnection, table: str, after_snapshot: int, column: str, value: object
) -> int | None:
    """The first snapshot from `after_snapshot` to now that inserted a row of `table` with `column = value`.

    From DuckLake's change feed, not by time travel: after a query at the current snapshot,
    `AT (VERSION => v)` can fail with "table does not exist at version v" on DuckLake 1.4 for a table
    created before v.
    """
    require(column.isidentifier(), f"`{column}` is a column name")
    (first,) = connection.execute(
        f"SELECT min(snapshot_id) FROM ducklake_table_insertions(?, 'main', ?, ?, ?) WHERE {column} = ?",
        [catalog_alias, table, int(after_snapshot), current_snapshot(connection), value],
    ).fetchone()
    return None if first is None else int(first)


def snapshot_times(connection: duckdb.DuckDBPyConnection, snapshots: list[int]) -> dict[int, datetime]:
    """When each of `snapshots` was committed, by the writer's clock (UTC): no producer controls it."""
    if not snapshots:
        return {}
    rows = connection.execute(
        f"SELECT snapshot_id, snapshot_time FROM ducklake_snapshots('{catalog_alias}') "
        "WHERE list_contains(?, snapshot_id)",
        [sorted({int(s) for s in snapshots})],
    ).fetchall()
    return {int(snapshot): time.astimezone(UTC) for snapshot, time in rows}
