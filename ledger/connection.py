"""Opening DuckDB connections to a DuckLake ledger, with extensions from pip wheels only.

A ledger location is either a directory (the embedded default: `catalog.sqlite` and a
`data/` folder inside it) or a PostgreSQL catalog URL (`postgres:dbname=royalty host=...` or
`postgresql://...`) together with a data path. Extensions come from the `duckdb-ext-*`
wheels; nothing is downloaded, here or in a production network without internet.

An embedded ledger in its default layout is relocatable: the folder is the whole ledger, so a
copy, a moved folder or a restored backup opens from where it is, and never reads the original.
DuckLake records the data path in its catalog (`ducklake_metadata.data_path`); a new embedded
ledger records it relative (`data/`), and every connection attaches with the folder's own
`data/` and `OVERRIDE_DATA_PATH`, which DuckLake uses for this session without writing it back.
Ledgers created before record an absolute `.../data/`: they open the same way wherever they are.
"""

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ledger.errors import LedgerDataPathError, LedgerLocationError, LedgerNotFoundError
from ledger.extensions import connect_with_extensions
from ledger.object_store import is_s3, secret_statements
from ledger.redact import dsn_password, redact, remember_secret

catalog_alias = "lake"
# DuckLake's function named from the system catalog: unqualified, its lookup under `USE lake` starts a DuckLake
# transaction first, ~1.3 ms of CPU at every append's end (benchmarks/RESULTS.md, small appends).
committed_snapshot_function = "system.main.ducklake_last_committed_snapshot"
sqlite_catalog_file = "catalog.sqlite"
data_folder = "data"
# Writers that attach a new PostgreSQL catalog at the same moment race to create DuckLake's
# metadata tables; the losers' ATTACH fails with "already exists" and succeeds when retried.
_catalog_creation_attempts = 5
_catalog_creation_backoff_s = 0.2


@dataclass(frozen=True)
class LedgerLocation:
    """Where a ledger's catalog and data files live."""

    # The DuckLake catalog part of the ATTACH string: it may carry the password, so it is never printed
    # (not even by repr); `display` is the same location with every credential masked.
    catalog: str = field(repr=False)
    data_path: str
    display: str
    backend: str  # sqlite | postgres
    # An embedded ledger whose data is its own `data/` folder: opened from wherever the folder is.
    relocatable: bool = False

    @classmethod
    def parse(cls, location: str | os.PathLike[str], data_path: str | None = None) -> "LedgerLocation":
        text = str(location)
        if text.startswith(("postgres:", "postgresql://", "postgres://")):
            remember_secret(dsn_password(text))
            if data_path is None:
                raise ValueError(
                    f"catalog `{redact(text)}` is PostgreSQL: give the data path too (--data-path DIR or "
                    "ROYALTY_DATA_PATH), where every writer can reach the Parquet files"
                )
            dsn = (
                text.removeprefix("postgres:") if text.startswith("postgres:") and "//" not in text else text
            )
            return cls(f"postgres:{dsn}", _folder(data_path), redact(text), "postgres")
        directory = Path(text).expanduser().resolve()
        own_data = _folder(str(directory / data_folder))
        folder = own_data if data_path is None else _folder(data_path)
        catalog = f"sqlite:{directory / sqlite_catalog_file}"
        return cls(catalog, folder, str(directory), "sqlite", relocatable=folder == own_data)

    def exists(self) -> bool:
        if self.backend == "sqlite":
            return Path(self.catalog.removeprefix("sqlite:")).is_file()
        return True  # a PostgreSQL catalog is checked by attaching it

    def prepare(self) -> None:
        """Create the local folders a new embedded ledger needs; `LedgerLocationError` when a file is in the way."""
        folders = [Path(self.catalog.removeprefix("sqlite:")).parent] if self.backend == "sqlite" else []
        if "://" not in self.data_path:
            folders.append(Path(self.data_path))
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise LedgerLocationError(str(folder), "it is a file, not a folder") from None
            except NotADirectoryError:
                raise LedgerLocationError(str(folder), "a part of the path is a file, not a folder") from None
            except PermissionError as error:
                raise LedgerLocationError(str(folder), f"permission denied ({error.strerror})") from None


def _folder(path: str) -> str:
    if "://" in path:
        return path.rstrip("/") + "/"
    return str(Path(path).expanduser().resolve()) + "/"


