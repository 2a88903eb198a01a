"""Extensions are loaded with their signatures checked once per process and file, and again once a file changed."""

import os
import shutil
import subprocess
import sys
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
    monkeypatch.setattr(extensions, "_record_read", False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
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


_connect_and_say = (
    "from ledger.extensions import connect_with_extensions\n"
    "with connect_with_extensions(['ducklake', 'sqlite']) as c:\n"
    "    print(c.execute(\"SELECT current_setting('allow_unsigned_extensions')\").fetchone()[0])"
)


def test_a_later_process_reuses_the_check_an_earlier_one_recorded(tmp_path: Path) -> None:
    """The record in the user's cache folder: the first process checks, the second does not; the record is
    the owner's only."""
    environment = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def unsigned_allowed() -> str:
        done = subprocess.run([sys.executable, "-c", _connect_and_say], capture_output=True, text=True, env=environment)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert unsigned_allowed() == "False"
    assert unsigned_allowed() == "True"
    (record,) = (tmp_path / "cache" / "royalty-engine").iterdir()
    assert record.stat().st_mode & 0o077 == 0 and record.parent.stat().st_mode & 0o077 == 0


def test_a_malformed_record_means_checking_again(extension_copy: Path) -> None:
    with extensions.connect_with_extensions(["ducklake", "sqlite"]):
        pass
    record = extensions._record_path()
    record.write_text('{"/x/ducklake.duckdb_extension": [1, 2], "/y": "x"')
    extensions._checked.clear()
    extensions._record_read = False
    with extensions.connect_with_extensions(["ducklake", "sqlite"]) as connection:
        assert _signatures_checked(connection)
