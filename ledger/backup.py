"""A consistent copy of an embedded ledger, taken while writers run (`royalty backup`).

1. The SQLite catalog is copied with SQLite's online backup API: one committed state of the
   catalog, whatever writers do meanwhile (they wait for the copy, milliseconds, and retry).
2. The copy records its data path relative (`data/`), so the backup is a self-contained ledger
   folder that opens wherever it is put.
3. Every data and delete file the copied catalog names (in any snapshot) is copied into the
   backup's `data/` (from S3 too, when the data path is `s3://`: the backup is a local ledger folder).
   Committed Parquet files never change, so copying them after the catalog gives
   exactly the state the catalog copy describes; files written later belong to no snapshot of the
   copy and are not copied.
4. The copy is verified (`ledger.verify`: every file's size and recorded SHA-256) before it is
   renamed into place; a copy that does not verify is left beside, under a name that says so.

A PostgreSQL catalog is refused: its consistent copy is a `pg_dump` (docs/operations.md).
"""

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ledger.connection import LedgerLocation, connect, data_folder, sqlite_catalog_file
from ledger.errors import LedgerError, LedgerNotFoundError
from ledger.ledger import Ledger
from ledger.object_store import store_for
from ledger.verify import verify

# How long the catalog copy waits for a writer's commit to finish (SQLite busy timeout).
catalog_lock_wait_s_max = 30.0
partial_suffix = ".partial"
_copy_chunk_bytes = 8 * 1024 * 1024


class BackupError(LedgerError):
    """A backup could not be taken, or its copy did not verify."""


@dataclass(frozen=True)
class BackupResult:
    """What a backup holds."""

    directory: str
    snapshot_id: int
    files: int
    bytes_copied: int


def backup(location: LedgerLocation, target: Path) -> BackupResult:
    """Copy the ledger at `location` into the new folder `target`; return what it holds.

    Raises `BackupError` for a PostgreSQL catalog, an existing target, a target inside the ledger,
    a file the catalog names outside its data folder, or a copy that does not verify.
    """
    if location.backend != "sqlite":
        raise BackupError(
            f"`royalty backup` copies embedded (SQLite-catalog) ledgers; `{location.display}` is a PostgreSQL "
            "catalog. Back it up with `pg_dump --serializable-deferrable` of the catalog database, then copy the "
            "data folder (`rsync -a`): see docs/operations.md (Backup)"
        )
    if not location.exists():
        raise LedgerNotFoundError(location.display)
    target = target.expanduser().resolve()
    _check_target(location, target)
    partial = target.with_name(target.name + partial_suffix)
    if partial.exists():
        raise BackupError(
            f"`{partial}` exists: an earlier backup to `{target}` did not finish; delete it and run again"
        )
    partial.mkdir(parents=True)
    catalog_copy = partial / sqlite_catalog_file
    _copy_catalog(Path(location.catalog.removeprefix("sqlite:")), catalog_copy)
    files = _listed_files(catalog_copy)
    copied_bytes = 0
    store = store_for(location.data_path)  # a local folder, or an `s3://` prefix copied down to the backup
    for relative in files:
        source, destination = location.data_path + relative, partial / data_folder / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with store.open(source) as reader, open(destination, "wb") as writer:
                shutil.copyfileobj(reader, writer, _copy_chunk_bytes)
        except FileNotFoundError:
            raise BackupError(
                f"data file `{source}` is named by the catalog but missing; nothing is complete at `{partial}`. "
                "Run `royalty verify` on the ledger"
            ) from None
        copied_bytes += destination.stat().st_size
    (partial / data_folder).mkdir(exist_ok=True)
    _sync_tree(partial)
    with _open_any_format(partial) as copy:
        snapshot_id = copy.current_snapshot()
        report = verify(copy, retired_files=True)  # the copy's retired files too: time travel reads them
    if not report.ok:
        raise BackupError(
            f"the copy at `{partial}` does not verify ({len(report.problems)} problem(s), first: "
            f"{report.problems[0]}); the ledger itself may be damaged: run `royalty verify --lake {location.display}`"
        )
    os.rename(partial, target)
    return BackupResult(str(target), snapshot_id, len(files), copied_bytes)


def _open_any_format(folder: Path) -> Ledger:
    """The copy opened read-only whatever its format: a ledger of an older format is backed up before
    `royalty migrate`, and what is checked here (files against their checksums) is the same in every format."""
    location = LedgerLocation.parse(folder)
    try:
        connection = connect(location, read_only=True)
    except duckdb.Error as error:
        raise BackupError(f"the copy at `{folder}` does not open: {error}") from error
    return Ledger(location, connection, read_only=True)


def _check_target(location: LedgerLocation, target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"`{target}` exists and is not empty; a backup goes into a new folder")
    if target.exists():
        target.rmdir()  # an empty folder the operator made: the backup is renamed into its place
    for inside in (Path(location.display), Path(location.data_path)):
        if target == inside or inside in target.parents:
            raise BackupError(f"`{target}` is inside the ledger (`{inside}`); put the backup elsewhere")


def _copy_catalog(source: Path, destination: Path) -> None:
    """One consistent state of the catalog, with its data path recorded relative."""
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=catalog_lock_wait_s_max)
    writer = sqlite3.connect(destination)
    try:
        reader.backup(writer)
        writer.execute(
            "UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path' AND scope IS NULL", [f"{data_folder}/"]
        )
        writer.commit()
    except sqlite3.Error as error:
        raise BackupError(f"copying the catalog `{source}` failed: {error}; nothing was backed up") from error
    finally:
        writer.close()
        reader.close()


def _listed_files(catalog: Path) -> list[str]:
    """Paths, relative to the data folder, of every data and delete file the catalog names."""
    connection = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        schemas = _paths(connection, "SELECT DISTINCT schema_id, path, path_is_relative FROM ducklake_schema")
        tables = {
            table_id: (schema_id, path, relative)
            for table_id, schema_id, path, relative in connection.execute(
                "SELECT DISTINCT table_id, schema_id, path, path_is_relative FROM ducklake_table"
            ).fetchall()
        }
        files = connection.execute(
            "SELECT table_id, path, path_is_relative FROM ducklake_data_file "
            "UNION ALL SELECT table_id, path, path_is_relative FROM ducklake_delete_file ORDER BY 2"
        ).fetchall()
    finally:
        connection.close()
    listed = []
    for table_id, path, relative in files:
        schema_id, table_path, table_relative = tables[table_id]
        schema_path, schema_relative = schemas[schema_id]
        if not (relative and table_relative and schema_relative):
            raise BackupError(
                f"the catalog names `{path}` by an absolute path: the file is outside the ledger's data folder, "
                "so a copy of the folder would not hold it; copy it yourself and back up with a file-system copy"
            )
        listed.append(f"{schema_path}{table_path}{path}")
    return listed


def _paths(connection: sqlite3.Connection, query: str) -> dict[int, tuple[str, bool]]:
    return {key: (path, bool(relative)) for key, path, relative in connection.execute(query).fetchall()}


def _sync_tree(root: Path) -> None:
    """Flush every copied file to disk before the backup is renamed into place."""
    for directory, _, names in os.walk(root):
        for name in names:
            descriptor = os.open(Path(directory) / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