def connect(
    location: LedgerLocation, read_only: bool, snapshot_version: int | None = None, create: bool = True
) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with the ledger attached as `lake` and selected.

    Without `create` (and always when `read_only`) a catalog holding no ledger raises `LedgerNotFoundError`
    and nothing is created in it (a PostgreSQL database stays empty).
    """
    backend_extension = "sqlite" if location.backend == "sqlite" else "postgres"
    object_store = ["httpfs"] if is_s3(location.data_path) else []
    connection = connect_with_extensions(["ducklake", backend_extension, *object_store])
    # DuckLake's own retry of a commit that met another writer's (ducklake 0.3 on DuckDB 1.4.4) re-numbers the
    # transaction's new column maps but not the data files naming them: a file then names a map the catalog
    # does not hold and no reader can read its table ("Unknown name map id"). So a conflicting commit fails
    # here, and the ledger redoes the whole transaction from a fresh snapshot (`Ledger._retried`); only an append
    # whose files all reuse maps its connection committed lets DuckLake retry (`Ledger._allow_ducklake_commit_retries`).
    connection.execute("SET ducklake_max_retry_count = 0")
    # An `s3://` data path: httpfs and the store's credentials, before DuckLake's ATTACH uses them.
    for statement in secret_statements(location.data_path):
        connection.execute(statement)
    options = ", ".join(
        [*attach_options(location, read_only, snapshot_version), *([] if create else ["CREATE_IF_NOT_EXISTS FALSE"])]
    )
    attach = f"ATTACH 'ducklake:{_quote(location.catalog)}' AS {catalog_alias} ({options})"
    new = not location.exists()
    for attempt in range(1, _catalog_creation_attempts + 1):
        try:
            connection.execute(attach)
            break
        except duckdb.Error as error:
            if "creating a new DuckLake is explicitly disabled" in str(error):
                connection.close()
                raise LedgerNotFoundError(location.display) from None
            if "does not match existing data path" in str(error):
                connection.close()
                recorded = _recorded_in_error(str(error))
                raise LedgerDataPathError(location.display, recorded, location.data_path) from None
            racing = location.backend == "postgres" and "already exists" in str(error)
            if not racing or attempt == _catalog_creation_attempts:
                raise
            time.sleep(_catalog_creation_backoff_s * attempt)
    if location.relocatable:
        _check_own_data_path(connection, location, record_relative=new and not read_only)
    connection.execute(f"USE {catalog_alias}")
    return connection


def attach_options(location: LedgerLocation, read_only: bool, snapshot_version: int | None = None) -> list[str]:
    """The options of DuckLake's ATTACH for `location` (DuckDB SQL, values quoted)."""
    options = [f"DATA_PATH '{_quote(location.data_path)}'"]
    if location.relocatable:
        options.append("OVERRIDE_DATA_PATH TRUE")
    if read_only:
        options.append("READ_ONLY")
    if snapshot_version is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot_version)}")
    return options


def recorded_data_path(connection: duckdb.DuckDBPyConnection) -> str | None:
    """The data path the catalog records (relative `data/` or an absolute path), None before creation."""
    row = connection.execute(
        f"SELECT value FROM __ducklake_metadata_{catalog_alias}.ducklake_metadata "
        "WHERE key = 'data_path' AND scope IS NULL"
    ).fetchone()
    return None if row is None else str(row[0])


def is_own_data_path(recorded: str) -> bool:
    """Whether a recorded data path is an embedded ledger's own `data/` folder, here or where it was created.

    An absolute `X/data/` is what ledgers created before relocation recorded: the ledger's own folder if
    `X` was a ledger folder (it holds a catalog, or it is gone: the ledger was moved). A `data/` folder
    that still exists beside no catalog, or any other path, was given explicitly (`--data-path`), and
    the ledger's files are there, not in its folder. Only paths are looked at, never the files.
    """
    if recorded.rstrip("/") == data_folder:
        return True
    path = Path(recorded)
    if "://" in recorded or path.name != data_folder:
        return False
    try:
        external = path.is_dir() and not (path.parent / sqlite_catalog_file).exists()
    except OSError:  # an unreadable former place: not this ledger's files either way
        external = False
    return not external


def _check_own_data_path(
    connection: duckdb.DuckDBPyConnection, location: LedgerLocation, record_relative: bool
) -> None:
    recorded = recorded_data_path(connection)
    if recorded is None:
        return
    if not is_own_data_path(recorded):
        connection.close()
        raise LedgerDataPathError(location.display, recorded, location.data_path)
    if record_relative and recorded != f"{data_folder}/":
        try:
            connection.execute(
                f"UPDATE __ducklake_metadata_{catalog_alias}.ducklake_metadata SET value = ? "
                "WHERE key = 'data_path' AND scope IS NULL",
                [f"{data_folder}/"],
            )
        except duckdb.Error as error:
            # Another writer creating the same ledger holds the catalog: it records the relative path
            # itself, and an absolute one opens just the same (the override), so nothing is lost.
            if "locked" not in str(error).lower() and "busy" not in str(error).lower():
                raise


def ledger_id(connection: duckdb.DuckDBPyConnection) -> str:
    """The ledger's identity: its `main` schema's UUID (32 hex digits), fixed when the ledger was created.

    Data files this ledger writes start with it, so files of another ledger sharing a data folder are
    never taken for this one's (`ledger/orphans.py`). A copy of the ledger is the same ledger.
    """
    (schema_uuid,) = connection.execute(
        f"SELECT schema_uuid FROM __ducklake_metadata_{catalog_alias}.ducklake_schema "
        "WHERE schema_name = 'main' ORDER BY begin_snapshot LIMIT 1"
    ).fetchone()
    return str(schema_uuid).replace("-", "").lower()


def _recorded_in_error(message: str) -> str:
    """The recorded path in DuckLake's 'does not match existing data path in the catalog "X"' error."""
    marker = 'existing data path in the catalog "'
    start = message.find(marker)
    if start < 0:
        return "(see the catalog's ducklake_metadata)"
    start += len(marker)
    return message[start : message.find('"', start)]


def _quote(text: str) -> str:
    return text.replace("'", "''")
