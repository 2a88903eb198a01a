"""`royalty backup`: a consistent, verified, self-contained copy of a ledger taken while ingest runs."""

import json
import tarfile
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.sample import SampleTraffic
from ledger import Ledger
from ledger.backup import BackupError, backup
from ledger.connection import LedgerLocation
from ledger.verify import verify
from royalty.cli import app
from schemas.events import event_types
from tests.conftest import repo_root
from tests.ledger.helpers import batch_of

runner = CliRunner()
appends_max = 200  # a bound on the writer thread; the test stops it long before
# The event tables only (file_tables also holds the settlement's, once any test imported settlement).
event_tables = sorted(event_type.table for event_type in event_types.values())


def _batches(lake: Path, snapshot_version: int | None = None) -> dict[str, int]:
    """Each ingest batch and the events it recorded."""
    with Ledger.open_read_only(lake, snapshot_version=snapshot_version) as reader:
        return dict(reader.connection.execute("SELECT ingest_batch_id, events FROM lake.main.ingest_batch").fetchall())


def _events_per_batch(lake: Path) -> dict[str, int]:
    """The rows each batch actually stored, counted in the event tables."""
    with Ledger.open_read_only(lake) as reader:
        union = " UNION ALL ".join(f"SELECT ingest_batch_id FROM lake.main.{table}" for table in event_tables)
        rows = reader.connection.execute(f"SELECT ingest_batch_id, count(*) FROM ({union}) GROUP BY ALL").fetchall()
        return dict(rows)


def test_backup_during_running_appends_is_a_consistent_verified_snapshot(tmp_path: Path) -> None:
    """A writer thread appends batch after batch while `royalty backup` runs: the backup opens from its own
    folder, verifies, holds every file of every batch it records and nothing of a later one, and equals the
    live ledger as of the backup's snapshot; the writer went on appending during and after it."""
    lake, target = tmp_path / "lake", tmp_path / "backups" / "monday"
    traffic = SampleTraffic(seed=21)
    with Ledger.open(lake) as ledger:
        ledger.append(*batch_of(list(traffic.registry())))
    stop, appended = threading.Event(), []

    def write() -> None:
        with Ledger.open(lake) as writer:
            while not stop.is_set() and len(appended) < appends_max:
                offset = 1_000 * (len(appended) + 1)
                appended.append(writer.append(*batch_of(list(traffic.metered(100)), first_offset=offset)))

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(appended) < 3 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        result = runner.invoke(app, ["backup", "--lake", str(lake), "--to", str(target), "--json"])
        during = len(appended)
        while len(appended) < during + 2 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    backed_up, final = _batches(target), _batches(lake)
    assert 3 < len(backed_up) < len(final), (len(backed_up), len(final))
    assert _events_per_batch(target) == {batch: events for batch, events in backed_up.items() if events}
    assert _batches(lake, snapshot_version=summary["snapshot_id"]) == backed_up
    assert sorted(path.name for path in target.iterdir()) == ["catalog.sqlite", "data"]
    verified = runner.invoke(app, ["verify", "--lake", str(target), "--json"])
    report = json.loads(verified.output)
    assert verified.exit_code == 0 and report["ok"] and report["orphans"] == [], report
    assert report["files"] == summary["files"]


def test_backup_refuses_an_existing_target_a_target_inside_the_lake_and_a_postgres_catalog(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with Ledger.open(lake) as ledger:
        ledger.append(*batch_of(list(SampleTraffic().metered(20))))
    location = LedgerLocation.parse(lake)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(BackupError, match="not empty"):
        backup(location, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(BackupError, match="inside the ledger"):
        backup(location, lake / "data" / "backup")
    postgres = LedgerLocation.parse("postgres:dbname=royalty host=localhost", str(tmp_path / "files"))
    with pytest.raises(BackupError, match="pg_dump"):
        backup(postgres, tmp_path / "pg-backup")
    assert not (tmp_path / "pg-backup").exists()


def test_a_backup_whose_copy_does_not_verify_is_not_put_in_place(tmp_path: Path) -> None:
    """A data file changed after it was written is copied as it is: the copy fails its checksum, so the
    backup is refused and left under `.partial`, never presented as a good backup."""
    lake = tmp_path / "lake"
    with Ledger.open(lake) as ledger:
        ledger.append(*batch_of(list(SampleTraffic().metered(20))))
    victim = next((lake / "data").rglob("*.parquet"))
    damaged = bytearray(victim.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    victim.write_bytes(bytes(damaged))
    with pytest.raises(BackupError, match="does not verify"):
        backup(LedgerLocation.parse(lake), tmp_path / "copy")
    assert not (tmp_path / "copy").exists() and (tmp_path / "copy.partial").is_dir()
    with Ledger.open_read_only(tmp_path / "copy.partial") as reader:
        assert not verify(reader).ok


def test_a_ledger_of_an_older_format_is_backed_up_before_migrating_and_the_copy_migrates(tmp_path: Path) -> None:
    """The format refusal says to back up first: the backup of a format-1 ledger (created elsewhere, its
    catalog recording that absolute path) verifies, and the copy migrates while the original stays as it was."""
    with tarfile.open(repo_root / "tests" / "fixtures" / "ledger_format_1.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    lake = tmp_path / "lake"
    catalog_before = (lake / "catalog.sqlite").read_bytes()
    result = runner.invoke(app, ["backup", "--lake", str(lake), "--to", str(tmp_path / "before-migrate")])
    assert result.exit_code == 0, result.output
    migrated = runner.invoke(app, ["migrate", "--lake", str(tmp_path / "before-migrate")])
    assert migrated.exit_code == 0, migrated.output
    verified = runner.invoke(app, ["verify", "--lake", str(tmp_path / "before-migrate")])
    assert verified.exit_code == 0, verified.output
    assert (lake / "catalog.sqlite").read_bytes() == catalog_before
