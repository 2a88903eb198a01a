"""The recorder API: what other packages read of DuckLake's own bookkeeping, in one place.

Data files of a table (as of a snapshot, added after another), the current snapshot, and the first
snapshot that inserted matching rows. Only this module (and the rest of `ledger/`) joins DuckLake's
internal `__ducklake_metadata_*` tables or calls its snapshot functions, so a DuckLake upgrade that
changes them is handled here (tests/test_import_direction.py checks that no module outside `ledger/`
reaches into them).

Each function takes the connection the caller already reads with (a `Ledger`'s, under its lock where
the caller holds it), so the reads see the same snapshot as the caller's other queries.
"""

from __future__ import annotations

import duckdb
import polars as pl

from ledger.connection import catalog_alias
from schemas.errors import require

_metadata = f"__ducklake_metadata_{catalog_alias}"


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
    """The data files of `table` as of `snapshot`: `path` (absolute) and `snapshot` (the one that added it)."""
    rows = connection.execute(
        f"""
        SELECT f.data_file AS path, d.begin_snapshot AS snapshot
        FROM ducklake_list_files('{catalog_alias}', ?, snapshot_version => ?) f
        JOIN {_metadata}.ducklake_data_file d ON f.data_file LIKE '%/' || d.path
        JOIN {_metadata}.ducklake_table t ON t.table_id = d.table_id AND t.table_name = ?
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
    rows = connection.execute(
        f"""
        SELECT DISTINCT f.data_file, f.data_file_size_bytes
        FROM ducklake_list_files(?, ?{version}) f
        JOIN {_metadata}.ducklake_data_file d ON f.data_file LIKE '%/' || d.path
        JOIN {_metadata}.ducklake_table t ON t.table_id = d.table_id AND t.table_name = ?
        WHERE d.begin_snapshot > ?
        """,
        [*params, table, after_snapshot],
    ).fetchall()
    return sorted((str(path), int(size)) for path, size in rows)


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
