"""DuckDB connections with the ledger's extensions loaded from the `duckdb-ext-*` wheels, signatures checked once.

DuckDB checks an extension's signature (RSA over the SHA-256 of the whole file) at every `LOAD` into a new
database instance, and every ledger connection is a new instance: with the 50 MB DuckLake and SQLite files that
is 0.6-0.8 s of CPU per connection, more than most commands' work. So a process has DuckDB check each file at
its first load, remembers the file as it was then (device, inode, size, modification and change times: a
write restoring the modification time still changes the change time), and a later
connection loads it without the check only while every file it needs is still the one checked. A file replaced
since is checked again, and refused if unsigned. Whoever could replace a checked file between two connections of
one process could as well replace this code.
"""

import os
import site
from collections.abc import Iterable
from pathlib import Path

import duckdb

from ledger.errors import LedgerNotFoundError

# The name DuckDB knows each `LOAD` name by (duckdb_extensions().extension_name).
_extension_names = {"ducklake": "ducklake", "sqlite": "sqlite_scanner", "postgres": "postgres_scanner",
                    "httpfs": "httpfs"}  # fmt: skip
_FileIdentity = tuple[int, int, int, int, int]
# extension name -> the file DuckDB checked in this process, and its identity then
_checked: dict[str, tuple[str, _FileIdentity]] = {}


def extension_directory() -> str:
    """The folder the `duckdb-ext-*` wheels install into."""
    for root in [*site.getsitepackages(), site.getusersitepackages()]:
        candidate = Path(root) / "duckdb_ext" / "extensions"
        if candidate.is_dir():
            return str(candidate)
    raise LedgerNotFoundError(
        "duckdb_ext/extensions (install the duckdb-ext-ducklake, -sqlite and -postgres wheels: pip install -e .)"
    )


def connect_with_extensions(load_names: Iterable[str]) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB connection with `load_names` (`LOAD` names: ducklake, sqlite, ...) loaded."""
    names = list(load_names)
    checked_before = all(_still_checked(_extension_names[name]) for name in names)
    connection = duckdb.connect(
        config={
            "extension_directory": extension_directory(),
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_unsigned_extensions": checked_before,
        }
    )
    try:
        for name in names:
            connection.execute(f"LOAD {name}")
        if not checked_before:
            _remember_checked(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _still_checked(extension: str) -> bool:
    remembered = _checked.get(extension)
    return remembered is not None and _identity(remembered[0]) == remembered[1]


def _remember_checked(connection: duckdb.DuckDBPyConnection) -> None:
    loaded = connection.execute(
        "SELECT extension_name, install_path FROM duckdb_extensions() WHERE loaded AND install_path <> ''"
    ).fetchall()
    for extension, path in loaded:
        identity = _identity(path)
        if identity is not None:
            _checked[extension] = (path, identity)


def _identity(path: str) -> _FileIdentity | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
