"""Extensions are loaded with their signatures checked once per process and file, and again once a file changed."""

import os
import shutil
from pathlib import Path

import duckdb
import pytest

from ledger import extensions


@pytest.fixture
def extension_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the wheels' DuckLake and SQLite extension files, and a process that has checked none yet."""
    source = Path(extensions.extension_directory())
    for path in source.rglob("*.duckdb_extension"):
        if path.name.startswith(("ducklake", "sqlite")):
            target = tmp_path / "extensions" / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    monkeypatch.setattr(extensions, "extension_directory", lambda: str(tmp_path / "extensions"))
    monkeypatch.setattr(extensions, "_checked", {})
    return tmp_path / "extensions"


def _signatures_checked(connection: duckdb.DuckDBPyConnection) -> bool:
    (allowed,) = connection.execute("SELECT current_setting('allow_unsigned_extensions')").fetchone()
    return not allowed


def _ducklake_file(folder: Path) -> Path:
    return next(folder.rglob("ducklake.duckdb_extension"))


def test_the_first_connection_checks_signatures_and_later_ones_reuse_the_check(extension_copy: Path) -> None:
    with extensions.connect_with_extensions(["ducklake", "sqlite"]) as first:
        assert _signatures_checked(first)
    with extensions.connect_with_extensions(["ducklake", "sqlite"]) as second:
        assert not _signatures_checked(second)
        rows = second.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
        loaded = {name for (name,) in rows}
        assert {"ducklake", "sqlite_scanner"} <= loaded


def test_an_extension_not_checked_yet_makes_the_connection_check_every_signature(extension_copy: Path) -> None:
    with extensions.connect_with_extensions(["ducklake"]):
        pass
    with extensions.connect_with_extensions(["ducklake", "sqlite"]) as connection:
        assert _signatures_checked(connection)


def test_a_file_changed_after_its_check_is_checked_again_and_a_bad_signature_refused(extension_copy: Path) -> None:
    """A byte of the signature changed in place, with the modification time put back: the change time still
    differs, so the file is checked again and DuckDB refuses it (loaded unchecked, it would load)."""
    with extensions.connect_with_extensions(["ducklake", "sqlite"]):
        pass
    path = _ducklake_file(extension_copy)
    status = path.stat()
    with path.open("r+b") as file:  # the signature is the file's last 256 bytes
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 0xFF]))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.raises(duckdb.Error, match=r"(?i)signature"):
        extensions.connect_with_extensions(["ducklake", "sqlite"])
    # and the refused file is not remembered as checked: the next connection checks it again
    with pytest.raises(duckdb.Error, match=r"(?i)signature"):
        extensions.connect_with_extensions(["ducklake"])
