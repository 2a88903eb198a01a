"""The lake folder is a self-contained unit: a copy, a moved folder or a restored backup opens, verifies
and settles from where it is, and never reads or writes the original."""

import hashlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result  # typer 0.29 vendors click: `click` is not installed with it

from ingest.sample import SampleTraffic
from ledger import Ledger
from ledger.connection import sqlite_catalog_file
from ledger.errors import LedgerDataPathError
from ledger.verify import verify
from royalty.cli import app
from tests.conftest import royalty_command
from tests.ledger.helpers import batch_of
from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)
runner = CliRunner()


def _traffic() -> list[bytes]:
    traffic = SampleTraffic()
    return [*traffic.registry(), *traffic.metered(300)]


def _fingerprint(folder: Path) -> dict[str, str]:
    """Every file of `folder` and its SHA-256 (with its modification time): what 'not modified' means."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() + f"@{path.stat().st_mtime_ns}"
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _recorded_data_path(lake: Path) -> str:
    with sqlite3.connect(lake / sqlite_catalog_file) as catalog:
        (value,) = catalog.execute("SELECT value FROM ducklake_metadata WHERE key = 'data_path'").fetchone()
    return value


def _run(*args: str) -> Result:
    """The `royalty` command, in-process (the CLI's own subprocess tests cover its start-up)."""
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("relocation") / "lake"
    with Ledger.open(lake) as ledger:
        ledger.append(*batch_of(_traffic()))
    return lake


def test_a_new_ledger_records_its_data_path_relative(original: Path) -> None:
    assert _recorded_data_path(original) == "data/"


@pytest.mark.parametrize("recorded", ["relative", "absolute (written before relocation)"])
def test_a_copied_lake_opens_verifies_and_closes_an_epoch_without_the_original(
    original: Path, tmp_path: Path, recorded: str
) -> None:
    """The copy answers `sql`, passes `verify`, closes an epoch, settles it and takes more appends while the
    original is gone from its path; the original, put back, is byte for byte and time for time what it was."""
    source = tmp_path / "source"
    shutil.copytree(original, source)
    if recorded.startswith("absolute"):  # what every ledger created before recorded
        with sqlite3.connect(source / sqlite_catalog_file) as catalog:
            catalog.execute("UPDATE ducklake_metadata SET value = ? WHERE key = 'data_path'", [f"{source}/data/"])
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(source, copy)
    before = _fingerprint(source)
    hidden = source.rename(tmp_path / "hidden")  # the original's path now holds nothing
    try:
        count = _run("sql", "--lake", str(copy), "--format", "csv", "SELECT count(*) FROM lake.main.inference_metered")
        assert count.exit_code == 0, count.output
        assert count.output.split()[-1] == "300"
        verified = _run("verify", "--lake", str(copy))
        assert verified.exit_code == 0, verified.output
        closed = _run("close-epoch", "--lake", str(copy))
        assert closed.exit_code == 0, closed.output
        settles = recorded.startswith("absolute")  # one settle is enough: it reads what close-epoch read
        if settles:
            settled = _run("settle", "--lake", str(copy), "--json")  # on the in-process chain
            assert settled.exit_code == 0, settled.output
            assert '"root": "0x' in settled.output
        with Ledger.open(copy) as ledger:
            ledger.append(*batch_of(list(SampleTraffic(seed=11).metered(40)), first_offset=10_000))
        with Ledger.open_read_only(copy) as reader:
            report = verify(reader)
            assert report.ok, report.problems
            assert all(path.startswith(str(copy)) for path, in reader.connection.execute(
                "SELECT data_file FROM ducklake_list_files('lake', 'inference_metered')").fetchall())
            (epochs,) = reader.connection.execute("SELECT count(*) FROM lake.main.settlement_epoch").fetchone()
            if settles:
                (settled_epochs,) = reader.connection.execute(
                    "SELECT count(*) FROM lake.main.settlement_record").fetchone()
                assert settled_epochs == 1
        assert epochs == 1
        assert not source.exists(), "something recreated the original's path"
    finally:
        hidden.rename(source)
    assert _fingerprint(source) == before


def test_print_attach_of_a_copy_attaches_the_copy(original: Path, tmp_path: Path) -> None:
    """The statements `sql --print-attach` gives an analyst read the copy's files, not the original's."""
    import duckdb

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    statements = subprocess.run(
        royalty_command("sql", "--lake", str(copy), "--print-attach"), capture_output=True, text=True
    )
    assert statements.returncode == 0, statements.stderr
    assert "OVERRIDE_DATA_PATH" in statements.stdout
    hidden = original.rename(original.with_name("hidden-for-attach"))
    try:
        connection = duckdb.connect()
        for statement in statements.stdout.strip().split(";\n"):
            connection.execute(statement.rstrip(";"))
        (count,) = connection.execute("SELECT count(*) FROM inference_events").fetchone()
    finally:
        hidden.rename(original)
    assert count == 300


@pytest.mark.parametrize("folder", ["files", "elsewhere/data"])
def test_a_ledger_whose_data_lives_elsewhere_is_refused_without_its_data_path(tmp_path: Path, folder: str) -> None:
    """A folder ledger created with an explicit data path (even one named `data`) does not silently read its
    own empty `data/`."""
    lake, data = tmp_path / "lake", tmp_path / folder
    with Ledger.open(lake, data_path=str(data)) as ledger:
        ledger.append(*batch_of(list(SampleTraffic().metered(20))))
    with pytest.raises(LedgerDataPathError) as refused:
        Ledger.open_read_only(lake)
    assert str(data) in str(refused.value) and "--data-path" in str(refused.value)
    assert not (lake / "data").exists()
    with Ledger.open_read_only(lake, data_path=str(data)) as reader:
        assert verify(reader).ok


def test_a_postgres_ledger_opened_with_another_data_path_is_refused_naming_both(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    catalog = postgres_server.create_database("relocated_data")
    data = tmp_path / "files"
    with Ledger.open(catalog, data_path=str(data)) as ledger:
        ledger.append(*batch_of(list(SampleTraffic().metered(20))))
    with pytest.raises(LedgerDataPathError) as refused:
        Ledger.open_read_only(catalog, data_path=str(tmp_path / "moved"))
    assert f"{data}/" in str(refused.value) and f"{tmp_path / 'moved'}/" in str(refused.value)
    assert "relocation" in str(refused.value)
