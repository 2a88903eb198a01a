"""Opening DuckDB connections to a DuckLake ledger, with extensions from pip wheels only.

A ledger location is either a directory (the embedded default: `catalog.sqlite` and a
`data/` folder inside it) or a PostgreSQL catalog URL (`postgres:dbname=royalty host=...` or
`postgresql://...`) together with a data path. Extensions come from the `duckdb-ext-*`
wheels; nothing is downloaded, here or in a production network without internet.
"""

import os
import site
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ledger.errors import LedgerNotFoundError

catalog_alias = "lake"
sqlite_catalog_file = "catalog.sqlite"
data_folder = "data"
# Writers that attach a new PostgreSQL catalog at the same moment race to create DuckLake's
# metadata tables; the losers' ATTACH fails with "already exists" and succeeds when retried.
_catalog_creation_attempts = 5
_catalog_creation_backoff_s = 0.2


def extension_directory() -> str:
    """The folder the `duckdb-ext-*` wheels install into."""
    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        candidate = Path(root) / "duckdb_ext" / "extensions"
        if candidate.is_dir():
            return str(candidate)
    raise LedgerNotFoundError(
        "duckdb_ext/extensions (install the duckdb-ext-ducklake, -sqlite and -postgres wheels: "
        "pip install -e .)"
    )


@dataclass(frozen=True)
class LedgerLocation:
    """Where a ledger's catalog and data files live."""

    catalog: str  # the DuckLake catalog part of the ATTACH string
    data_path: str
    display: str
    backend: str  # sqlite | postgres

    @classmethod
    def parse(cls, location: str | os.PathLike[str], data_path: str | None = None) -> "LedgerLocation":
        text = str(location)
        if text.startswith(("postgres:", "postgresql://", "postgres://")):
            if data_path is None:
                raise ValueError(
                    f"catalog `{text}` is PostgreSQL: give the data path too (--data-path DIR or "
                    "ROYALTY_DATA_PATH), where every writer can reach the Parquet files"
                )
            dsn = (
                text.removeprefix("postgres:") if text.startswith("postgres:") and "//" not in text else text
            )
            return cls(f"postgres:{dsn}", _folder(data_path), text, "postgres")
        directory = Path(text).expanduser().resolve()
        return cls(
            f"sqlite:{directory / sqlite_catalog_file}",
            _folder(data_path or str(directory / data_folder)),
            str(directory),
            "sqlite",
        )

    def exists(self) -> bool:
        if self.backend == "sqlite":
            return Path(self.catalog.removeprefix("sqlite:")).is_file()
        return True  # a PostgreSQL catalog is checked by attaching it

    def prepare(self) -> None:
        """Create the local folders a new embedded ledger needs."""
        if self.backend == "sqlite":
            Path(self.catalog.removeprefix("sqlite:")).parent.mkdir(parents=True, exist_ok=True)
        if "://" not in self.data_path:
            Path(self.data_path).mkdir(parents=True, exist_ok=True)


def _folder(path: str) -> str:
    if "://" in path:
        return path.rstrip("/") + "/"
    return str(Path(path).expanduser().resolve()) + "/"


def connect(
    location: LedgerLocation, read_only: bool, snapshot_version: int | None = None
) -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with the ledger attached as `lake` and selected."""
    connection = duckdb.connect(
        config={
            "extension_directory": extension_directory(),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
        }
    )
    connection.execute("LOAD ducklake")
    connection.execute("LOAD sqlite" if location.backend == "sqlite" else "LOAD postgres")
    options = [f"DATA_PATH '{_quote(location.data_path)}'"]
    if read_only:
        options.append("READ_ONLY")
    if snapshot_version is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot_version)}")
    attach = f"ATTACH 'ducklake:{_quote(location.catalog)}' AS {catalog_alias} ({', '.join(options)})"
    for attempt in range(1, _catalog_creation_attempts + 1):
        try:
            connection.execute(attach)
            break
        except duckdb.Error as error:
            racing = location.backend == "postgres" and "already exists" in str(error)
            if not racing or attempt == _catalog_creation_attempts:
                raise
            time.sleep(_catalog_creation_backoff_s * attempt)
    connection.execute(f"USE {catalog_alias}")
    return connection


def _quote(text: str) -> str:
    return text.replace("'", "''")
