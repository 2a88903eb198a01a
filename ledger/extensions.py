"""DuckDB connections with the ledger's extensions loaded from the `duckdb-ext-*` wheels, signatures checked once.

DuckDB checks an extension's signature (RSA over the SHA-256 of the whole file) at every `LOAD` into a new
database instance, and every ledger connection is a new instance: with the 50 MB DuckLake and SQLite files that
is 0.6-0.8 s of CPU per connection, more than most commands' work. So a process has DuckDB check each file at
its first load, remembers the file as it was then (device, inode, size, modification and change times: a
write restoring the modification time still changes the change time), and a later
connection loads it without the check only while every file it needs is still the one checked. A file replaced
since is checked again, and refused if unsigned.

The checked files are also remembered across processes, in the user's cache folder
(`$XDG_CACHE_HOME/royalty-engine/`, else `~/.cache/royalty-engine/`; owner-only), so a CLI command no longer pays
the check when nothing changed. That trusts nobody new: the record only vouches for a file with the same
identity, and changing an extension file in place needs write access to the Python packages, whose code
could as well skip the check. A missing, unreadable or malformed record means checking again; failing to write
it only costs the check next time.
"""

import contextlib
import json
import os
import site
import tempfile
from collections.abc import Iterable
from pathlib import Path

import duckdb

from ledger.errors import LedgerNotFoundError

# The name DuckDB knows each `LOAD` name by (duckdb_extensions().extension_name).
_extension_names = {"ducklake": "ducklake", "sqlite": "sqlite_scanner", "postgres": "postgres_scanner",
                    "httpfs": "httpfs"}  # fmt: skip
_FileIdentity = tuple[int, int, int, int, int]
# The files DuckDB checked, in this process or (per the record) another one
# (several environments share the record: each has its own extension folder)
_checked: dict[str, tuple[str, _FileIdentity]] = {}  # checked file -> its extension name, its identity then
_record_read = False


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
    directory = extension_directory()
    checked_before = all(_still_checked(_extension_names[name], directory) for name in names)
    connection = duckdb.connect(
        config={
            "extension_directory": directory,
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


def _still_checked(extension: str, directory: str) -> bool:
    global _record_read
    if not _record_read:
        _record_read = True
        for path, entry in _read_record().items():
            _checked.setdefault(path, entry)
    inside = os.path.join(directory, "")
    return any(
        name == extension and path.startswith(inside) and _identity(path) == identity
        for path, (name, identity) in _checked.items()
    )


def _remember_checked(connection: duckdb.DuckDBPyConnection) -> None:
    loaded = connection.execute(
        "SELECT extension_name, install_path FROM duckdb_extensions() WHERE loaded AND install_path <> ''"
    ).fetchall()
    for extension, path in loaded:
        identity = _identity(path)
        if identity is not None:
            _checked[path] = (extension, identity)
    _write_record()


def _record_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "royalty-engine" / f"checked-extension-files-duckdb-{duckdb.__version__}.json"


def _read_record() -> dict[str, tuple[str, _FileIdentity]]:
    try:
        stored = json.loads(_record_path().read_text())
        return {
            str(path): (str(entry[0]), tuple(int(part) for part in entry[1:]))  # type: ignore[misc]
            for path, entry in stored.items()
            if isinstance(entry, list) and len(entry) == 6
        }
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _write_record() -> None:
    path = _record_path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # files gone since (an environment removed) are left out, so the record does not grow with every venv
        entries = {file: [name, *identity] for file, (name, identity) in _checked.items() if os.path.exists(file)}
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".checked-")  # owner-only (0600)
        try:
            with os.fdopen(descriptor, "w") as file:
                json.dump(entries, file)
            os.replace(temporary, path)
        except OSError:
            Path(temporary).unlink(missing_ok=True)
            raise


def _identity(path: str) -> _FileIdentity | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
